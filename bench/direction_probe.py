"""Does the teacher read the direction word? Net motion of its clips for opposite prompts from the same noise.

    python bench/direction_probe.py --teacher CKPT [--seeds 4] [--steps 30] [--cfg 2] [key=value ...]

For each axis direction and each seed, sample a clip (``sample_full``, the probe's sampler) for "a {colour} {shape}
moving {direction} on a {background} background" and measure its net motion from the detector's centroids (first
to last frame with one object). Prints per direction the mean net velocity (px/frame) and the fraction of clips
that move the prompt's way, and for each opposite pair (left/right, up/down) the fraction of seeds whose two clips
move the same way along that axis: a teacher that ignores the direction word moves both the same way (1.0), one
that follows it moves them apart (0.0).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher_parts, table  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import teacher_sigmas  # noqa: E402
from streamgen.toyworld.detector import detect_frames  # noqa: E402
from streamgen.toyworld.world import AXIS_MOTIONS  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402

LOOKS = [("red", "circle", "black"), ("blue", "square", "white"), ("yellow", "triangle", "blue"), ("green", "star", "gray")]


def net_velocity(frames: np.ndarray) -> np.ndarray:
    """(dx, dy) per frame between the first and last frame whose detection is one object; NaN without two."""
    d = detect_frames(frames)
    idx = np.flatnonzero(d.present)
    if len(idx) < 2:
        return np.full(2, np.nan)
    a, b = idx[0], idx[-1]
    return np.array([d.cx[b] - d.cx[a], d.cy[b] - d.cy[a]]) / (b - a)


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    model, vae, text = load_teacher_parts(cfg, args.teacher)
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    sig = teacher_sigmas(args.steps, cfg.train.timestep_shift)
    uncond = model.encode_context(text.encode([""]))
    vel = {}  # (motion, seed) -> net velocity
    for motion in AXIS_MOTIONS:
        for seed in range(args.seeds):
            colour, shape, bg = LOOKS[seed % len(LOOKS)]
            ctx = model.encode_context(text.encode([f"a {colour} {shape} {motion} on a {bg} background"]))
            noise = torch.randn(1, vae.z_dim, cfg.train.latent_frames, h, w, generator=torch.Generator().manual_seed(seed))
            vel[motion, seed] = net_velocity(to_uint8(vae.decode(sample_full(model, ctx, uncond, noise, sig, args.cfg).float())))
    rows = []
    for motion, (nx, ny) in AXIS_MOTIONS.items():
        v = np.array([vel[motion, s] for s in range(args.seeds)])
        along = v @ np.array([nx, ny], dtype=float)
        rows.append({"prompt": motion, "mean dx": float(np.nanmean(v[:, 0])), "mean dy": float(np.nanmean(v[:, 1])),
                     "prompt's way": float(np.nanmean(along > 0.25)), "measured": int(np.isfinite(along).sum())})
    print(table(rows))
    pairs = []
    for a, b, axis in (("moving left", "moving right", 0), ("moving up", "moving down", 1)):
        same = [np.sign(vel[a, s][axis]) == np.sign(vel[b, s][axis]) for s in range(args.seeds)
                if np.isfinite(vel[a, s][axis]) and np.isfinite(vel[b, s][axis])]
        pairs.append({"pair": f"{a} / {b}", "same way, same noise": float(np.mean(same)) if same else float("nan"), "seeds": len(same)})
    print(table(pairs))


if __name__ == "__main__":
    main()
