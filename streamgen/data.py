"""Training batches from the toy world, rendered on the fly.

A batch depends only on ``(seed, step, rank)``: a resumed run sees exactly the batches an
uninterrupted run would have, with no data-loader state to save.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .sampler import foreground_mask
from .toyworld.captions import canonical_caption, paraphrase
from .toyworld.render import render_batch
from .toyworld.world import ClipSpec, sample_spec
from .vae import VideoVAE, pixel_frames


@dataclass
class ToyBatch:
    latents: torch.Tensor  # [B, z, f, h, w]
    captions: list[str]  # "" where the caption was dropped
    specs: list[ClipSpec]


def batch_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank])


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, F, H, W, 3]`` -> float ``[N, 3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def toy_batch(vae: VideoVAE, batch_size: int, latent_frames: int, seed: int, step: int, rank: int = 0,
              caption_dropout: float = 0.0, paraphrase_prob: float = 0.5, split: str = "train") -> ToyBatch:
    rng = batch_rng(seed, step, rank)
    specs = [sample_spec(rng, split) for _ in range(batch_size)]
    start = [int(rng.integers(0, 64)) for _ in specs]  # random phase of the motion
    n = pixel_frames(latent_frames, vae.temporal)
    frames = np.stack([render_batch([s], n, start_frame=f0)[0] for s, f0 in zip(specs, start)])
    captions = []
    for s in specs:
        if rng.random() < caption_dropout:
            captions.append("")
        elif rng.random() < paraphrase_prob:
            captions.append(paraphrase(s, rng))
        else:
            captions.append(canonical_caption(s))
    with torch.no_grad():
        latents = vae.encode(frames_to_tensor(frames))
    return ToyBatch(latents, captions, specs)


def object_crop(latents: torch.Tensor, size: int, generator: torch.Generator, jitter: int = 1) -> torch.Tensor:
    """Spatial ``size`` x ``size`` crops ``[B, z, f, size, size]`` of latents ``[B, z, f, h, w]``, each centred on its
    clip's object (the centroid over all frames of ``sampler.foreground_mask``) and shifted by up to ``jitter``
    positions at random, clamped to the frame.

    Why: the object covers ~6 % of a toy-world frame, so a full-frame step spends most of its tokens on a flat
    backdrop that the teacher learnt long ago. The DiT's only position signal is RoPE inside attention, which is
    relative, so a crop is a smaller frame to it, and a step on crops renders (h * w / size^2) times as many
    objects for the same tokens. Full-frame steps stay in the mix for what a crop cannot show (one object per
    frame, borders, backdrop)."""
    b, _, _, h, w = latents.shape
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size must be in 1..{min(h, w)} latent positions, got {size}")
    mask = foreground_mask(latents)[:, 0].sum(1)  # [B, h, w]: object positions over the clip
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    area = mask.flatten(1).sum(1).clamp_min(1e-6)
    cy = torch.where(area > 1e-6, (mask * ys).flatten(1).sum(1) / area, torch.full((b,), (h - 1) / 2))
    cx = torch.where(area > 1e-6, (mask * xs).flatten(1).sum(1) / area, torch.full((b,), (w - 1) / 2))
    shift = torch.randint(-jitter, jitter + 1, (b, 2), generator=generator).float()
    y0 = (cy - (size - 1) / 2 + shift[:, 0]).round().clamp(0, h - size).long().tolist()
    x0 = (cx - (size - 1) / 2 + shift[:, 1]).round().clamp(0, w - size).long().tolist()
    return torch.stack([latents[i, :, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(y0, x0))])
