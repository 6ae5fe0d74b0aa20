"""Chunk-level generation shared by inference and training rollouts.

``generate_chunk`` denoises one chunk through the rolling cache with ``denoise_step``;
``commit_chunk`` writes the finished chunk's K/V (the clean pass at the context noise level).
``rolling_tick`` advances several in-flight chunks with one joint forward (the ``rolling``
schedule), again through ``chunk_step`` / ``denoise_step``.
The streaming pipeline, Self-Forcing training rollouts and the teacher sampler all call these:
there is no other denoising loop.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch

from .cache import RollingKVCache
from .model import CausalWanModel, TextContext
from .sampler import add_noise, cfg_combine, denoise_step, timestep

NoiseFn = Callable[[int], torch.Tensor]  # step index -> noise (0: initial noise, i: re-noise before step i)


def generate_chunk(
    model: CausalWanModel,
    cache: RollingKVCache,
    context: TextContext,
    sigmas: list[float],
    noise: NoiseFn,
    *,
    frame_start: int | None = None,
    exit_step: int | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Denoise one chunk; returns its clean estimate ``[B, C, chunk_frames, h, w]``.

    Steps run until ``exit_step`` (default: the last). With ``grad``, only the exit step records
    gradient (Self-Forcing): earlier steps run without it, and the cache is read-only here.
    """
    last = len(sigmas) - 1 if exit_step is None else exit_step
    x = noise(0)

    def predict(x, t):
        return model.forward_cached(x, t, context, cache, frame_start=frame_start)

    for i in range(last + 1):
        with torch.set_grad_enabled(grad and i == last):
            x0, x = chunk_step(predict, x, sigmas, i, noise, last)
    return x0


def chunk_step(predict, x: torch.Tensor, sigmas: list[float], i: int, noise: NoiseFn, last: int | None = None):
    """Step ``i`` of a chunk's denoising (``denoise_step`` with the chunk's sigma grid and noise stream);
    returns ``(x0, x_next)``, ``x_next = x0`` at the ``last`` step. The pipeline-parallel last rank calls
    this with a ``predict`` that returns the flow the ranks computed."""
    final = i == (len(sigmas) - 1 if last is None else last)
    return denoise_step(predict, x, sigmas[i], None if final else sigmas[i + 1], None if final else noise(i + 1))


