"""Does the teacher draw a diagonal on both axes, and hold its heading? Read from the generated latents' tracks.

    python bench/diagonal_tracks.py --teacher runs/pred6/checkpoints/step_0002800 [--teacher ...] \
        [--prompts 8] [--noises 6] [--cfg 2] [--steps 30] [key=value ...]

A ``bouncing diagonally`` caption leaves the heading to the model on both axes. Each later latent frame of a
``PredictiveTrackedVAE`` holds the object's velocity (vx, vy) as a constant field, so the sampled latents say
directly what the decoder will draw. Per teacher, over ``--prompts`` stratified diagonal prompts x ``--noises``
noises (and, as the reference, the same specs rendered and encoded):

- ``held``: share of samples whose vx and vy keep one sign in every latent frame, each above a quarter of the
  prompt's speed per axis (with unfolded tracks a real clip always does, bounces included);
- ``both_axes``: share whose mean |vx|, |vy| have ratio min / max >= the detector's ``diagonal_ratio``;
- ``weak_axis``: median of that ratio (1 = a true diagonal, 0 = an axis motion);
- ``speed``: median per-axis |v| over the real clips'.

Tracks are read with ``vae.tracks`` (px/frame, of the unfolded path with ``unfolded_tracks``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher, table  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import encode_frames  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import teacher_sigmas  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.detector import DEFAULT_CONFIG  # noqa: E402
from streamgen.toyworld.render import render_batch  # noqa: E402
from streamgen.toyworld.world import DIAGONAL, stratified_specs  # noqa: E402
from streamgen.vae import load_vae, pixel_frames  # noqa: E402


def track_stats(v: np.ndarray, ref_speed: np.ndarray, ratio: float) -> dict:
    """``v [N, g, 2]`` sampled tracks, ``ref_speed [N]`` the real clips' per-axis speed -> the table's figures."""
    sign_held = (np.sign(v) == np.sign(v[:, :1])).all(1).all(-1)
    strong = (np.abs(v) > 0.25 * ref_speed[:, None, None]).all(1).all(-1)
    mean = np.abs(v.mean(1))  # [N, 2]
    axis_ratio = mean.min(-1) / np.maximum(mean.max(-1), 1e-6)
    return dict(held=float((sign_held & strong).mean()), both_axes=float((axis_ratio >= ratio).mean()),
                weak_axis=float(np.median(axis_ratio)), speed=float(np.median(np.abs(v).mean((1, 2)) / ref_speed)))


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", action="append", required=True, help="weights source (repeatable)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--noises", type=int, default=6)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    specs = [s for s in stratified_specs(args.prompts * 8, "train", args.seed) if s.motion == DIAGONAL][: args.prompts]
    n_frames = pixel_frames(cfg.train.latent_frames, vae.temporal)
    real = vae.tracks(encode_frames(vae, np.stack([render_batch([s], n_frames)[0] for s in specs])))[..., :2].numpy()
    ref = np.abs(real).mean((1, 2))  # [P] per-axis speed of each prompt's real clip
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    sig = teacher_sigmas(args.steps, cfg.train.timestep_shift)
    ratio = DEFAULT_CONFIG.diagonal_ratio
    rows = [dict(source="rendered + encoded", samples=len(specs), **track_stats(real, ref, ratio))]
    for weights in args.teacher:
        model = load_teacher(cfg, weights)
        uncond = model.encode_context(text.encode([""]))
        tracks, refs = [], []
        for i, spec in enumerate(specs):
            ctx = model.encode_context(text.encode([canonical_caption(spec)]))
            for k in range(args.noises):
                g = torch.Generator().manual_seed(args.seed + 1000 * i + k)
                noise = torch.randn(1, vae.z_dim, cfg.train.latent_frames, h, w, generator=g)
                tracks.append(vae.tracks(sample_full(model, ctx, uncond, noise, sig, args.cfg).float())[0, :, :2].numpy())
                refs.append(ref[i])
        rows.append(dict(source=weights, samples=len(tracks), **track_stats(np.stack(tracks), np.array(refs), ratio)))
        print(table(rows[-1:]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
