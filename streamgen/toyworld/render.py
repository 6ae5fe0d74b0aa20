"""Deterministic renderer and ground-truth physics of the toy world.

Physics: an object moving at v px/frame along an axis has the *unfolded* coordinate
p(t) = p0 + h * v * t, folded into the reachable centroid range [lo, hi] by elastic
reflection (a triangle wave), so it moves towards one border, bounces, and comes back.
Pulsing objects stay put and their size follows size * (1 + A sin(2 pi t / period)).

Rendering: hard-edged shapes (a pixel is the object's colour iff its centre lies in the
shape; no anti-aliasing), so every pixel is exactly a palette colour. Masks are
vectorised numpy over a small crop around the object for all frames at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .world import (
    CANVAS,
    PALETTE,
    PULSE_AMPLITUDE,
    PULSE_PERIOD_FRAMES,
    SHAPE_EXTENTS,
    STAR_INNER_RATIO,
    STAR_POINTS,
    ClipSpec,
    axis_speeds,
    centre_bounds,
    max_size,
)


@dataclass(frozen=True)
class MotionState:
    """Where an object is at one frame, enough to continue its motion.

    x, y: centroid (px). hx, hy: heading signs just after this frame (+1/-1; for a
    non-moving axis the last heading is kept). clock: frames since the current motion
    started (drives the pulsing phase).
    """

    x: float
    y: float
    hx: int
    hy: int
    clock: int
    motion: str


@dataclass(frozen=True)
class Track:
    """Ground-truth trajectory of F frames.

    x, y: [F] float64 centroid positions (px, y down). size: [F] float64 size in pixels
    across. hx, hy: [F] int8 heading signs just after each frame (the direction the
    object moves next; flips at a bounce). specs: the ClipSpec of each frame.
    """

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    specs: tuple[ClipSpec, ...]  # spec of each frame (segments repeat the same object)

    def __len__(self) -> int:
        return len(self.x)


def _fold(p: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect unfolded coordinates p [T] into [lo, hi]; return (position [T], parity [T]).

    parity is +1 where the folded coordinate moves the same way as p, -1 where reflected.
    """
    span = hi - lo
    if span <= 0:
        return np.full_like(p, (lo + hi) / 2), np.ones(p.shape, dtype=np.int8)
    u = np.mod(p - lo, 2 * span)
    forward = u < span
    pos = lo + np.where(forward, u, 2 * span - u)
    return pos, np.where(forward, 1, -1).astype(np.int8)


def _fold_heading(p0: float, h0: int, v: float, steps: np.ndarray, lo: float, hi: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Positions [T] and headings [T] (int8) of one axis moving at v px/frame from p0."""
    pos, parity = _fold(p0 + h0 * v * steps, lo, hi)
    heading = (h0 * parity).astype(np.int8)
    if v > 0:  # on a border the next move is always inwards (exact, not float parity)
        eps = 1e-9 * max(1.0, abs(hi))
        heading[pos <= lo + eps] = 1
        heading[pos >= hi - eps] = -1
    return pos, heading


def _pulse(size: float, clock: np.ndarray, motion: str) -> np.ndarray:
    if motion != "pulsing":
        return np.full(clock.shape, float(size))
    return size * (1.0 + PULSE_AMPLITUDE * np.sin(2 * np.pi * clock / PULSE_PERIOD_FRAMES))


def simulate(spec: ClipSpec, num_frames: int, start_frame: int = 0,
             origin: MotionState | None = None) -> tuple[Track, MotionState]:
    """Ground-truth track of `num_frames` frames.

    Without origin: frames start_frame .. start_frame + num_frames - 1 of the clip that
    starts at (spec.x, spec.y) with the spec's heading at frame 0 (so chunks rendered
    with increasing start_frame join seamlessly).
    With origin (the state at the last frame of a previous segment): the new segment's
    frames are the 1st .. num_frames-th steps after that frame. If the motion is the same
    as origin.motion, heading and pulse clock carry on (the bounce state is continuous);
    otherwise the heading restarts from the spec's nominal heading. The position always
    carries, clamped into the range reachable by the new shape / size.
    Returns (track, state at the last frame).
    """
    if num_frames < 0:
        raise ValueError("num_frames must be >= 0")
    vx, vy = axis_speeds(spec.motion, spec.speed)
    x_lo, x_hi, y_lo, y_hi = centre_bounds(spec.shape, max_size(spec.motion, spec.size))
    hx0, hy0 = spec.heading
    hx0, hy0 = hx0 or 1, hy0 or 1
    if origin is None:
        t = start_frame + np.arange(num_frames, dtype=np.float64)
        x0, y0, steps, clock = spec.x, spec.y, t, t
    else:
        x0 = float(np.clip(origin.x, x_lo, x_hi))
        y0 = float(np.clip(origin.y, y_lo, y_hi))
        steps = np.arange(1, num_frames + 1, dtype=np.float64)
        if origin.motion == spec.motion:
            hx0, hy0 = origin.hx, origin.hy
            clock = origin.clock + steps
        else:
            clock = steps
    x, hx = _fold_heading(x0, hx0, vx, steps, x_lo, x_hi)
    y, hy = _fold_heading(y0, hy0, vy, steps, y_lo, y_hi)
    size = _pulse(spec.size, clock, spec.motion)
    track = Track(x, y, size, hx, hy, (spec,) * num_frames)
    if num_frames:
        end = MotionState(float(x[-1]), float(y[-1]), int(hx[-1]), int(hy[-1]), int(clock[-1]),
                          spec.motion)
    else:
        end = origin or MotionState(x0, y0, hx0, hy0, start_frame - 1, spec.motion)
    return track, end


def simulate_segments(segments: Sequence[tuple[int, ClipSpec]]) -> Track:
    """Ground-truth track of a prompt timeline [(num_frames, spec), ...] (see simulate).

    The first segment starts at its spec's position; later segments continue from the
    previous segment's last frame (their own x, y are ignored).
    """
    parts: list[Track] = []
    state: MotionState | None = None
    for n, spec in segments:
        track, state = simulate(spec, n, origin=state)
        parts.append(track)
    if not parts:
        raise ValueError("empty timeline")
    return Track(
        np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
        np.concatenate([p.size for p in parts]), np.concatenate([p.hx for p in parts]),
        np.concatenate([p.hy for p in parts]), sum((p.specs for p in parts), ()),
    )


# --------------------------------------------------------------------------- masks
def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Hard-edged membership test.

    dx, dy: pixel-centre offsets from the object's centroid (px, y down), any shape
    broadcastable with size (e.g. [F, K, K] and [F, 1, 1]). Returns a bool array.
    """
    if shape == "circle":
        return dx * dx + dy * dy <= (size / 2) ** 2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= size / 2
    if shape == "triangle":
        below_apex = dy + size * SHAPE_EXTENTS["triangle"][2]  # 0 at the apex, size at the base
        return (below_apex >= 0) & (below_apex <= size) & (np.abs(dx) <= below_apex / 2)
    if shape == "star":
        outer = size / 2
        inner = outer * STAR_INNER_RATIO
        sector = 2 * np.pi / STAR_POINTS
        theta = np.arctan2(-dy, dx) - np.pi / 2  # 0 at the top point
        alpha = np.mod(theta, sector)
        beta = np.minimum(alpha, sector - alpha)  # angle from the nearest outer point
        rho = np.sqrt(dx * dx + dy * dy)
        px, py = rho * np.cos(beta), rho * np.sin(beta)
        qx, qy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        # inside iff on the origin's side of the edge from (outer, 0) to (qx, qy)
        return (qx - outer) * py - qy * (px - outer) >= 0
    raise ValueError(f"unknown shape {shape!r}")


