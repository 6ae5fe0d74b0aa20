"""Training batches from the toy world, rendered on the fly.

A batch depends only on ``(seed, step, rank)``: a resumed run sees exactly the batches an
uninterrupted run would have, with no data-loader state to save.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from .config import TRACK_SWAPS
from .sampler import foreground_mask
from .toyworld.captions import canonical_caption, paraphrase
from .toyworld.render import Track, render_batch, render_track, simulate
from .toyworld.world import (AXIS_MOTIONS, CANVAS, DIAGONAL, MOTIONS, PALETTE, SHAPES, STATIC_MOTIONS, TRAIN_COMBOS,
                             ClipSpec, centre_bounds, max_size, sample_spec)
from .vae import VideoVAE, pixel_frames


@dataclass
class ToyBatch:
    latents: torch.Tensor  # [B, z, f, h, w]
    captions: list[str]  # "" where the caption was dropped
    specs: list[ClipSpec]
    start: list[int]  # each clip's first frame in its spec's timeline


def batch_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank])


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, F, H, W, 3]`` -> float ``[N, 3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def phase_spec(spec: ClipSpec, start: int, split: str = "train") -> tuple[ClipSpec, int]:
    """``(spec, start)``: frames ``start ..`` of ``spec``'s clip, as an equivalent ``(spec', 0)`` whose caption
    names the heading the object has at that frame (the same pixels: position and heading carried over).

    Why: after a bounce, "moving right" moves left. A clip cut at a random phase and captioned with the nominal
    motion teaches that "moving right" and "moving left" both go either way (every teacher until session 16
    drew the direction at random: right and left gave the same velocities), while the spec (and the eval,
    which generates from frame 0) reads "moving right" as "moving right until the border, then back". Axis
    motions only (the others' captions do not depend on the heading); a relabelling that would make a
    held-out combination falls back to ``(spec, 0)``."""
    if spec.motion not in AXIS_MOTIONS or start == 0:
        return spec, start
    track, _ = simulate(spec, 1, start)
    nx, ny = AXIS_MOTIONS[spec.motion]
    heading = (int(track.hx[0]) if nx else 0, int(track.hy[0]) if ny else 0)  # hx, hy: absolute signs
    motion = next(m for m, h in AXIS_MOTIONS.items() if h == heading)
    if split == "train" and (spec.shape, spec.colour, motion) not in TRAIN_COMBOS:
        return spec, 0
    x_lo, x_hi, y_lo, y_hi = centre_bounds(spec.shape, max_size(motion, spec.size))
    x, y = float(np.clip(track.x[0], x_lo, x_hi)), float(np.clip(track.y[0], y_lo, y_hi))
    return replace(spec, motion=motion, x=x, y=y), 0


def toy_batch(vae: VideoVAE, batch_size: int, latent_frames: int, seed: int, step: int, rank: int = 0,
              caption_dropout: float = 0.0, paraphrase_prob: float = 0.5, split: str = "train",
              motion_weights: Mapping[str, float] | None = None) -> ToyBatch:
    rng = batch_rng(seed, step, rank)
    specs = [sample_spec(rng, split, motion_weights) for _ in range(batch_size)]
    start = [int(rng.integers(0, 64)) for _ in specs]  # random phase of the motion
    specs, start = map(list, zip(*(phase_spec(s, f0, split) for s, f0 in zip(specs, start))))
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
    return ToyBatch(encode_frames(vae, frames), captions, specs, start)


def encode_frames(vae: VideoVAE, frames: np.ndarray) -> torch.Tensor:
    """uint8 clips ``[N, F, H, W, 3]`` -> latents ``[N, z, f, h, w]`` (no gradient: training data)."""
    with torch.no_grad():
        return vae.encode(frames_to_tensor(frames))


def counterfactual_track(spec: ClipSpec, num_frames: int, start: int, swap: Sequence[str],
                         rng: np.random.Generator) -> Track:
    """The track of frames ``start .. start + num_frames - 1`` of ``spec``'s clip with each attribute in ``swap``
    (``TRACK_SWAPS``) changed to another value (``track.specs`` hold the new attributes).

    A shape swap keeps the track exactly (place, size, pulse; only the outline differs). A motion swap starts the
    new motion from the clip's first position (same shape, colour, size), so the two clips agree in their first
    frame and part from there. A bounce swap reverses the heading at a random frame (``false_bounce``). The swapped
    (shape, colour, motion) is always a training combination, so no held-out combination is ever rendered for
    training. Why: noised, such a clip is an input whose outline or track contradicts the caption of the target
    clip, so only the prompt can say which one to draw."""
    bad = [a for a in swap if a not in TRACK_SWAPS]
    if bad or not swap:
        raise ValueError(f"swap takes some of {TRACK_SWAPS}, got {list(swap)}")
    looks = [a for a in swap if a != "bounce"]
    track = _other_look(spec, num_frames, start, looks, rng) if looks else simulate(spec, num_frames, start)[0]
    return false_bounce(track, rng) if "bounce" in swap else track


def _other_look(spec: ClipSpec, num_frames: int, start: int, swap: Sequence[str], rng: np.random.Generator) -> Track:
    """``counterfactual_track`` for shape and motion."""
    shapes = [v for v in SHAPES if v != spec.shape] if "shape" in swap else [spec.shape]
    motions = [v for v in MOTIONS if v != spec.motion] if "motion" in swap else [spec.motion]
    combos = [(s, m) for s in shapes for m in motions if (s, spec.colour, m) in TRAIN_COMBOS]
    if not combos:  # every alternative is held out for this colour: keep the clip as it is
        combos = [(spec.shape, spec.motion)]
    shape, motion = combos[int(rng.integers(len(combos)))]
    track, _ = simulate(spec, num_frames, start)
    if motion == spec.motion:  # same track, other outline (render_track reads only the look from the specs)
        look = ClipSpec(shape, spec.colour, spec.background, motion, spec.speed, spec.size, CANVAS / 2, CANVAS / 2)
        return replace(track, specs=(look,) * num_frames)
    speed = None if motion in STATIC_MOTIONS else (spec.speed if spec.motion not in STATIC_MOTIONS else None)
    x_lo, x_hi, y_lo, y_hi = centre_bounds(shape, max_size(motion, spec.size))
    x, y = float(np.clip(track.x[0], x_lo, x_hi)), float(np.clip(track.y[0], y_lo, y_hi))
    dir_x, dir_y = (int(v) for v in rng.choice([-1, 1], size=2))
    other = ClipSpec(shape, spec.colour, spec.background, motion, speed, spec.size, x, y, dir_x, dir_y)
    return simulate(other, num_frames, 0)[0]


def ghost_copy(frames: np.ndarray, background: Sequence[int], rng: np.random.Generator,
               alpha: tuple[float, float] = (0.3, 0.8), tries: int = 16) -> np.ndarray:
    """``frames`` ``[F, H, W, 3]`` uint8 of one clip with a second copy of its object, blended over the backdrop at
    a strength drawn from ``alpha``, shifted by one random offset (the two move together) to where it overlaps the
    object in no frame and stays inside the canvas. Returns ``frames`` unchanged if no such place is found.

    Why: the teacher's samples that fail presence mostly hold two copies of the object, decided at high noise
    (session 20). Trained against the real clip, a fainter extra copy in the input teaches the model to let the
    weaker of two emerging objects fade instead of drawing both. Fainter, because two equal copies would leave
    no way to tell which one to keep."""
    bg = np.asarray(background, dtype=np.float32)
    mask = np.any(frames != np.asarray(background, dtype=frames.dtype), axis=-1)  # [F, H, W] object pixels
    if not mask.any():
        return frames
    ys, xs = np.nonzero(mask.any(0))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    _, hh, ww = mask.shape
    for _ in range(tries):
        ny, nx = int(rng.integers(0, hh - (y1 - y0) + 1)), int(rng.integers(0, ww - (x1 - x0) + 1))
        moved = np.zeros_like(mask)
        moved[:, ny : ny + y1 - y0, nx : nx + x1 - x0] = mask[:, y0:y1, x0:x1]
        if not (moved & mask).any():
            break
    else:
        return frames
    src = np.zeros(frames.shape, dtype=np.float32)
    src[:, ny : ny + y1 - y0, nx : nx + x1 - x0] = frames[:, y0:y1, x0:x1]
    blend = bg + rng.uniform(*alpha) * (src - bg)
    return np.where(moved[..., None], blend.round(), frames).astype(np.uint8)


def false_bounce(track: Track, rng: np.random.Generator) -> Track:
    """``track`` with its motion reversed after a random inner frame ``k`` (positions reflected about frame ``k``'s,
    kept inside the canvas): a bounce where there is no border. Tracks that do not move come back unchanged.

    Why: the teacher's moving objects zig-zag near a border (session 20: "moving down quickly" goes down, up, down,
    up in 4-frame steps), as if each latent frame decided on its own whether the bounce had happened. Trained
    against the real clip, an input with a bounce in open space teaches that the heading only turns at a border."""
    n = len(track)
    if n < 3:
        return track
    k = int(rng.integers(1, n - 1))
    spec = track.specs[k]
    x_lo, x_hi, y_lo, y_hi = centre_bounds(spec.shape, max_size(spec.motion, spec.size))
    x, y = track.x.copy(), track.y.copy()
    x[k + 1 :], y[k + 1 :] = np.clip(2 * x[k] - x[k + 1 :], x_lo, x_hi), np.clip(2 * y[k] - y[k + 1 :], y_lo, y_hi)
    hx, hy = track.hx.copy(), track.hy.copy()
    hx[k:], hy[k:] = -hx[k:], -hy[k:]
    return replace(track, x=x, y=y, hx=hx, hy=hy)


def swap_kinds(spec: ClipSpec, swap: Sequence[str]) -> list[str]:
    """The changes of ``swap`` that may be made to ``spec``'s clip: all but ``motion`` for a diagonal clip.

    Why (session 21): no other motion carries a diagonal's heading on both axes, so the swapped input says nothing
    about the sign of at least one axis, and the real clip's sign there is a coin flip. Trained against it, the model
    learns the average (no motion on that axis) for a diagonal prompt whose path shows none yet, which is where every
    sample starts: the teacher's diagonals came out moving along one axis (half of its motion misses)."""
    return [k for k in swap if not (k == "motion" and spec.motion == DIAGONAL)]


