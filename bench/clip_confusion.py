"""Which shape and which motion did the sampled clips show, prompt by prompt?

    python bench/autoguidance_probe.py --teacher W --prompts 32 --save runs/probe   # writes runs/probe/row0.npz
    python bench/clip_confusion.py runs/probe/row0.npz [--presence 0.9]

The probe's table says how often shape and motion direction are right; this says what they are instead.
Per clip: the prompted shape and motion, the clip's majority detected shape, the detected motion of its
motion window(s) and its presence rate. Then confusion tables (prompted row, detected column) over all
clips and, separately, over the clips whose presence is at least ``--presence``: motion can only be read
off a track, so a clip whose object comes and goes scores as a wrong motion whatever it was drawn doing.
For clips, presence and shape of the first frame (its own latent frame) and of the later frames apart.
Per clip also the window speed (px/frame), the usual blob count (2+: copies of the object) and the turns of the
centroid (heading reversals along its main axis; a bounce is one, a zig-zag more), and how many clips show each.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from streamgen.toyworld.captions import parse_caption  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip  # noqa: E402
from streamgen.toyworld.world import MOTIONS, SHAPES  # noqa: E402


def clip_rows(frames: np.ndarray, captions) -> list[dict]:
    """One row per clip: prompted and detected shape / motion, presence."""
    rows = []
    for clip, caption in zip(frames, captions):
        ev = evaluate_clip(clip, str(caption))
        target = parse_caption(str(caption)).attributes
        shapes = ev.detections.shape[ev.detections.has_object]
        shapes = shapes[shapes >= 0]
        shape = SHAPES[int(np.bincount(shapes, minlength=len(SHAPES)).argmax())] if len(shapes) else "-"
        motions = Counter(w.detected or "-" for w in ev.windows)
        speeds = [w.speed for w in ev.windows if w.speed == w.speed]
        rows.append(dict(shape_t=target.shape, shape_d=shape, motion_t=target.motion,
                         motion_d=motions.most_common(1)[0][0] if motions else "-",
                         presence=ev.accuracy.presence, speed=float(np.mean(speeds)) if speeds else float("nan"),
                         blobs=int(np.bincount(ev.detections.n_blobs).argmax()), turns=turns(ev.detections)))
    return rows


def turns(det, min_step: float = 0.5) -> int:
    """Heading reversals of the centroid along the axis it travels most on (steps under ``min_step`` px ignored)."""
    cx, cy = det.cx[det.has_object], det.cy[det.has_object]
    if len(cx) < 3:
        return 0
    steps = np.diff(cx) if np.ptp(cx) >= np.ptp(cy) else np.diff(cy)
    signs = np.sign(steps[np.abs(steps) >= min_step])
    return int((signs[1:] != signs[:-1]).sum())


def confusion(rows: list[dict], key: str, names) -> str:
    cols = list(names) + ["-"]
    counts = Counter((r[f"{key}_t"], r[f"{key}_d"]) for r in rows)
    width = max(len(c) for c in cols) + 1
    out = [" " * width + "".join(c[:8].rjust(9) for c in cols) + "   right"]
    for t in names:
        n = sum(counts[(t, c)] for c in cols)
        if n:
            out.append(t.ljust(width) + "".join(str(counts[(t, c)]).rjust(9) for c in cols)
                       + f"   {counts[(t, t)]}/{n}")
    right = sum(counts[(t, t)] for t in names)
    out.append(f"{key}: {right}/{len(rows)} right")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("npz", help="a file written by autoguidance_probe.py --save")
    ap.add_argument("--presence", type=float, default=0.9, help="presence rate that makes a clip's track readable")
    args = ap.parse_args(argv)
    data = np.load(args.npz)
    rows = clip_rows(data["frames"], data["captions"])
    for r, c in zip(rows, data["captions"]):
        print(f"{r['presence']:.2f}  shape {r['shape_d']:>8} ({r['shape_t']})  motion {r['motion_d']:>20}"
              f"  v {r['speed']:4.2f}  blobs {r['blobs']}  turns {r['turns']}  | {c}")
    for key, names in (("shape", SHAPES), ("motion", MOTIONS)):
        print(f"\nall clips ({len(rows)})\n" + confusion(rows, key, names))
        kept = [r for r in rows if r["presence"] >= args.presence]
        if kept:
            print(f"\npresence >= {args.presence} ({len(kept)} clips)\n" + confusion(kept, key, names))
    moving = [r for r in rows if r["motion_t"] not in ("still", "pulsing")]
    print(f"\nclips with 2+ objects in most frames: {sum(r['blobs'] >= 2 for r in rows)}/{len(rows)}, with none: "
          f"{sum(r['blobs'] == 0 for r in rows)}/{len(rows)}; moving prompts that turn 2+ times (zig-zag): "
          f"{sum(r['turns'] >= 2 for r in moving)}/{len(moving)}")
    if data["frames"].shape[1] > 1:  # the first frame is its own latent frame; the rest come in 4-frame groups
        for name, part in (("first frame", data["frames"][:, :1]), ("later frames", data["frames"][:, 1:])):
            acc = [evaluate_clip(clip, str(c)).accuracy for clip, c in zip(part, data["captions"])]
            print(f"{name}: presence {np.mean([a.presence for a in acc]):.3f}, shape {np.mean([a.shape for a in acc]):.3f}")


if __name__ == "__main__":
    main()
