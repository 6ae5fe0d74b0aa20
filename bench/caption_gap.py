"""How much does the teacher's denoising rely on each word of the caption? Loss with a wrong word / loss with the right one.

    python bench/caption_gap.py --teacher CKPT [--clips 48] [--sigmas 0.3 0.5 0.7 0.9] [key=value ...]

Axis-motion training clips (``toy_batch``, canonical captions) are noised at each sigma with fixed noise, and the
flow-matching loss is taken with the true caption and with the caption changed in one attribute (direction
flipped: right <-> left, up <-> down; or another colour / shape). A teacher that reads an attribute predicts worse
with the wrong word: ratio above 1. One that ignores it: ratio 1.00. With a tracked VAE the direction ratio is
also given on the track channels alone (the velocity the latent holds), for left/right and up/down clips apart. Cheap (no sampling), so it can be watched
during training: the direction column should rise like the colour column.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher_parts, table  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import toy_batch  # noqa: E402
from streamgen.sampler import add_noise, timestep  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.world import AXIS_MOTIONS, COLOURS, SHAPES, Attributes  # noqa: E402


def flipped(motion: str) -> str:
    """The axis motion with the opposite heading."""
    hx, hy = AXIS_MOTIONS[motion]
    return next(m for m, h in AXIS_MOTIONS.items() if h == (-hx, -hy))


def changed(spec, attribute: str) -> Attributes:
    """``spec``'s attributes with ``attribute`` replaced by another value (colour: never the background's)."""
    spec = Attributes(spec.shape, spec.colour, spec.background, spec.motion, spec.speed)  # no geometry to re-check
    if attribute == "direction":
        return replace(spec, motion=flipped(spec.motion))
    if attribute == "colour":
        return replace(spec, colour=next(c for c in COLOURS if c not in (spec.colour, spec.background)))
    return replace(spec, shape=next(s for s in SHAPES if s != spec.shape))


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    model, vae, text = load_teacher_parts(cfg, args.teacher)
    frames = cfg.train.latent_frames
    specs, latents, step = [], [], 0
    while len(specs) < args.clips:  # axis motions only: the clips whose caption names a direction
        b = toy_batch(vae, 16, frames, seed=777, step=step, paraphrase_prob=0.0)
        keep = [i for i, s in enumerate(b.specs) if s.motion in AXIS_MOTIONS]
        specs += [b.specs[i] for i in keep]
        latents.append(b.latents[keep])
        step += 1
    specs, x0 = specs[: args.clips], torch.cat(latents)[: args.clips]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    states = {"true": text.encode([canonical_caption(s) for s in specs])}
    for attr in ("direction", "colour", "shape"):
        states[attr] = text.encode([canonical_caption(changed(s, attr)) for s in specs])
    horizontal = torch.tensor([AXIS_MOTIONS[s.motion][0] != 0 for s in specs])
    n_track = getattr(vae, "track_channels", 0)  # TrackedLayeredVAE: velocity and size rate in the last channels
    rows = []
    for sigma in args.sigmas:
        xt = add_noise(x0, noise, sigma)
        t = timestep(torch.full((len(specs),), sigma))
        loss, track = {}, {}
        for name, st in states.items():
            pred = torch.cat([model(xt[i:i + 8], t[i:i + 8], st[i:i + 8]) for i in range(0, len(specs), 8)])
            err = (pred - (noise - x0)).pow(2)
            loss[name] = err.mean().item()
            if n_track:  # per clip: the two axes can be learnt apart
                track[name] = err[:, -n_track:].mean(dim=(1, 2, 3, 4))
        row = {"sigma": sigma, "loss (true)": loss["true"],
               **{f"{a} wrong / true": loss[a] / loss["true"] for a in ("direction", "colour", "shape")}}
        if n_track:
            for axis, pick in (("left/right", horizontal), ("up/down", ~horizontal)):
                row[f"direction, track ch., {axis}"] = (track["direction"][pick].mean() / track["true"][pick].mean()).item()
        rows.append(row)
    print(f"caption gap: {args.teacher}, {len(specs)} axis-motion clips, {frames} latent frames")
    print(table(rows))


if __name__ == "__main__":
    main()