def counterfactual_frames(specs: Sequence[ClipSpec], starts: Sequence[int], num_frames: int, swap: Sequence[str],
                          rng: np.random.Generator, one_at_a_time: bool = False) -> np.ndarray:
    """uint8 ``[N, num_frames, H, W, 3]``: frames ``start ..`` of each clip with the attributes in ``swap`` changed
    (``counterfactual_track`` for shape, motion and bounce, ``ghost_copy`` for count). ``one_at_a_time``: each clip changes
    one of ``swap``, drawn at random, instead of all.

    A ``bouncing diagonally`` clip never gets a motion swap (``swap_kinds``)."""
    clips = []
    for spec, f0 in zip(specs, starts):
        kinds = swap_kinds(spec, swap)
        if one_at_a_time and kinds:
            kinds = [kinds[int(rng.integers(len(kinds)))]]
        on_track = [k for k in kinds if k in TRACK_SWAPS]
        track = counterfactual_track(spec, num_frames, f0, on_track, rng) if on_track else simulate(spec, num_frames, f0)[0]
        frames = render_track(track)
        clips.append(ghost_copy(frames, PALETTE[spec.background], rng) if "count" in kinds else frames)
    return np.stack(clips)


def counterfactual_latents(vae: VideoVAE, batch: ToyBatch, latent_frames: int, swap: Sequence[str],
                           rng: np.random.Generator, one_at_a_time: bool = False) -> torch.Tensor:
    """``counterfactual_frames`` of every clip of ``batch``, encoded like ``batch.latents``."""
    n = pixel_frames(latent_frames, vae.temporal)
    return encode_frames(vae, counterfactual_frames(batch.specs, batch.start, n, swap, rng, one_at_a_time))


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
