"""Distilling the bidirectional teacher into the causal few-step student, as small functions.

The trainers (``train/ode_init.py``, ``train/distill.py``) wire these together:

* **ODE initialisation** (CausVid): ``ode_grid`` / ``ode_trajectory`` sample the teacher with many
  Euler steps and classifier-free guidance on a grid that passes through the student's sigmas and
  keep the points there; ``ode_regression_loss`` makes the causal student (full clip through a
  ``BlockCausalPlan``: the inference window and sink) regress the clean end point from those
  points, with an independent noise level per chunk.
* **DMD** (DMD, DMD2, Self-Forcing): ``dmd_direction`` is the KL gradient
  ``(x0_fake - x0_real) / mean|x - x0_real|`` at a random noise level, the real score being the
  teacher with CFG and the fake score the critic; ``dmd_loss`` is an MSE to the detached target
  ``x - direction`` (so ``d loss / d x = weight * direction / N``); ``critic_loss`` is the
  flow-matching loss of the critic on detached student samples.
* **Self-Forcing rollouts with streaming long tuning** (Self-Forcing, LongLive): ``StreamRollout``
  generates the student's own context chunk by chunk with ``rollout.generate_chunk`` /
  ``commit_chunk`` and the inference cache class and sink policy. Only the exit step of a chunk
  records gradient; earlier steps and the clean cache writes do not, and the cache never holds a
  graph. Streams are longer than the teacher's clip (and than window + sink, so the cache rolls);
  the rollout yields windows of the teacher's length as they complete, each adding a few new
  frames to the stream, and a planned prompt switch goes through the inference re-cache
  (``rollout.recache``). ``teacher_window`` re-encodes a window's first frame as a clip's first
  latent frame (the VAE codes frame 0 of a clip on its own).
* **Re-DMD** (Reward Forcing): ``motion_reward`` scores a window with the toy detector;
  ``reward_weights`` turns scores into per-sample weights of the generator loss.

Randomness is explicit: every draw comes from a generator seeded by ``(seed, step, rank, purpose)``
so that a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import CacheConfig, DistillConfig, DistillRunConfig, SwitchConfig, to_yaml
from .model import CausalWanModel, TextContext
from .rollout import commit_chunk, generate_chunk, recache, remember_chunk
from .sampler import (add_noise, cfg_combine, flow_loss_weight, flow_target, shift_sigma, stable_seed, teacher_sigmas,
                      timestep, x0_from_flow)
from .eval_suite import mean_row, suite_specs
from .pipeline import StreamingPipeline
from .toyworld.captions import canonical_caption, paraphrase
from .toyworld.evaluate import evaluate_clip, format_table
from .toyworld.world import ClipSpec, sample_spec
from .video import write_tiled

# purposes of the seeded generators (with seed, step, rank)
KEY_PLAN, KEY_PROMPT, KEY_SWITCH_PROMPT, KEY_NOISE, KEY_CONTEXT_NOISE, KEY_DMD, KEY_CRITIC, KEY_ODE = (
    7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008)


def generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*key))


# ---------------------------------------------------------------------------------------------
# Prompts (distillation needs no video data: prompts only)
# ---------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    captions: list[str]
    specs: list[ClipSpec]


def toy_prompts(batch_size: int, seed: int, *key: int, paraphrase_prob: float = 0.5, split: str = "train") -> Prompts:
    """Toy-world prompts that depend only on ``(seed, *key)``."""
    rng = np.random.default_rng([seed, *key])
    specs = [sample_spec(rng, split) for _ in range(batch_size)]
    caps = [paraphrase(s, rng) if rng.random() < paraphrase_prob else canonical_caption(s) for s in specs]
    return Prompts(caps, specs)


# ---------------------------------------------------------------------------------------------
# ODE pairs and regression initialisation (CausVid)
# ---------------------------------------------------------------------------------------------


def ode_grid(student_sigmas: Sequence[float], teacher_steps: int, shift: float, tol: float = 1e-6) -> tuple[list[float], list[int]]:
    """The teacher's Euler grid (``teacher_sigmas``) with the student's sigmas inserted.

    Returns ``(grid, keep)``: ``grid`` decreasing from 1 to 0, ``grid[keep[k]] == student_sigmas[k]``
    exactly. Teacher points closer than ``tol`` to a student sigma are dropped.
    """
    student = [float(s) for s in student_sigmas]
    if any(not 0 < s <= 1 for s in student) or student != sorted(student, reverse=True):
        raise ValueError(f"student sigmas must be decreasing in (0, 1], got {student}")
    base = [s for s in teacher_sigmas(teacher_steps, shift) if all(abs(s - t) > tol for t in student)]
    grid = sorted(base + student, reverse=True)
    if grid[0] != 1.0:
        grid = [1.0] + grid
    return grid, [grid.index(s) for s in student]


def guided_flow(model: CausalWanModel, x: torch.Tensor, t: torch.Tensor, context: TextContext,
                uncond: TextContext | None, scale: float, attn=None) -> torch.Tensor:
    """Flow with classifier-free guidance ``uncond + scale * (cond - uncond)`` (scale 1: conditional only)."""
    cond = model(x, t, context, attn)
    if uncond is None or scale == 1.0:
        return cond
    return cfg_combine(cond, model(x, t, uncond, attn), scale)


@torch.no_grad()
def ode_trajectory(teacher: CausalWanModel, context: TextContext, uncond: TextContext | None, noise: torch.Tensor,
                   grid: Sequence[float], keep: Sequence[int], guidance_scale: float) -> torch.Tensor:
    """Euler + CFG along ``grid`` from ``noise``; returns ``[B, len(keep) + 1, C, F, h, w]``: the
    latents at ``grid[keep[k]]`` and, last, the clean end point."""

    from .rollout import sample_full

    points, keep = [], set(keep)
    x = sample_full(teacher, context, uncond, noise, list(grid), guidance_scale,
                    on_step=lambda i, x, x0: points.append(x) if i in keep else None)
    if len(points) != len(keep):
        raise ValueError("every kept index must be a grid point before the last")
    return torch.stack(points + [x], dim=1)


def regression_inputs(trajectory: torch.Tensor, sigmas: Sequence[float], chunk_frames: int,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick one trajectory point per chunk: returns ``(x [B,C,F,h,w], sigma [B,F], level [B, chunks])``."""
    b, k1, c, f, h, w = trajectory.shape
    if f % chunk_frames:
        raise ValueError(f"{f} frames are not whole chunks of {chunk_frames}")
    level = torch.randint(0, k1 - 1, (b, f // chunk_frames), generator=g).to(trajectory.device)
    per_frame = level.repeat_interleave(chunk_frames, dim=1)  # [B, F]
    index = per_frame[:, None, None, :, None, None].expand(b, 1, c, f, h, w)
    x = torch.gather(trajectory, 1, index).squeeze(1)
    sigma = torch.as_tensor(list(sigmas), dtype=torch.float32, device=trajectory.device)[per_frame]
    return x, sigma, level


def ode_regression_loss(student: CausalWanModel, trajectory: torch.Tensor, sigmas: Sequence[float], context,
                        attn, chunk_frames: int, g: torch.Generator) -> torch.Tensor:
    """CausVid's regression: the student's clean estimate from per-chunk trajectory points vs the end point."""
    x, sigma, _ = regression_inputs(trajectory, sigmas, chunk_frames, g)
    flow = student(x, timestep(sigma), context, attn)
    x0 = x0_from_flow(x.float(), flow.float(), sigma[:, None, :, None, None])
    return F.mse_loss(x0, trajectory[:, -1].float())


# ---------------------------------------------------------------------------------------------
# DMD
# ---------------------------------------------------------------------------------------------


def sample_sigmas(n: int, min_timestep: float, max_timestep: float, shift: float, g: torch.Generator) -> torch.Tensor:
    """DMD / critic noise levels: ``u ~ U(0, 1)``, shifted, clamped to ``[min, max] / 1000`` (Self-Forcing)."""
    s = shift_sigma(torch.rand(n, generator=g, dtype=torch.float64), shift)
    return s.clamp(min_timestep / 1000, max_timestep / 1000).float()


def masked_mean(x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean of ``x [B, C, F, h, w]`` over the frames where ``frame_mask [F]`` is true."""
    if frame_mask is None:
        return x.flatten(1).mean(1)
    m = frame_mask.to(x.device, x.dtype).view(1, 1, -1, 1, 1)
    count = m.sum() * x.shape[1] * x.shape[3] * x.shape[4]
    return (x * m).flatten(1).sum(1) / count


@dataclass
class DMDTerms:
    x_t: torch.Tensor  # noised student sample
    sigma: torch.Tensor  # [B]
    x0_real: torch.Tensor  # teacher (CFG) clean estimate
    x0_fake: torch.Tensor  # critic clean estimate
    normaliser: torch.Tensor  # [B] mean |x - x0_real| over the supervised frames
    direction: torch.Tensor  # (x0_fake - x0_real) / normaliser: the generator's gradient direction


@torch.no_grad()
def dmd_direction(teacher: CausalWanModel, critic: CausalWanModel, x: torch.Tensor, noise: torch.Tensor,
                  sigma: torch.Tensor, real_context: TextContext, real_uncond: TextContext | None, real_scale: float,
                  fake_context: TextContext, fake_uncond: TextContext | None = None, fake_scale: float = 1.0,
                  frame_mask: torch.Tensor | None = None) -> DMDTerms:
    """DMD's KL gradient (DMD eq. 7-8) at noise level ``sigma [B]`` (one per sample).

    The real score is the teacher with CFG (``real_scale``), the fake score the critic (CFG only if
    ``fake_scale != 1``); each model gets the prompt through its own text projection (``*_context``).
    """
    x = x.detach()
    s = sigma.to(x.device).view(-1, 1, 1, 1, 1)
    x_t = add_noise(x, noise, s)
    t = timestep(sigma.to(x.device))
    x0_real = x0_from_flow(x_t, guided_flow(teacher, x_t, t, real_context, real_uncond, real_scale), s)
    x0_fake = x0_from_flow(x_t, guided_flow(critic, x_t, t, fake_context, fake_uncond, fake_scale), s)
    norm = masked_mean((x - x0_real).abs().float(), frame_mask)
    direction = torch.nan_to_num((x0_fake - x0_real) / norm.view(-1, 1, 1, 1, 1).to(x.dtype))
    return DMDTerms(x_t, sigma, x0_real, x0_fake, norm, direction)


def dmd_loss(x: torch.Tensor, direction: torch.Tensor, frame_mask: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_b w_b * 0.5 * mean_masked (x - sg(x - direction))^2``: its gradient w.r.t. ``x`` is
    ``w_b * direction / (B * N)`` on the supervised frames (``N`` elements per sample), 0 elsewhere."""
    xd = x.double()
    target = (xd - direction.double()).detach()
    per_sample = masked_mean(0.5 * (xd - target) ** 2, frame_mask)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean().float()


def critic_loss(critic: CausalWanModel, x: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                context: TextContext, frame_mask: torch.Tensor | None = None, sigma_floor: float = 0.0) -> torch.Tensor:
    """Flow matching of the critic on the detached student sample ``x`` (no gradient reaches the student),
    weighted per sample by ``flow_loss_weight(sigma, sigma_floor)`` as the teacher was trained."""
    x = x.detach()
    sigma = sigma.to(x.device)
    pred = critic(add_noise(x, noise, sigma.view(-1, 1, 1, 1, 1)), timestep(sigma), context)
    return flow_matching_loss(pred, x, noise, sigma, sigma_floor, frame_mask)


def flow_matching_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                       sigma_floor: float = 0.0, frame_mask: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Flow MSE of ``pred`` against ``noise - x0``, per sample weighted by ``flow_loss_weight`` (the
    teacher's loss and the critic's); ``weight`` (broadcast to ``x0``, e.g. ``foreground_weight``) weighs positions."""
    err = (pred.float() - flow_target(x0, noise).float()) ** 2
    per_sample = masked_mean(err if weight is None else err * weight, frame_mask)
    return (flow_loss_weight(sigma.float(), sigma_floor) * per_sample).mean()


def path_source_levels(sigma: torch.Tensor, u: torch.Tensor, hi: float, floor: float = 0.0) -> torch.Tensor:
    """Levels ``[B]`` that path correction estimates from: uniform in ``[max(sigma, floor), hi]`` (``u`` uniform in [0, 1))."""
    start = sigma.clamp_min(floor)
    return start + (hi - start) * u


def substituted_input(x0: torch.Tensor, x0_in: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """A training input at ``sigma`` [B] noised from ``x0_in`` instead of the clip ``x0`` (same noise); the target
    stays ``x0``. Returns ``(x_sigma, noise_eff)``: ``noise_eff = (x_sigma - (1 - sigma) x0) / sigma`` makes
    ``flow_matching_loss(pred, x0, noise_eff, sigma)`` the usual x0 error of ``pred`` at ``x_sigma``."""
    s = sigma.view((-1,) + (1,) * (x0.ndim - 1))
    x = add_noise(x0_in, noise, s)
    return x, (x - (1 - s) * x0) / s


def path_correction_input(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_from: torch.Tensor,
                          estimate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A training input at ``sigma`` [B] built as a sampler's path builds it: the clean estimate ``estimate(x, s)``
    of ``x0`` noised to the higher level ``sigma_from`` [B], noised back down to ``sigma`` with the same noise
    (a DDIM step). The target stays the real ``x0``, so the model learns to repair the errors its own
    estimates leave along the path (exposure bias) instead of only denoising exact noised data.
    Returns ``substituted_input``'s ``(x_sigma, noise_eff)``."""
    s_from = sigma_from.view((-1,) + (1,) * (x0.ndim - 1))
    with torch.no_grad():
        x0_hat = estimate(add_noise(x0, noise, s_from), sigma_from).to(x0.dtype)
    return substituted_input(x0, x0_hat, noise, sigma)


def coarse_latents(x0: torch.Tensor, channels: int) -> torch.Tensor:
    """``x0`` ``[B, C, ...]`` with only its first ``channels`` latent channels; the rest at 0, their mean. With a PCA
    VAE (channels in order of variance) the first few hold each position's mean colour: the object's place and
    colour without its outline."""
    return torch.cat([x0[:, :channels], torch.zeros_like(x0[:, channels:])], 1)


# ---------------------------------------------------------------------------------------------
# Self-Forcing rollouts with streaming long tuning and prompt switches
# ---------------------------------------------------------------------------------------------


@dataclass
class WindowSpec:
    index: int
    start: int  # first frame the teacher sees
    new_start: int  # first frame generated for this window (before it: context from earlier windows)
    end: int

    def frame_mask(self, device=None) -> torch.Tensor:
        """``[end - start]`` bool: the window's new (supervised) frames."""
        return torch.arange(self.start, self.end, device=device) >= self.new_start


@dataclass
class RolloutPlan:
    """The shape of one training stream (identical on every rank: it depends on ``(seed, step)``)."""

    num_frames: int
    clip_frames: int  # the teacher's clip length: every window has this many frames
    window_ends: list[int]
    exit_steps: list[int]  # per chunk
    switch_frame: int | None
    supervise_first: bool = True

    def windows(self) -> list[WindowSpec]:
        T, out, prev = self.clip_frames, [], 0
        for i, end in enumerate(self.window_ends):
            out.append(WindowSpec(i, end - T, prev, end))
            prev = end
        return out

    def supervised(self) -> list[WindowSpec]:
        w = self.windows()
        return w if self.supervise_first else w[1:]


def plan_rollout(d: DistillConfig, clip_frames: int, chunk_frames: int, num_steps: int, seed: int, step: int) -> RolloutPlan:
    """Draw a stream's window boundaries, exit steps and switch frame from ``(seed, step)``."""
    g = generator(seed, step, KEY_PLAN)
    T, C, L = clip_frames, chunk_frames, d.rollout_frames

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    switch = None
    lo = max(d.min_switch_frame, T) // C
    hi = (L - C) // C
    if d.switch_prob > 0 and lo <= hi and float(torch.rand(1, generator=g)) < d.switch_prob:
        switch = randint(lo, hi) * C
    ends = [T]
    while ends[-1] < L:
        end = ends[-1]
        n = min(randint(d.min_new_frames // C, d.max_new_frames // C) * C, L - end)
        if switch is not None and end < switch < end + n:
            n = switch - end  # new frames never straddle a switch
        ends.append(end + n)
    chunks = L // C
    if d.exit_step == "last":
        exits = [num_steps - 1] * chunks
    elif d.exit_step == "same":
        exits = [randint(0, num_steps - 1)] * chunks
    else:
        exits = [randint(0, num_steps - 1) for _ in range(chunks)]
    return RolloutPlan(L, T, ends, exits, switch, d.supervise_first_window)


@dataclass
class Window:
    spec: WindowSpec
    latents: torch.Tensor  # [B, C, T, h, w]; context frames detached, new frames carry the exit-step graph
    prompt: int  # prompt of the new frames: 0 = the first, 1 = after the switch


NoiseFn = Callable[[int, int], torch.Tensor]  # (chunk, step index) -> noise of that chunk's step
ContextNoiseFn = Callable[[int], torch.Tensor]  # frame_start -> noise of the clean pass


@contextlib.contextmanager
def no_checkpointing(model: CausalWanModel):
    """Cached forwards must not re-run in backward: the rolling cache they read is overwritten by
    later chunks' commits, so a recomputation would attend to other frames."""
    saved, model.gradient_checkpointing = model.gradient_checkpointing, False
    try:
        yield
    finally:
        model.gradient_checkpointing = saved


class StreamRollout:
    """One training stream of the student, generated exactly as inference generates it.

    ``run`` is a generator: it yields each window as soon as its last chunk exists, so the caller
    can compute the window's loss and call backward (freeing its graph) before the stream goes on;
    the cache and the clean latents carry over without gradient. ``history()`` is every frame so
    far, detached.
    """

    def __init__(self, model: CausalWanModel, cache_cfg: CacheConfig, switch_cfg: SwitchConfig, sigmas: Sequence[float],
                 latent_shape: tuple[int, int, int, int], noise: NoiseFn, context_sigma: float = 0.0,
                 context_noise: ContextNoiseFn | None = None):
        self.model, self.cache_cfg, self.switch_cfg, self.sigmas = model, cache_cfg, switch_cfg, list(sigmas)
        self.batch, self.channels, self.height, self.width = latent_shape
        self.noise, self.context_sigma, self.context_noise = noise, context_sigma, context_noise
        self.frames: list[torch.Tensor] = []  # per chunk, detached
        self.cache = None

    def history(self) -> torch.Tensor:
        return torch.cat(self.frames, dim=2)

    def _commit(self, context: TextContext, latents: torch.Tensor, frame_start: int) -> None:
        noise = self.context_noise(frame_start) if self.context_sigma > 0 and self.context_noise else None
        commit_chunk(self.model, self.cache, context, latents, self.context_sigma, noise, frame_start=frame_start)

    def _encode(self, states: torch.Tensor, grad: bool) -> TextContext:
        with torch.set_grad_enabled(grad):
            return self.model.encode_context(states)

    def run(self, plan: RolloutPlan, states: torch.Tensor, switch_states: torch.Tensor | None = None,
            grad: bool = False) -> Iterator[Window]:
        """Generate ``plan.num_frames`` frames under text states ``states`` ``[B, Lt, D]`` (then
        ``switch_states`` from ``plan.switch_frame``); with ``grad``, chunks of supervised windows
        keep the graph of their exit step (and of the prompt's projection)."""
        model, cc, C = self.model, self.cache_cfg, self.cache_cfg.chunk_frames
        if plan.switch_frame is not None and switch_states is None:
            raise ValueError("the plan switches prompt: pass switch_states")
        self.cache = model.new_cache(cc, self.batch, self.height, self.width,
                                     max_frames=None if cc.bounded else plan.num_frames)
        self.frames = []
        sink_chunks: list = []
        recent: deque = deque()
        windows = plan.windows()
        supervised = {w.index for w in plan.supervised()}
        wi = 0
        current, prompt = states, 0
        blend_from, blend_step = None, 0
        live: dict[int, torch.Tensor] = {}  # chunk -> x0 with graph, until its window is yielded
        with no_checkpointing(model):
            for c in range(plan.num_frames // C):
                f0 = c * C
                if f0 == plan.switch_frame:  # as StreamingPipeline._apply_switch
                    if self.switch_cfg.mode == "blend":
                        blend_from, blend_step = current, 0
                    current, prompt = switch_states, 1
                    if self.switch_cfg.mode == "recache":
                        new_ctx = self._encode(current, False)
                        recache(self.cache, sink_chunks, recent, lambda lat, fs: self._commit(new_ctx, lat, fs))
                chunk_states = current
                if blend_from is not None:  # as StreamingPipeline._chunk_context
                    blend_step += 1
                    chunk_states = torch.lerp(blend_from, current, blend_step / self.switch_cfg.blend_chunks)
                    if blend_step >= self.switch_cfg.blend_chunks:
                        blend_from = None
                while windows[wi].end <= f0:
                    wi += 1
                track = grad and windows[wi].index in supervised
                ctx = self._encode(chunk_states, track)  # with grad, the prompt projection trains too
                x0 = generate_chunk(model, self.cache, ctx, self.sigmas, lambda i, c=c: self.noise(c, i),
                                    frame_start=f0, exit_step=plan.exit_steps[c], grad=track)
                self._commit(ctx, x0, f0)  # no grad (commit_chunk), the chunk's own context as inference
                remember_chunk(self.cache, sink_chunks, recent, f0, x0.detach())
                self.frames.append(x0.detach())
                live[c] = x0
                w = windows[wi]
                if f0 + C == w.end:
                    parts = [live[k] if k * C >= w.new_start else self.frames[k] for k in range(w.start // C, w.end // C)]
                    live = {}
                    yield Window(w, torch.cat(parts, dim=2), prompt)


@torch.no_grad()
def first_frame_latent(vae, history: torch.Tensor) -> torch.Tensor:
    """The last pixel frame of ``history``'s last latent frame, encoded as a clip's first latent frame."""
    pixels = vae.decode(history.float())
    return vae.encode(pixels[:, :, -1:]).to(history.dtype)


def teacher_window(vae, history: torch.Tensor, window: Window) -> torch.Tensor:
    """The clip the teacher and critic see: the window, its first frame re-encoded as a clip's
    first frame when the window starts mid-stream (LongLive). Only context frames are replaced."""
    s = window.spec
    if s.start == 0:
        return window.latents
    if s.new_start <= s.start:
        raise ValueError("a mid-stream window's first frame must be context (max_new_frames < clip frames)")
    first = first_frame_latent(vae, history[:, :, : s.start + 1])
    return torch.cat([first, window.latents[:, :, 1:]], dim=2)


# ---------------------------------------------------------------------------------------------
# Re-DMD: reward weights from the toy detector's motion score
# ---------------------------------------------------------------------------------------------


def window_target(spec: WindowSpec, first: ClipSpec, second: ClipSpec | None, switch_frame: int | None,
                  temporal: int = 4):
    """Prompt timeline of a window's pixel frames (the switch, if inside, at its first pixel frame)."""
    if switch_frame is None or second is None or switch_frame >= spec.end:
        return first
    rel = switch_frame - spec.start
    if rel <= 0:
        return second
    return [(0, first), (temporal * rel - (temporal - 1), second)]


@torch.no_grad()
def motion_reward(vae, latents: torch.Tensor, targets: Sequence) -> torch.Tensor:
    """Per-sample motion accuracy of decoded clips ``[B, C, F, h, w]`` (NaN where nothing is scored)."""
    from .toyworld.evaluate import evaluate_clip
    from .video import to_uint8

    pixels = vae.decode(latents.detach().float())
    out = []
    for b, target in enumerate(targets):
        m = evaluate_clip(to_uint8(pixels[b : b + 1]), target).accuracy.motion
        out.append(float(m))
    return torch.tensor(out)


def reward_weights(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(beta * r)`` normalised to mean 1 over the scored samples; unscored (NaN) samples get 1."""
    valid = ~torch.isnan(rewards)
    w = torch.ones_like(rewards)
    if beta == 0 or not valid.any():
        return w
    e = torch.exp(beta * rewards[valid])
    w[valid] = e / e.mean()
    return w


# ---------------------------------------------------------------------------------------------
# Weights, distributed gradients, evaluation and export
# ---------------------------------------------------------------------------------------------


def resolve_weights(source: str | Path, module: str) -> Path:
    """A weights file from a run directory (its latest checkpoint's ``<module>.safetensors``), a
    checkpoint directory, a model directory (``transformer.safetensors``) or a file."""
    from .checkpoint import latest_checkpoint

    p = Path(source)
    if p.is_file():
        return p
    if (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise FileNotFoundError(f"run {p} has no complete checkpoint yet")
        p = ckpt
    for name in (f"{module}.safetensors", "transformer.safetensors"):
        if (p / name).is_file():
            return p / name
    raise FileNotFoundError(f"no weights at {source}: expected a run dir, a checkpoint dir with {module}.safetensors, "
                            "a model dir with transformer.safetensors, or a weights file")


def match_self_conditioning(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with its patch embedding fitted to ``model``'s self-conditioning (``model.self_conditioning``):
    a plain source gains zero weights for the x0 input (same function), a self-conditioned source loses them
    (its function with no x0 estimate, which it was trained on too). Other shapes are left to the strict load."""
    key = "patch_embedding.weight"
    have = state.get(key)
    mc = model.config
    want = mc.in_channels * (2 if mc.self_conditioning else 1)
    if have is None or have.ndim != 5 or have.shape[0] != mc.dim or have.shape[1] == want:
        return state
    if want == 2 * have.shape[1]:
        return {**state, key: torch.cat([have, torch.zeros_like(have)], dim=1)}
    if 2 * want == have.shape[1]:
        return {**state, key: have[:, :want].contiguous()}
    return state


def factor_patch_embedding(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with a full-rank patch embedding (``patch_embedding.weight`` / ``.bias``) replaced by
    ``model``'s low-rank one (``model.patch_embed_rank`` = r): the truncated SVD ``W ~ U_r S_r V_r^T``, split as
    ``down = S_r^1/2 V_r^T``, ``up = U_r S_r^1/2`` (the best rank-r approximation: the same function when r
    is the full rank). Other states are returned unchanged."""
    rank = model.config.patch_embed_rank
    full = state.get("patch_embedding.weight")
    if not rank or full is None:
        return state
    u, s, vh = torch.linalg.svd(full.float().flatten(1), full_matrices=False)
    if rank > len(s):
        raise ValueError(f"model.patch_embed_rank={rank} exceeds the rank of the source's patch embedding ({len(s)})")
    root = s[:rank].sqrt()
    out = {k: v for k, v in state.items() if k not in ("patch_embedding.weight", "patch_embedding.bias")}
    out["patch_embedding.down.weight"] = (root[:, None] * vh[:rank]).reshape(rank, *full.shape[1:]).to(full.dtype)
    out["patch_embedding.up.weight"] = (u[:, :rank] * root).reshape(full.shape[0], rank, 1, 1, 1).to(full.dtype)
    out["patch_embedding.up.bias"] = state["patch_embedding.bias"]
    return out


def match_pooled_text(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` fitted to ``model.pooled_text``: a source without the pooled-text map gains it at zero (the same
    function); a source with it loaded into a model without it is left to the strict load, which names the keys."""
    if not getattr(model.config, "pooled_text", False) or "text_pool.weight" in state:
        return state
    return {**state, **{f"text_pool.{k}": torch.zeros_like(v) for k, v in model.text_pool.state_dict().items()}}


def fit_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` fitted to ``model``: self-conditioning matched, patch embedding factored to low rank, pooled
    text added at zero."""
    return match_pooled_text(factor_patch_embedding(match_self_conditioning(state, model), model), model)


def load_weights(model: torch.nn.Module, source: str | Path, module: str = "ema") -> Path:
    """Load ``model`` strictly from ``source`` (see ``resolve_weights``); other checkpoint formats
    (Wan, Self-Forcing, CausVid, ...) go through ``loaders.load_wan_weights``."""
    from safetensors.torch import load_file

    from .loaders import load_wan_weights

    path = resolve_weights(source, module)
    if path.suffix == ".safetensors":
        sd = fit_state(load_file(str(path)), model)
        if set(sd) == set(model.state_dict()):
            model.load_state_dict(sd, strict=True)
            return path
    load_wan_weights(model, path)
    return path


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce-mean the gradients of ``params`` across processes in one flat buffer (no DDP:
    rollouts call the model many times per step, through ``forward_cached``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_mean(value: float, device) -> float:
    """Mean of a scalar over processes (for logging)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def optimizer_to(opt: torch.optim.Optimizer, device) -> None:
    for state in opt.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)


@torch.no_grad()
def stream_eval(model: CausalWanModel, vae, text, cfg: DistillRunConfig, *, num_prompts: int = 8,
                num_frames: int = 49, seed: int = 1234, split: str = "train",
                video: str | Path | None = None) -> tuple[list[dict], str]:
    """Stream one clip per suite prompt through ``StreamingPipeline`` (the inference path) and score it.
    ``video``: also write the clips there, tiled into one mp4 (a run's periodic samples)."""
    p = next(model.parameters())
    pipe = StreamingPipeline(model, vae, text, cfg.stream_config(), device=p.device, dtype=p.dtype)
    rows, clips = [], []
    for i, spec in enumerate(suite_specs(num_prompts, split, seed)):
        caption = canonical_caption(spec)
        frames = pipe.generate(caption, num_frames=num_frames, seed=seed + i)
        rows.append(evaluate_clip(frames, spec).row(prompt=caption))
        clips.append(frames)
    if video is not None:
        write_tiled(video, clips, cfg.video.fps)
    steps = len(cfg.sampler.denoising_steps)
    summary = mean_row(rows, model=f"student {steps} steps, {num_frames} frames", split=split)
    return [summary], format_table([summary])


def export_student(cfg: DistillRunConfig, model: torch.nn.Module, out_dir: str | Path) -> Path:
    """A model directory ``StreamingPipeline.from_pretrained`` loads: config, weights, VAE."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg.stream_config()))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / "transformer.safetensors"))
    if Path(cfg.vae_path).is_dir():
        shutil.copytree(cfg.vae_path, out / "vae", dirs_exist_ok=True)
    return out

