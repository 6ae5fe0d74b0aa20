"""Training batches from the toy world, rendered on the fly.

A batch depends only on ``(seed, step, rank)``: a resumed run sees exactly the batches an
uninterrupted run would have, with no data-loader state to save.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
