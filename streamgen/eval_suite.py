"""Fixed evaluation suites: generate clips for a fixed set of prompts and score them with the toy detector."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import frames_to_tensor  # noqa: F401  (re-exported for scripts)
from .model import CausalWanModel
from .rollout import sample_full
from .sampler import teacher_sigmas
from .text import TextEncoder
from .toyworld.captions import canonical_caption, paraphrase
from .toyworld.evaluate import evaluate_clip, format_table
from .toyworld.world import ClipSpec, stratified_specs
from .vae import VideoVAE, pixel_frames
from .video import to_uint8, write_tiled

SUMMARY_KEYS = ("colour", "shape", "background", "motion", "presence", "speed_ratio")


def suite_specs(n: int, split: str = "train", seed: int = 1234) -> list[ClipSpec]:
    """The eval's prompt set: shapes, motions and colours spread evenly (`stratified_specs`).

    Tables before session 9 (2026-12-02) used n independent `sample_spec` draws, whose small sets were
    lopsided (the 16-prompt training eval held 7 stars and no circle, which flattered shape)."""
    return stratified_specs(n, split, seed)


def mean_row(rows: list[dict], **label) -> dict:
    out = dict(label)
    for k in SUMMARY_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None and not np.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else None
    out["clips"] = len(rows)
    return out


@torch.no_grad()
def text_gain(model: CausalWanModel, vae: VideoVAE, text: TextEncoder, latent_frames: int, *, sigma: float = 0.98,
              batch_size: int = 8, seed: int = 4321) -> float:
    """How much the prompt helps the denoiser: ``1 - err(cond) / err(uncond)``, the x0 errors on a fixed
    batch of training clips noised to ``sigma`` (high: below ~0.95 the flat background is readable from
    the noisy latents themselves, and the prompt adds little). 0 means the text is ignored (a run that stays at 0
    for thousands of steps is not learning its conditioning); it grows as the prompt is used."""
    from .data import toy_batch
    from .sampler import add_noise, timestep, x0_from_flow

    p = next(model.parameters())
    batch = toy_batch(vae, batch_size, latent_frames, seed, 0)
    x0 = batch.latents.to(p.device, p.dtype)
    g = torch.Generator().manual_seed(seed)
    xt = add_noise(x0, torch.randn(x0.shape, generator=g).to(p.device, p.dtype), sigma)
    t = torch.full((batch_size,), float(timestep(sigma)), device=p.device)
    err = {}
    for name, caps in (("cond", [canonical_caption(s) for s in batch.specs]), ("uncond", [""] * batch_size)):
        flow = model(xt, t, model.encode_context(text.encode(caps).to(p.device, p.dtype)))
        err[name] = float((x0_from_flow(xt, flow, sigma) - x0).pow(2).mean())
    return 1.0 - err["cond"] / err["uncond"]


@torch.no_grad()
def teacher_eval(model: CausalWanModel, vae: VideoVAE, text: TextEncoder, cfg, *, num_prompts: int = 8,
                 steps: int = 30, guidance: float = 4.0, seed: int = 1234, split: str = "train",
                 captions: str = "canonical", video: str | Path | None = None) -> tuple[list[dict], str]:
    """Sample one clip per prompt with many-step Euler + CFG; returns the summary row and its table.
    ``video``: also write the clips there, tiled into one mp4 (a run's periodic samples)."""
    tc = cfg.train
    specs = suite_specs(num_prompts, split, seed)
    rng = np.random.default_rng(seed + 1)
    texts = [canonical_caption(s) if captions == "canonical" else paraphrase(s, rng) for s in specs]
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    model.eval()
    p = next(model.parameters())
    rows, clips = [], []
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
        clips.append(frames)
    if video is not None:
        write_tiled(video, clips, cfg.video.fps)
    summary = mean_row(rows, model=f"teacher {steps} steps cfg {guidance}", split=split, captions=captions)
    summary["text_gain"] = text_gain(model, vae, text, tc.latent_frames)
    return [summary], format_table([summary])


# ---------------------------------------------------------------------------------------------
# The streaming suite: one table for a pipeline (the student's targets and the ablations).
# ---------------------------------------------------------------------------------------------

SWITCH_KINDS = ("colour", "shape", "motion")


def _switch_pair(spec: ClipSpec, kind: str, rng: np.random.Generator) -> ClipSpec:
    """``spec`` with one attribute changed (colour never equal to the background)."""
    from .toyworld.world import COLOURS, MOTIONS, SHAPES

    if kind == "colour":
        options = [c for c in COLOURS if c not in (spec.colour, spec.background)]
        return spec.with_attributes(colour=options[int(rng.integers(len(options)))])
    if kind == "shape":
        options = [s for s in SHAPES if s != spec.shape]
        return spec.with_attributes(shape=options[int(rng.integers(len(options)))])
    options = [m for m in MOTIONS if m != spec.motion and m not in ("still", "pulsing")]
    return spec.with_attributes(motion=options[int(rng.integers(len(options)))], speed=None)


def _timed(pipe, target, frames: int, seed: int) -> tuple[np.ndarray, float]:
    import time

    t0 = time.perf_counter()
    video = pipe.generate(target, num_frames=frames, seed=seed)
    return video, len(video) / (time.perf_counter() - t0)


def pipeline_suite(pipe, *, num_prompts: int = 8, seconds: float = 4.0, long_seconds: float = 0.0,
                   seed: int = 1234, label: str = "") -> tuple[list[dict], str]:
    """Stream a fixed set of prompts and timelines through ``pipe`` and score them with the detector.

    Rows: canonical prompts, paraphrases, held-out combinations, one-attribute switches (median
    switch response in frames, centroid jump at the switch in px) and, with ``long_seconds``, one
    long stream (drift of the accuracies between the first 10 s and the last minute).
    """
    from .timeline import PromptEvent, Timeline

    fps = pipe.config.video.fps
    n = int(round(seconds * fps))
    rng = np.random.default_rng(seed + 7)
    rows = []
    for split, captions in (("train", "canonical"), ("train", "paraphrase"), ("heldout", "canonical")):
        clips, speeds = [], []
        for i, spec in enumerate(suite_specs(num_prompts, split, seed)):
            text = canonical_caption(spec) if captions == "canonical" else paraphrase(spec, rng)
            video, speed = _timed(pipe, text, n, seed + i)
            clips.append(evaluate_clip(video, spec, fps=fps).row())
            speeds.append(speed)
        rows.append({**mean_row(clips, run=label, set=f"{split}/{captions}"), "fps": float(np.median(speeds))})
    # switches: one attribute changes half way; response and position continuity
    clips, resp, jumps, speeds = [], [], [], []
    for i, spec in enumerate(suite_specs(num_prompts, "train", seed + 1)):
        kind = SWITCH_KINDS[i % len(SWITCH_KINDS)]
        new = _switch_pair(spec, kind, rng)
        at = n // 2
        tl = Timeline((PromptEvent(0, canonical_caption(spec)), PromptEvent(at, canonical_caption(new))))
        video, speed = _timed(pipe, tl, n, seed + 100 + i)
        ev = evaluate_clip(video, [(0, spec.attributes), (at, new.attributes)], fps=fps)
        clips.append(ev.row())
        speeds.append(speed)
        r = ev.switches[0].response_frames if ev.switches else None
        resp.append(np.nan if r is None else r)
        d = ev.detections
        if np.isfinite(d.cx[at - 1 : at + 1]).all() and kind != "shape":
            jumps.append(float(np.hypot(d.cx[at] - d.cx[at - 1], d.cy[at] - d.cy[at - 1])))
    row = mean_row(clips, run=label, set="switch (1 attribute)")
    row.update(fps=float(np.median(speeds)), switch_resp_median=float(np.nanmedian(resp)) if np.isfinite(resp).any() else None,
               switch_missed=int(np.isnan(resp).sum()), switch_jump_px=float(np.median(jumps)) if jumps else None)
    rows.append(row)
    if long_seconds > 0:
        spec = suite_specs(1, "train", seed + 2)[0]
        video, speed = _timed(pipe, canonical_caption(spec), int(round(long_seconds * fps)), seed + 200)
        ev = evaluate_clip(video, spec, fps=fps)
        row = {**mean_row([ev.row()], run=label, set=f"long {long_seconds:.0f} s"), "fps": speed}
        if ev.drift is not None:
            for k in ("colour", "shape", "background", "motion", "presence"):
                row[f"drift_{k}"] = getattr(ev.drift.last, k) - getattr(ev.drift.first, k)
        rows.append(row)
    return rows, format_table(rows)