def _paint(canvas: np.ndarray, shape: str, colour: tuple[int, int, int], x: np.ndarray,
           y: np.ndarray, size: np.ndarray) -> None:
    """Paint one object per frame into canvas [F, H, W, 3] (in place); x, y, size: [F]."""
    if len(x) == 0:
        return
    left, right, up, down = SHAPE_EXTENTS[shape]
    k = int(math.ceil(float(size.max()) * max(left + right, up + down))) + 3
    k = min(k, CANVAS)
    # crop origin: the crop is centred on the object's bounding box
    bx = x + (right - left) * size / 2
    by = y + (down - up) * size / 2
    ox = np.clip(np.floor(bx - k / 2).astype(np.int64), 0, CANVAS - k)
    oy = np.clip(np.floor(by - k / 2).astype(np.int64), 0, CANVAS - k)
    grid = np.arange(k, dtype=np.float64) + 0.5
    dx = (ox[:, None, None] + grid[None, None, :]) - x[:, None, None]  # [F, 1, k]
    dy = (oy[:, None, None] + grid[None, :, None]) - y[:, None, None]  # [F, k, 1]
    dx, dy = np.broadcast_arrays(dx, dy)
    mask = shape_mask(shape, dx, dy, size[:, None, None])
    f, i, j = np.nonzero(mask)
    canvas[f, oy[f] + i, ox[f] + j] = colour


def render_track(track: Track) -> np.ndarray:
    """Render a Track; returns uint8 [F, CANVAS, CANVAS, 3]."""
    n = len(track)
    frames = np.empty((n, CANVAS, CANVAS, 3), dtype=np.uint8)
    # group consecutive frames with the same look (segments)
    start = 0
    while start < n:
        spec = track.specs[start]
        end = start + 1
        while end < n and track.specs[end] is spec:
            end += 1
        sl = slice(start, end)
        frames[sl] = PALETTE[spec.background]
        _paint(frames[sl], spec.shape, PALETTE[spec.colour], track.x[sl], track.y[sl],
               track.size[sl])
        start = end
    return frames


def render_clip(spec: ClipSpec, num_frames: int, start_frame: int = 0) -> np.ndarray:
    """Render frames start_frame .. start_frame + num_frames - 1 of a clip.

    Returns uint8 [num_frames, CANVAS, CANVAS, 3]; deterministic in (spec, frames).
    """
    track, _ = simulate(spec, num_frames, start_frame)
    return render_track(track)


def render_segments(segments: Sequence[tuple[int, ClipSpec]]) -> np.ndarray:
    """Render a prompt timeline [(num_frames, spec), ...] as one continuous clip.

    Position (and, when the motion is unchanged, heading and pulse phase) carries
    across segment boundaries; see simulate. Returns uint8 [sum(num_frames), H, W, 3].
    """
    return render_track(simulate_segments(segments))


def render_batch(specs: Sequence[ClipSpec], num_frames: int, start_frame: int = 0) -> np.ndarray:
    """Render several clips of equal length: uint8 [N, num_frames, CANVAS, CANVAS, 3]."""
    out = np.empty((len(specs), num_frames, CANVAS, CANVAS, 3), dtype=np.uint8)
    for i, spec in enumerate(specs):
        track, _ = simulate(spec, num_frames, start_frame)
        out[i] = render_track(track)
    return out


__all__ = [
    "MotionState", "Track", "render_batch", "render_clip", "render_segments", "render_track",
    "shape_mask", "simulate", "simulate_segments",
]
