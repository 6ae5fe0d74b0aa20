"""Where do a teacher's objects go wrong along the sampling path? Object area, contrast and blob counts.

    python bench/teacher_spread.py --weights runs/teacher_fg/checkpoints/step_0001500/ema.safetensors \
        [--prompts 8] [--guidance 2] [--steps 30] [--path-png FILE] [key=value ...]

Samples one clip per training prompt (Euler, CFG) and prints:
- the foreground fraction of the final latents (``sampler.foreground_mask``: latents that differ
  from the frame's backdrop) next to real clips' (an object covers ~6 % of the positions);
- along the path, the RMS of the guided x0 prediction's coarse (0-7) and detail (16-63) PCA channels at
  the final sample's foreground positions, next to real clips' at their object positions (a smeared,
  faint object: large area, low RMS);
- the colour coherence of the decoded objects: the fraction of foreground pixels (>= the detector's
  threshold from the border's palette colour) whose nearest palette colour is the frame's most common
  one among them, next to real clips' (a colour mosaic of 8x8-pixel cells scores low);
- the detector's blob count per decoded frame (presence needs exactly one blob of >= 20 px), and the
  fraction of one-blob frames by frame index (frame 0 is its own latent frame; ``train.latent_frames=1``
  samples still images).
``--path-png`` also writes, per prompt (rows), the first decoded frame of the guided x0 prediction at every
third step and of the final sample (columns): where along the path an object's form is settled.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher_parts  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import toy_batch  # noqa: E402
from streamgen.eval_suite import suite_specs  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import foreground_mask, teacher_sigmas  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.detector import DEFAULT_CONFIG, _background, detect_frames, nearest_palette  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402


def rms(x: torch.Tensor, mask: torch.Tensor, channels: slice) -> float:
    return float(x[:, channels].pow(2).mean(1)[mask].mean().sqrt())


@torch.no_grad()
def colour_coherence(frames: np.ndarray) -> np.ndarray:
    """Per frame of uint8 ``[F, H, W, 3]``: the share of foreground pixels whose nearest palette colour is
    the most common one among them (NaN without foreground). Foreground: farther than the detector's
    ``fg_threshold`` from the mean of the border pixels in the border's most common palette colour."""
    out = np.full(len(frames), np.nan)
    _, bg_rgb, _ = _background(frames, DEFAULT_CONFIG)  # the detector's own backdrop estimate
    for i, f in enumerate(frames.astype(np.float32)):
        fg = ((f - bg_rgb[i]) ** 2).sum(-1) > DEFAULT_CONFIG.fg_threshold**2
        if fg.any():
            counts = np.bincount(nearest_palette(f[fg]))
            out[i] = counts.max() / counts.sum()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="a safetensors state dict (e.g. a checkpoint's ema.safetensors)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--path-png", default="", help="write decoded x0 predictions along the path here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    model, vae, text = load_teacher_parts(cfg, args.weights)
    n, T = args.prompts, cfg.train.latent_frames
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    real = toy_batch(vae, 16, T, args.seed, 0).latents
    real_fg = foreground_mask(real)[:, 0] > 0
    coarse, detail = slice(0, 8), slice(16, vae.z_dim)

    specs = suite_specs(n, "train", args.seed)
    ctx = model.encode_context(text.encode([canonical_caption(s) for s in specs]))
    uncond = model.encode_context(text.encode([""] * n))
    sig = teacher_sigmas(args.steps, cfg.train.timestep_shift)
    x = torch.randn(n, vae.z_dim, T, h, w, generator=torch.Generator().manual_seed(args.seed))
    path = []  # (sigma, guided x0 estimate) per step
    x = sample_full(model, ctx, uncond, x, sig, args.guidance, on_step=lambda i, _, x0: path.append((sig[i], x0)))
    fg = foreground_mask(x)[:, 0] > 0
    print(f"foreground fraction: samples {float(fg.float().mean()):.3f}, real clips {float(real_fg.float().mean()):.3f}")
    print(f"real clips at object positions: coarse RMS {rms(real, real_fg, coarse):.3f}, detail RMS {rms(real, real_fg, detail):.3f}")
    for s, x0 in path[:: max(1, len(path) // 10)] + [path[-1]]:
        print(f"sigma {s:.3f}: x0 coarse RMS {rms(x0, fg, coarse):.3f}, detail RMS {rms(x0, fg, detail):.3f}")
    blobs, per_frame, coherence = collections.Counter(), [], []
    for i in range(n):
        frames = to_uint8(vae.decode(x[i : i + 1].float()))
        coherence.append(colour_coherence(frames))
        counts = detect_frames(frames).n_blobs
        blobs.update(counts.tolist())
        per_frame.append(counts == 1)
    real_coherence = np.concatenate([colour_coherence(to_uint8(vae.decode(real[i : i + 1].float()))) for i in range(len(real))])
    print(f"colour coherence: samples {np.nanmean(np.concatenate(coherence)):.3f}, real clips {np.nanmean(real_coherence):.3f}")
    total = sum(blobs.values())
    print("blobs per frame: " + ", ".join(f"{k}: {v / total:.2f}" for k, v in sorted(blobs.items())))
    # frame 0 is a latent frame of its own (causal VAE: 1 + 4k frames), later latent frames hold 4 pixel frames
    one = np.stack(per_frame).mean(0)
    print("one-blob fraction by pixel frame: " + " ".join(f"{v:.2f}" for v in one))
    if args.path_png:
        import imageio.v3 as iio

        snaps = [x0 for _, x0 in path[::3]] + [x]
        print("path columns at sigma " + ", ".join(f"{s:.2f}" for s, _ in path[::3]) + ", final sample")
        rows = [np.concatenate([to_uint8(vae.decode(s[i : i + 1].float()))[0] for s in snaps], 1) for i in range(n)]
        iio.imwrite(args.path_png, np.concatenate(rows, 0))


if __name__ == "__main__":
    main()
