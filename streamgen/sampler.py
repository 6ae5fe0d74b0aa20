"""Flow-matching sampling math as small pure functions, and the one denoising step function.

Convention (Wan, rectified flow): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, the model predicts
the flow ``v = noise - x0`` and takes ``timestep = sigma * 1000``.

``denoise_step`` is the only place a denoising prediction becomes the next latent: streaming
inference, training rollouts, the rolling schedule and the pipeline-parallel runtime all call it
(the last with a ``predict`` that runs the model across ranks).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: float | torch.Tensor, shift: float):
    """Timestep shift of Wan / SD3: ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def few_step_sigmas(steps: Sequence[int], shift: float, warp: bool) -> list[float]:
    """Sigmas of a distilled student's step list (e.g. ``[1000, 750, 500, 250]``).

    With ``warp`` the steps index the shifted 1000-step training grid (Self-Forcing's
    ``warp_denoising_step``): step ``s`` -> ``shift_sigma(s / 1000)``.
    """
    if any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in steps) or list(steps) != sorted(steps, reverse=True):
        raise ValueError(f"denoising steps must be decreasing values in (0, {NUM_TRAIN_TIMESTEPS}], got {list(steps)}")
    sig = [s / NUM_TRAIN_TIMESTEPS for s in steps]
    return [float(shift_sigma(s, shift)) for s in sig] if warp else sig


def teacher_sigmas(num_steps: int, shift: float) -> list[float]:
    """Many-step Euler grid: ``num_steps + 1`` shifted sigmas from 1 to 0 (as diffusers' FlowMatchEulerDiscreteScheduler)."""
    # diffusers spaces the unshifted grid down to the *shifted* smallest training sigma; we match it
    base = torch.linspace(1.0, shift_sigma(1.0 / NUM_TRAIN_TIMESTEPS, shift), num_steps, dtype=torch.float64)
    return [float(s) for s in shift_sigma(base, shift)] + [0.0]


def timestep(sigma: float | torch.Tensor):
    return sigma * NUM_TRAIN_TIMESTEPS


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * noise


def x0_from_flow(x: torch.Tensor, flow: torch.Tensor, sigma) -> torch.Tensor:
    return x - sigma * flow


X0_SIGMA_MIN = 0.05  # below it an x0-predicting head's flow stops growing as 1 / sigma (JiT's clip)


def flow_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_min: float = X0_SIGMA_MIN) -> torch.Tensor:
    """The flow that an x0 prediction implies at ``x = x_sigma``: ``(x - x0) / sigma``, with ``sigma``
    clipped to ``sigma_min`` so a clean (sigma 0) context frame or the last steps stay finite."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).clamp_min(sigma_min)
    return (x.float() - x0.float()) / s


def flow_loss_weight(sigma: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-sample weight of the flow MSE: ``min(1, (sigma / floor)^2)``, i.e. the x0 error over
    ``max(sigma, floor)^2`` (the min-SNR idea, Hang et al. 2023). The flow MSE weighs x0 errors by
    ``1 / sigma^2``; for an x0-predicting head, a sample near sigma 0 then outweighs the rest of its
    batch hundreds of times and gradient clipping trains on it alone. ``floor = 0``: plain flow matching."""
    if floor <= 0:
        return torch.ones_like(sigma)
    return (sigma / floor).clamp(max=1.0).square()


def foreground_mask(x0: torch.Tensor, threshold: float = 0.1, dilate: int = 0) -> torch.Tensor:
    """``[B, 1, F, h, w]`` float mask of the positions where the clean latent ``x0`` ``[B, C, F, h, w]`` differs from its
    frame's backdrop: the median latent over a frame's positions (a flat background covers most of every toy-world
    frame, and its patches encode identically); a position is foreground if its RMS distance to it over channels
    exceeds ``threshold``. ``dilate`` grows the mask by that many positions in each spatial direction."""
    flat = x0.float().flatten(3)  # [B, C, F, h*w]
    dist = (flat - flat.median(dim=3, keepdim=True).values).pow(2).mean(dim=1, keepdim=True).sqrt()
    mask = (dist > threshold).float().view(x0.shape[0], 1, *x0.shape[2:])
    if dilate > 0:
        k = 2 * dilate + 1
        mask = torch.nn.functional.max_pool3d(mask, (1, k, k), stride=1, padding=(0, dilate, dilate))
    return mask


def foreground_weight(x0: torch.Tensor, boost: float, threshold: float = 0.1, dilate: int = 0) -> torch.Tensor:
    """Spatial weight ``[B, 1, F, h, w]`` of the flow MSE: ``1 + boost`` on ``foreground_mask(x0, threshold, dilate)``,
    1 elsewhere, rescaled to mean 1 per sample (the loss scale is unchanged).

    The object covers ~6 % of the positions, so under the plain MSE a denoiser learns the backdrop long before the
    object. A data prior for flat-backdrop worlds: ``boost = 0`` (plain MSE) elsewhere. ``dilate``: weighting only
    the object lets a denoiser spill object colour round it at no extra cost (samples with 4x the object's area),
    the ring does not.
    """
    if boost <= 0:
        return torch.ones_like(x0[:, :1])
    w = 1.0 + boost * foreground_mask(x0, threshold, dilate)
    return w / w.flatten(1).mean(1).view(-1, 1, 1, 1, 1)


def channel_weight(channels: int, last: int, weight: float) -> torch.Tensor:
    """Per-channel weight ``[1, channels, 1, 1, 1]`` of the flow MSE: ``weight`` on the ``last`` channels, 1 on the
    others, rescaled to mean 1 (the loss scale is unchanged). ``last = 0`` or ``weight = 1``: all ones."""
    if not 0 <= last <= channels:
        raise ValueError(f"last must be in [0, {channels}], got {last}")
    w = torch.ones(channels)
    if last:
        w[channels - last:] = weight
    return (w / w.mean()).view(1, channels, 1, 1, 1)


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Training target of flow matching."""
    return noise - x0


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def stable_seed(*key: int) -> int:
    """A generator seed from integers, identical in every process (ints hash deterministically; strings don't)."""
    if not all(isinstance(k, int) for k in key):
        raise TypeError(f"stable_seed takes integers only, got {key}")
    return hash(tuple(key)) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_noise(shape, seed: int, *key: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise that depends only on ``(seed, *key)`` (e.g. chunk and step index).

    Drawn on the CPU so that one process, several ranks, or another device produce the same video.
    """
    g = torch.Generator().manual_seed(stable_seed(seed, *key))
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def denoise_step(
    predict: Predict,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor | None,
    noise: torch.Tensor | None = None,
    *,
    euler: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance latents ``x`` at noise level ``sigma`` by one step.

    ``predict(x, timestep)`` returns the flow. Returns ``(x0, x_next)``: the clean estimate and the
    input of the next step. Few-step (distilled) sampling re-noises ``x0`` to ``sigma_next`` with
    fresh ``noise``; ``euler`` takes the deterministic ODE step instead (teachers). ``sigma`` may be a
    tensor broadcastable to ``x`` (per-sample or per-frame levels).
    """
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    t = timestep(s.reshape(s.shape[0], s.shape[2]) if s.ndim == 5 else s)  # [B,1,F,1,1] -> per-frame [B, F]
    flow = predict(x, t)
    x0 = x0_from_flow(x, flow, sigma)
    if sigma_next is None or (not torch.is_tensor(sigma_next) and sigma_next == 0):
        return x0, x0
    if euler:
        return x0, x + (sigma_next - sigma) * flow
    if noise is None:
        raise ValueError("few-step re-noising needs fresh noise")
    return x0, add_noise(x0, noise, sigma_next)
