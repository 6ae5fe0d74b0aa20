"""Fixed evaluation suites: generate clips for a fixed set of prompts and score them with the toy detector."""
from __future__ import annotations

import numpy as np
import torch

from .data import frames_to_tensor  # noqa: F401  (re-exported for scripts)
from .model import CausalWanModel
from .rollout import sample_full
from .sampler import teacher_sigmas
from .text import TextEncoder
from .toyworld.captions import canonical_caption, paraphrase
from .toyworld.evaluate import evaluate_clip, format_table
from .toyworld.world import ClipSpec, sample_spec
from .vae import VideoVAE, pixel_frames
from .video import to_uint8

SUMMARY_KEYS = ("colour", "shape", "background", "motion", "presence", "speed_ratio")


def suite_specs(n: int, split: str = "train", seed: int = 1234) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split) for _ in range(n)]


def mean_row(rows: list[dict], **label) -> dict:
    out = dict(label)
    for k in SUMMARY_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None and not np.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else None
    out["clips"] = len(rows)
    return out


@torch.no_grad()
def teacher_eval(model: CausalWanModel, vae: VideoVAE, text: TextEncoder, cfg, *, num_prompts: int = 8,
                 steps: int = 30, guidance: float = 4.0, seed: int = 1234, split: str = "train",
                 captions: str = "canonical") -> tuple[list[dict], str]:
    """Sample one clip per prompt with many-step Euler + CFG; returns per-clip rows and a summary table."""
    tc = cfg.train
    specs = suite_specs(num_prompts, split, seed)
    rng = np.random.default_rng(seed + 1)
    texts = [canonical_caption(s) if captions == "canonical" else paraphrase(s, rng) for s in specs]
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    model.eval()
    p = next(model.parameters())
    rows = []
    sig = teacher_sigmas(steps, tc.timestep_shift)
    uncond = model.encode_context(text.encode([""]).to(p.device, p.dtype))
    for i, (spec, caption) in enumerate(zip(specs, texts)):
        g = torch.Generator().manual_seed(seed + i)
        noise = torch.randn(1, vae.z_dim, tc.latent_frames, h, w, generator=g).to(p.device, p.dtype)
        ctx = model.encode_context(text.encode([caption]).to(p.device, p.dtype))
        lat = sample_full(model, ctx, uncond, noise, sig, guidance)
        frames = to_uint8(vae.decode(lat.float()))
        assert len(frames) == pixel_frames(tc.latent_frames, vae.temporal)
        rows.append(evaluate_clip(frames, spec).row(prompt=caption))
    summary = mean_row(rows, model=f"teacher {steps} steps cfg {guidance}", split=split, captions=captions)
    return [summary], format_table([summary])