def rolling_tick(
    model: CausalWanModel,
    cache: RollingKVCache,
    context: TextContext,
    xs: list[torch.Tensor],
    steps: list[int],
    sigmas: list[float],
    noises: list[NoiseFn],
    *,
    frame_start: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One tick of the ``rolling`` schedule (Rolling Forcing joint-window denoising).

    ``xs[j]`` is in-flight chunk ``j`` (consecutive chunks, oldest first, the oldest at ``frame_start``,
    default the cache's next frame) at denoising step ``steps[j]``. ONE model forward runs over the joint
    window with per-frame timesteps (each chunk at its own sigma) through a read-only
    ``JointCacheView`` (see its attention rule); then every chunk goes through ``chunk_step``, i.e.
    ``denoise_step`` with its own sigma grid and noise stream, with a ``predict`` returning its slice of
    that forward's flow (the forward runs lazily inside the first ``denoise_step``, so every denoising
    forward still happens inside the step function). Returns ``(x0, x_next)`` per chunk;
    ``x_next = x0`` for a chunk at its last step. Nothing is written: the caller commits finished chunks.
    """
    if not xs or len(xs) != len(steps) or len(xs) != len(noises):
        raise ValueError("rolling_tick needs one step index and one noise stream per in-flight chunk")
    frame_start = cache.next_frame if frame_start is None else frame_start
    x = torch.cat(xs, dim=2)
    b = x.shape[0]
    sig = torch.tensor([sigmas[s] for s, xj in zip(steps, xs) for _ in range(xj.shape[2])], dtype=torch.float32, device=x.device)
    t = timestep(sig)[None].expand(b, -1)  # [B, F]: each chunk at its own noise level
    bounds = [0]
    for xj in xs:
        bounds.append(bounds[-1] + xj.shape[2])
    flow: list[torch.Tensor] = []

    def predict_for(j: int):
        def predict(xj, tj):
            assert xj is xs[j], "rolling_tick's predict returns the joint forward's flow of chunk j only"
            if not flow:
                flow.append(model.forward(x, t, context, cache.joint_view(frame_start, len(xs))))
            return flow[0][:, :, bounds[j] : bounds[j + 1]]
        return predict

    return [chunk_step(predict_for(j), xs[j], sigmas, steps[j], noises[j]) for j in range(len(xs))]


def commit_input(x0: torch.Tensor, context_sigma: float = 0.0, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and timestep of the pass that writes a finished chunk's K/V (``commit_chunk``)."""
    x = x0.detach()
    if context_sigma > 0:
        x = add_noise(x, noise if noise is not None else torch.randn_like(x), context_sigma)
    return x, torch.tensor(timestep(context_sigma), device=x.device)


@torch.no_grad()
def commit_chunk(
    model: CausalWanModel,
    cache: RollingKVCache,
    context: TextContext,
    x0: torch.Tensor,
    context_sigma: float = 0.0,
    noise: torch.Tensor | None = None,
    *,
    frame_start: int | None = None,
) -> None:
    """Write a finished chunk's K/V into the cache (forward at the context noise level, no gradient)."""
    x, t = commit_input(x0, context_sigma, noise)
    model.forward_cached(x, t, context, cache, write=True, frame_start=frame_start)


def remember_chunk(cache: RollingKVCache, sink_chunks: list, recent_chunks: deque, frame_start: int,
                   x0: torch.Tensor) -> None:
    """Keep a finished chunk's clean latents for a later re-cache: sink chunks for good, other
    chunks while they are still in the window (``recent_chunks`` holds ``(frame_start, x0)``)."""
    cc = cache.cfg
    if frame_start < cc.sink_frames:
        sink_chunks.append((frame_start, x0))
        return
    recent_chunks.append((frame_start, x0))
    keep = (cache.ring_frames // cc.chunk_frames) if cc.bounded else None
    while keep is not None and len(recent_chunks) > keep:
        recent_chunks.popleft()


@torch.no_grad()
def recache(cache: RollingKVCache, sink_chunks: list, recent_chunks: deque,
            commit: Callable[[torch.Tensor, int], None]) -> None:
    """Re-compute the cache from the kept clean latents (LongLive's prompt-switch re-cache).

    ``commit(latents, frame_start)`` writes one chunk under the new prompt (``commit_chunk`` with
    the caller's context and context noise). The sink is kept as it is when the sink policy says
    so (``recache_sink``); the stream position does not move.
    """
    next_frame = cache.next_frame
    keep_sink = not cache.policy.recache_sink
    cache.reset(keep_sink=keep_sink)
    for frame_start, lat in ([] if keep_sink else list(sink_chunks)) + list(recent_chunks):
        commit(lat, frame_start)
    cache.state.next_frame = next_frame


@torch.no_grad()
def sample_full(
    model: CausalWanModel,
    context: TextContext,
    uncond: TextContext | None,
    noise: torch.Tensor,
    sigmas: list[float],
    guidance_scale: float = 1.0,
    attn=None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    guide: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    guide_scale: float = 1.0,
) -> torch.Tensor:
    """Many-step Euler sampling of a whole clip (bidirectional teacher, or a causal student with
    a ``BlockCausalPlan``), with classifier-free guidance when ``uncond`` is given. A self-conditioned
    model (``model.config.self_conditioning``) gets the previous step's guided x0 estimate. ``on_step(i, x, x0)``
    sees the latents entering step ``i`` and that step's guided x0 estimate.

    ``guide(x, t, x0_prev)``: a weaker model's conditional flow (autoguidance, Karras et al. 2024, "Guiding a
    Diffusion Model with a Bad Version of Itself"); the prediction moves ``guide_scale - 1`` times the
    difference between this model and the guide further from the guide, on top of CFG."""
    x0_prev = None

    def predict(x, t):
        cond = model(x, t, context, attn, x0_prev)
        out = cond
        if uncond is not None and guidance_scale != 1.0:
            out = cfg_combine(cond, model(x, t, uncond, attn, x0_prev), guidance_scale)
        if guide is not None and guide_scale != 1.0:
            out = out + (guide_scale - 1.0) * (cond - guide(x, t, x0_prev))
        return out

    x = noise
    for i in range(len(sigmas) - 1):
        x0, x_next = denoise_step(predict, x, sigmas[i], sigmas[i + 1], euler=True)
        if on_step is not None:
            on_step(i, x, x0)
        x = x_next
        if model.config.self_conditioning:
            x0_prev = x0
    return x
