"""A detector for toy-world frames that uses no learned model (numpy only).

Per frame (detect_frames):
  * background = the palette entry most border pixels are nearest to (a mode over the
    palette-quantised border); its RGB estimate is the mean of those border pixels;
  * foreground = pixels farther than `fg_threshold` (RGB L2) from that estimate (on a
    3x3 box-filtered frame when the border's noise sigma exceeds `denoise_sigma`);
    8-connected components via run-length labelling; components smaller than
    `min_blob_area` are specks and ignored;
  * presence = exactly one remaining component (the "blob"); colour / shape / position
    are measured on the largest one whenever there is at least one;
  * colour = palette entry nearest to the per-channel median of the blob's pixels
    farthest from the background (the upper half: blurred rims are left out);
  * shape from fill ratio (area / bounding box), solidity (area / convex-hull area) and
    corner occupancy (how full the bounding box's corners are);
  * centroid, size (bounding-box extent) and edge sharpness (see FrameDetections).

Per track (unfold_track / classify_window): the centroid track is *unfolded* at bounces,
so an object that reaches a border and comes back is still "moving right" in spirit.

Bounce rule. Each axis keeps an expected heading h (+1 / -1). At a frame where the
object's bounding box is within `border_margin + local speed` px of the border that h
points at, and its last clear move (> reversal_tolerance px) went towards that border
while its next clear move goes away from it, the object has bounced: h flips. The two
intervals touching a frame at that border are left out of speeds and directions
(valid = False) whether or not the bounce is confirmed (a bounce step is partial), unless
the object is not moving along that axis. Unfolded velocity of an interval is
u = v * h * n, where v is the observed velocity and n the nominal heading of the prompt
(the direction the caption names), so a correct object keeps u along n the whole time,
before and after any number of bounces. With a prompt, h starts from the prompt (or from
the previous segment's heading when a prompt switch keeps the motion); without one
(prior-free), h and n are the sign of the first clear displacement on that axis.
Consequence (inherent to elastic bounces): after the first bounce, "moving left" and
"moving right" describe the same physics, so a clip that starts the wrong way is judged
wrong only until it reaches a border; a reversal away from any border is always wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from .world import (
    AXIS_MOTIONS,
    COLOURS,
    DIAGONAL,
    PALETTE_RGB,
    SHAPES,
)


@dataclass(frozen=True)
class DetectorConfig:
    """Tuning constants of the detector (not part of the world spec)."""

    fg_threshold: float = 40.0  # RGB L2 distance from the background that counts as object
    # second pass: a pixel is object only if it is also farther from the background than this
    # fraction of the object-background contrast (0.5: the midpoint between the two colours), so
    # rims blended by blur, compression or a lossy decoder do not inflate the silhouette
    adaptive_threshold: float = 0.5
    denoise_sigma: float = 5.0  # frames whose border noise sigma exceeds this are box-filtered
    min_blob_area: int = 20  # px; smaller components are specks
    max_blob_fraction: float = 0.5  # components above this fraction of the frame are not objects
    # shape rules on (fill, solidity, corner); see classify_shape
    star_max_solidity: float = 0.81
    square_min_fill: float = 0.95
    square_min_corner: float = 0.46
    square_min_fill_with_corners: float = 0.72
    circle_min_fill: float = 0.67
    corner_fraction: float = 0.2  # corner regions are this fraction of the bbox side
    hull_directions: int = 64  # support directions of the convex-hull approximation
    # motion
    still_speed: float = 0.35  # px/frame: below this the object is not moving
    first_heading_speed: float = 0.25  # px/frame: a displacement clear enough to set a heading
    pulse_rel_range: float = 0.12  # (max - min) / median of sqrt(area) above which it pulses
    diagonal_ratio: float = 0.5  # min(|ux|, |uy|) / max(...) above which motion is diagonal
    off_axis_ratio: float = 0.5  # per-frame check: |u_off| <= this * u_axis
    border_margin: float = 1.5  # px (+ local speed) from a border that counts as a contact
    reversal_tolerance: float = 0.25  # px: smaller position changes are a plateau, not a move
    window: int = 16  # motion windows (frames); pulsing needs >= half a period (16)
    stride: int = 8
    min_window: int = 4  # shortest segment that gets a motion window
    local_radius: int = 2  # per-frame motion uses intervals within this many frames
    chunk: int = 64  # frames per vectorised detection chunk


DEFAULT_CONFIG = DetectorConfig()
_PALETTE_F = PALETTE_RGB.astype(np.float32)  # [P, 3]
_PALETTE_NORM2 = (_PALETTE_F**2).sum(1)  # [P]


@dataclass(frozen=True)
class FrameDetections:
    """Per-frame detector output for a clip of F frames (H x W canvas).

    Palette indices follow world.COLOURS, shape indices world.SHAPES; -1 / NaN where a
    frame has no blob (n_blobs == 0).
      background: [F] int palette index. background_rgb: [F, 3] float mean of the border
        pixels assigned to it. background_mean_rgb: [F, 3] float mean of all non-object
        pixels (for the background colour error).
      n_blobs: [F] int components >= min_blob_area. present: [F] bool (n_blobs == 1).
      colour: [F] int. object_rgb: [F, 3] float median of the largest blob's core
        (its pixels at or above the median distance from the background).
      shape: [F] int. fill, solidity, corner: [F] float shape features.
      cx, cy: [F] float centroid (px, pixel centres at +0.5). area: [F] int pixels.
      bbox: [F, 4] int (x_min, y_min, x_max, y_max), inclusive pixel indices.
      size: [F] float max(bbox width, height).
      sharpness: [F] float mean over the blob's boundary pixels of the largest RGB step to
        a 4-neighbour, divided by |object - background|: 1.0 for a hard edge, lower
        when blurred.
    """

    height: int
    width: int
    background: np.ndarray
    background_rgb: np.ndarray
    background_mean_rgb: np.ndarray
    n_blobs: np.ndarray
    present: np.ndarray
    colour: np.ndarray
    object_rgb: np.ndarray
    shape: np.ndarray
    fill: np.ndarray
    solidity: np.ndarray
    corner: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    size: np.ndarray
    sharpness: np.ndarray

    def __len__(self) -> int:
        return len(self.present)

    @property
    def has_object(self) -> np.ndarray:
        """[F] bool: at least one blob (position / colour / shape are defined)."""
        return self.n_blobs > 0

    @classmethod
    def concatenate(cls, parts: Sequence["FrameDetections"]) -> "FrameDetections":
        values = {}
        for f in fields(cls):
            if f.name in ("height", "width"):
                values[f.name] = getattr(parts[0], f.name)
            else:
                values[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        return cls(**values)


# --------------------------------------------------------------------------- components
def _runs(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of a stack of masks fg [R, W] (rows of all frames stacked).

    Returns (row [N], start [N], end [N]) sorted by (row, start); columns [start, end).
    """
    r, w = fg.shape
    padded = np.zeros((r, w + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    step = np.diff(padded, axis=1)  # [R, W + 1]: +1 at a run start, -1 after its end
    row, col = np.nonzero(step)  # row-major, so starts and ends alternate
    return row[0::2], col[0::2], col[1::2]


def _label_runs(row: np.ndarray, start: np.ndarray, end: np.ndarray, width: int,
                height: int) -> np.ndarray:
    """8-connected component label (root run index) of each run; rows of different
    frames (row // height) never connect."""
    n = len(row)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    stride = width + 2
    key_start = row * stride + start
    key_end = row * stride + end
    prev = (row - 1) * stride
    # runs j in the previous row with start_j <= end_i and end_j >= start_i
    lo = np.searchsorted(key_end, prev + start, side="left")
    hi = np.searchsorted(key_start, prev + end, side="right")
    count = np.where(row % height == 0, 0, np.maximum(hi - lo, 0))
    total = int(count.sum())
    parent = np.arange(n)
    if total == 0:
        return parent
    a = np.repeat(np.arange(n), count)
    b = np.repeat(lo, count) + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            return parent
        pa, pb = pa[differ], pb[differ]
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _hull_areas(frame: np.ndarray, px: np.ndarray, py: np.ndarray, f_n: int,
                directions: int) -> np.ndarray:
    """Convex-hull area per frame of points (px, py) [Q] grouped by frame [Q] (sorted).

    Vectorised: the hull is approximated by the circumscribed polygon whose edges are the
    support lines in `directions` evenly spaced directions (over-estimates a disc's area
    by K tan(pi / K) / pi - 1, 0.08% for K = 64). Returns [f_n] (NaN for frames without
    points).
    """
    theta = 2 * np.pi * np.arange(directions) / directions
    cos, sin = np.cos(theta), np.sin(theta)
    out = np.full(f_n, np.nan)
    if len(frame) == 0:
        return out
    proj = px[:, None] * cos + py[:, None] * sin  # [Q, K]
    starts = np.flatnonzero(np.r_[True, np.diff(frame) != 0])
    support = np.maximum.reduceat(proj, starts, axis=0)  # [G, K]
    s_next = np.roll(support, -1, axis=1)
    c_next, sn_next = np.roll(cos, -1), np.roll(sin, -1)
    det = np.sin(2 * np.pi / directions)
    vx = (support * sn_next - s_next * sin) / det  # vertex between support lines k, k+1
    vy = (s_next * cos - support * c_next) / det
    area = 0.5 * np.abs((vx * np.roll(vy, -1, axis=1) - np.roll(vx, -1, axis=1) * vy).sum(1))
    out[frame[starts]] = area
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean filter of a [N, H, W] float array (edge-replicated)."""
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def classify_shape(fill: np.ndarray, solidity: np.ndarray, corner: np.ndarray,
                   config: DetectorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Shape index per blob from its features ([N] each): star if not convex; else
    square if the bbox (and its corners) are full, circle if fill ~ pi/4, else triangle."""
    shape = np.full(fill.shape, SHAPES.index("triangle"), dtype=np.int64)
    shape[fill >= config.circle_min_fill] = SHAPES.index("circle")
    square = (fill >= config.square_min_fill) | (
        (fill >= config.square_min_fill_with_corners) & (corner >= config.square_min_corner))
    shape[square] = SHAPES.index("square")
    shape[solidity < config.star_max_solidity] = SHAPES.index("star")
    shape[~np.isfinite(fill)] = -1
    return shape


def nearest_palette(rgb: np.ndarray) -> np.ndarray:
    """Palette index nearest (RGB L2) to each colour of rgb [..., 3]."""
    # argmin |p - c|^2 = argmin (|c|^2 - 2 p.c): one matrix product
    score = _PALETTE_NORM2 - 2.0 * (np.asarray(rgb, dtype=np.float32) @ _PALETTE_F.T)
    return score.argmin(-1)


def _background(x: np.ndarray, config: DetectorConfig
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mode of the palette-quantised border of x uint8 [F, H, W, 3].

    Returns (palette index [F], RGB estimate [F, 3] = mean of the border pixels assigned
    to it, noisy [F] bool: robust noise sigma of those pixels above denoise_sigma).
    """
    f_n = len(x)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    border = border.astype(np.float32)  # [F, B, 3]
    nearest = nearest_palette(border)  # [F, B]
    counts = np.bincount((np.arange(f_n)[:, None] * len(COLOURS) + nearest).ravel(),
                         minlength=f_n * len(COLOURS)).reshape(f_n, len(COLOURS))
    bg_idx = counts.argmax(1)
    sel = nearest == bg_idx[:, None]
    bg_rgb = (border * sel[..., None]).sum(1) / sel.sum(1)[:, None]
    dev = np.where(sel[..., None], np.abs(border - bg_rgb[:, None, :]), np.nan)
    noise = 1.4826 * np.nanmedian(dev, axis=1).max(1)  # MAD -> sigma, worst channel
    return bg_idx, bg_rgb, noise > config.denoise_sigma


def _bg_distance2(x: np.ndarray, bg_rgb: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """Squared RGB distance [F, H, W] float32 of every pixel from its frame's background."""
    f_n, h, w, _ = x.shape
    dist2 = np.zeros((f_n, h, w), dtype=np.float32)
    for c in range(3):  # channel loop: avoids slow reductions over a length-3 axis
        diff = x[..., c].astype(np.float32)
        if noisy.any():  # 3x3 box filter on noisy frames before thresholding
            diff[noisy] = _box3(diff[noisy])
        diff -= bg_rgb[:, c, None, None].astype(np.float32)
        dist2 += diff * diff
    return dist2


def _foreground(x: np.ndarray, dist2: np.ndarray, threshold2: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose squared background distance exceeds ``threshold2`` (scalar or per frame
    [F]). Returns (fg [F, H, W] bool, mean RGB of the other pixels [F, 3])."""
    f_n, h, w, _ = x.shape
    fg = dist2 > np.broadcast_to(np.asarray(threshold2, dtype=np.float32), (f_n,))[:, None, None]
    fg_f, fg_y, fg_x = np.nonzero(fg)
    fg_sum = np.stack([np.bincount(fg_f, weights=x[fg_f, fg_y, fg_x, c], minlength=f_n)
                       for c in range(3)], axis=1)
    all_sum = np.stack([x[..., c].sum((1, 2), dtype=np.int64) for c in range(3)], axis=1)
    bg_count = np.maximum(h * w - np.bincount(fg_f, minlength=f_n), 1)
    return fg, (all_sum - fg_sum) / bg_count[:, None]


def _blob_pixels(blobs: "_Blobs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chosen blobs' pixels as (frame, y, x) index arrays, grouped by frame."""
    lengths = blobs.end - blobs.start
    run_of_px = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return blobs.frame[run_of_px], blobs.y[run_of_px], blobs.start[run_of_px] + offset


@dataclass(frozen=True)
class _Blobs:
    """The largest blob of each frame as runs (row within the frame, [start, end))."""

    n_blobs: np.ndarray  # [F] components >= min_blob_area
    has: np.ndarray  # [F] bool, n_blobs > 0
    frame: np.ndarray  # [R] frame of each run of the chosen blobs (sorted)
    y: np.ndarray  # [R]
    start: np.ndarray  # [R]
    end: np.ndarray  # [R]


def _largest_blobs(fg: np.ndarray, config: DetectorConfig) -> _Blobs:
    f_n, h, w = fg.shape
    row, start, end = _runs(fg.reshape(f_n * h, w))
    root = _label_runs(row, start, end, w, h)
    comp_ids, comp = np.unique(root, return_inverse=True)
    area = np.bincount(comp, weights=(end - start).astype(np.float64), minlength=len(comp_ids))
    comp_frame = row[comp_ids] // h
    keep = (area >= config.min_blob_area) & (area <= config.max_blob_fraction * h * w)
    n_blobs = np.bincount(comp_frame[keep], minlength=f_n)
    order = np.lexsort((area, comp_frame))  # by frame, then area
    order = order[keep[order]]
    largest = np.full(f_n, -1, dtype=np.int64)
    largest[comp_frame[order]] = order  # later (larger) entries overwrite earlier ones
    has = largest >= 0
    chosen = np.zeros(len(comp_ids), dtype=bool)
    chosen[largest[has]] = True
    rsel = chosen[comp]
    return _Blobs(n_blobs, has, row[rsel] // h, row[rsel] % h, start[rsel], end[rsel])


def _blob_colours(x: np.ndarray, dist2: np.ndarray, blobs: _Blobs, px: tuple) -> np.ndarray:
    """Per-channel median [F, 3] of each blob's pixels that differ most from the
    background (the upper half by distance): rims blended with the background by blur or
    compression are left out. NaN rows for frames without a blob."""
    px_f, px_y, px_x = px
    rgb = x[px_f, px_y, px_x]
    d2 = dist2[px_f, px_y, px_x]
    bounds = np.searchsorted(px_f, np.arange(len(x) + 1))
    out = np.full((len(x), 3), np.nan)
    for i in np.nonzero(blobs.has)[0]:
        sl = slice(bounds[i], bounds[i + 1])
        out[i] = np.median(rgb[sl][d2[sl] >= np.median(d2[sl])], axis=0)
    return out


def _edge_sharpness(x: np.ndarray, fg: np.ndarray, px: tuple, obj_rgb: np.ndarray,
                    bg_rgb: np.ndarray) -> np.ndarray:
    """[F] mean over boundary pixels (a 4-neighbour inside the frame is background) of
    the largest RGB step to a 4-neighbour, over |object - background|."""
    f_n, h, w = fg.shape
    px_f, px_y, px_x = px
    pix = x[px_f, px_y, px_x].astype(np.float32)
    boundary = np.zeros(len(px_f), dtype=bool)
    edge = np.zeros(len(px_f), dtype=np.float32)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = px_y + dy, px_x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ny, nx = np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)
        boundary |= inside & ~fg[px_f, ny, nx]
        step = np.sqrt(((x[px_f, ny, nx].astype(np.float32) - pix) ** 2).sum(-1))
        edge = np.maximum(edge, np.where(inside, step, 0.0))
    edge_sum = np.bincount(px_f[boundary], weights=edge[boundary], minlength=f_n)
    edge_n = np.bincount(px_f[boundary], minlength=f_n)
    contrast = np.sqrt(((np.nan_to_num(obj_rgb) - bg_rgb) ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(edge_n > 0, edge_sum / np.maximum(edge_n, 1) / np.maximum(contrast, 1e-6),
                        np.nan)


def _solidity(blobs: _Blobs, blob_area: np.ndarray, f_n: int, config: DetectorConfig
              ) -> np.ndarray:
    """[F] blob area / convex-hull area of its pixel squares (NaN without a blob)."""
    if len(blobs.frame) == 0:
        return np.full(f_n, np.nan)
    row_key = blobs.frame * (int(blobs.y.max()) + 1) + blobs.y
    starts = np.flatnonzero(np.r_[True, np.diff(row_key) != 0])  # one entry per pixel row
    top = blobs.y[starts].astype(np.float64)
    left = np.minimum.reduceat(blobs.start, starts).astype(np.float64)
    right = np.maximum.reduceat(blobs.end, starts).astype(np.float64)
    hull = _hull_areas(np.repeat(blobs.frame[starts], 4),
                       np.stack([left, left, right, right], axis=1).ravel(),
                       np.stack([top, top + 1, top, top + 1], axis=1).ravel(),
                       f_n, config.hull_directions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(blobs.has, blob_area / hull, np.nan)


def _detect_chunk(x: np.ndarray, config: DetectorConfig) -> FrameDetections:
    f_n, h, w, _ = x.shape
    bg_idx, bg_rgb, noisy = _background(x, config)
    dist2 = _bg_distance2(x, bg_rgb, noisy)
    fg, bg_mean = _foreground(x, dist2, config.fg_threshold**2)
    blobs = _largest_blobs(fg, config)
    if config.adaptive_threshold > 0 and blobs.has.any():
        contrast2 = ((np.nan_to_num(_blob_colours(x, dist2, blobs, _blob_pixels(blobs))) - bg_rgb) ** 2).sum(-1)
        threshold2 = np.maximum(config.fg_threshold**2, config.adaptive_threshold**2 * np.where(blobs.has, contrast2, 0.0))
        fg, bg_mean = _foreground(x, dist2, threshold2)
        blobs = _largest_blobs(fg, config)
    has = blobs.has
    # ---- geometry from the runs
    c_len = (blobs.end - blobs.start).astype(np.float64)
    blob_area = np.bincount(blobs.frame, weights=c_len, minlength=f_n)
    sum_x = np.bincount(blobs.frame, weights=c_len * (blobs.start + blobs.end) / 2, minlength=f_n)
    sum_y = np.bincount(blobs.frame, weights=c_len * (blobs.y + 0.5), minlength=f_n)
    x_min = np.full(f_n, w, dtype=np.int64)
    y_min = np.full(f_n, h, dtype=np.int64)
    x_max = np.full(f_n, -1, dtype=np.int64)
    y_max = np.full(f_n, -1, dtype=np.int64)
    np.minimum.at(x_min, blobs.frame, blobs.start)
    np.maximum.at(x_max, blobs.frame, blobs.end - 1)
    np.minimum.at(y_min, blobs.frame, blobs.y)
    np.maximum.at(y_max, blobs.frame, blobs.y)
    bw = (x_max - x_min + 1).astype(np.float64)
    bh = (y_max - y_min + 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.where(has, sum_x / blob_area, np.nan)
        cy = np.where(has, sum_y / blob_area, np.nan)
        fill = np.where(has, blob_area / (bw * bh), np.nan)
    # ---- blob pixels (runs expanded), grouped by frame
    px = _blob_pixels(blobs)
    px_f, px_y, px_x = px
    # corner occupancy of the bounding box
    cw = np.maximum(1, np.round(config.corner_fraction * bw)).astype(np.int64)
    ch = np.maximum(1, np.round(config.corner_fraction * bh)).astype(np.int64)
    in_cx = (px_x < x_min[px_f] + cw[px_f]) | (px_x > x_max[px_f] - cw[px_f])
    in_cy = (px_y < y_min[px_f] + ch[px_f]) | (px_y > y_max[px_f] - ch[px_f])
    corner_px = np.bincount(px_f, weights=(in_cx & in_cy), minlength=f_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        corner = np.where(has, corner_px / (4 * cw * ch), np.nan)
    obj_rgb = _blob_colours(x, dist2, blobs, px)
    colour = np.where(has, nearest_palette(np.nan_to_num(obj_rgb)), -1)
    sharpness = np.where(has, _edge_sharpness(x, fg, px, obj_rgb, bg_rgb), np.nan)
    solidity = _solidity(blobs, blob_area, f_n, config)
    shape = classify_shape(fill, np.nan_to_num(solidity, nan=1.0), corner, config)
    bbox = np.stack([x_min, y_min, x_max, y_max], axis=1)
    bbox[~has] = -1
    return FrameDetections(
        height=h, width=w, background=bg_idx, background_rgb=bg_rgb.astype(np.float64),
        background_mean_rgb=bg_mean.astype(np.float64), n_blobs=blobs.n_blobs,
        present=blobs.n_blobs == 1, colour=colour, object_rgb=obj_rgb,
        shape=np.where(has, shape, -1), fill=fill, solidity=solidity, corner=corner, cx=cx,
        cy=cy, area=blob_area.astype(np.int64), bbox=bbox,
        size=np.where(has, np.maximum(bw, bh), np.nan), sharpness=sharpness,
    )


def detect_frames(frames: np.ndarray, config: DetectorConfig = DEFAULT_CONFIG) -> FrameDetections:
    """Run the per-frame detector on frames uint8 [F, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got {frames.shape}")
    if len(frames) == 0:
        raise ValueError("no frames")
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    parts = [_detect_chunk(frames[i : i + config.chunk], config)
             for i in range(0, len(frames), config.chunk)]
    return parts[0] if len(parts) == 1 else FrameDetections.concatenate(parts)


# --------------------------------------------------------------------------- motion
@dataclass(frozen=True)
class UnfoldedTrack:
    """Bounce-unfolded velocities between consecutive frames that have an object.

    t0, t1: [N] int frame indices of each interval (t1 > t0; gaps skip blob-less frames).
    v: [N, 2] observed velocity (px/frame, x right, y down). u: [N, 2] unfolded velocity
    in the nominal frame (see the module docstring). valid: [N] bool, False for the two
    intervals touching a bounce. heading_end: (hx, hy) expected heading after the last
    frame (to carry into a following segment with the same motion).
    """

    t0: np.ndarray
    t1: np.ndarray
    v: np.ndarray
    u: np.ndarray
    valid: np.ndarray
    heading_end: tuple[int, int]


def _unfold_axis(p: np.ndarray, dt: np.ndarray, gap_lo: np.ndarray, gap_hi: np.ndarray,
                 h0: int | None, nominal: int | None, config: DetectorConfig
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis: positions p [K], dt [K-1]; gaps [K] to the low / high border."""
    k_n = len(p)
    v = np.diff(p) / dt
    if h0 is None:
        clear = np.flatnonzero(np.abs(v) >= config.first_heading_speed)
        h0 = int(np.sign(v[clear[0]])) if len(clear) else 1
    h = h0
    n = nominal if nominal is not None else h0
    u = np.zeros(k_n - 1)
    valid = np.ones(k_n - 1, dtype=bool)
    absv = np.abs(v)
    for k in range(k_n):
        local = max(absv[k - 1] if k > 0 else 0.0, absv[k] if k < k_n - 1 else 0.0)
        gap = gap_hi[k] if h > 0 else gap_lo[k]
        at_border = gap <= config.border_margin + local
        if at_border and local >= config.still_speed:
            # steps into / out of a border frame may be partial bounces: not measured
            if k > 0:
                valid[k - 1] = False
            if k < k_n - 1:
                valid[k] = False
        if at_border:
            # a bounce: the last clear move came towards the border, the next one goes
            # away from it (plateaus of pixel-snapped or stuck positions are skipped)
            moved = np.abs(p - p[k]) > config.reversal_tolerance
            earlier, later = np.flatnonzero(moved[:k]), np.flatnonzero(moved[k + 1:])
            before = len(earlier) == 0 or h * (p[k] - p[earlier[-1]]) > 0
            after = len(later) > 0 and h * (p[k + 1 + later[0]] - p[k]) < 0
            if before and after:
                h = -h
                if k > 0:
                    valid[k - 1] = False
                if k < k_n - 1:
                    valid[k] = False
        if k < k_n - 1:
            u[k] = v[k] * h * n
    return u, valid, h


def unfold_track(det: FrameDetections, start: int = 0, stop: int | None = None,
                 heading: tuple[int | None, int | None] = (None, None),
                 nominal: tuple[int | None, int | None] = (None, None),
                 config: DetectorConfig = DEFAULT_CONFIG) -> UnfoldedTrack:
    """Unfold the centroid track of frames [start, stop) at bounces.

    heading: expected (hx, hy) at `start` (None: prior-free, from the first clear
    displacement). nominal: the prompt's heading signs (None: same as the start heading).
    """
    stop = len(det) if stop is None else stop
    idx = np.arange(start, stop)
    idx = idx[det.has_object[idx]]
    if len(idx) < 2:
        empty = np.zeros(0, dtype=np.int64)
        hx, hy = heading
        return UnfoldedTrack(empty, empty, np.zeros((0, 2)), np.zeros((0, 2)),
                             np.zeros(0, dtype=bool), (hx or 1, hy or 1))
    dt = np.diff(idx).astype(np.float64)
    bbox = det.bbox[idx]
    ux, vx_ok, hx = _unfold_axis(det.cx[idx], dt, bbox[:, 0], det.width - 1 - bbox[:, 2],
                                 heading[0], nominal[0], config)
    uy, vy_ok, hy = _unfold_axis(det.cy[idx], dt, bbox[:, 1], det.height - 1 - bbox[:, 3],
                                 heading[1], nominal[1], config)
    v = np.stack([np.diff(det.cx[idx]), np.diff(det.cy[idx])], axis=1) / dt[:, None]
    return UnfoldedTrack(idx[:-1], idx[1:], v, np.stack([ux, uy], axis=1), vx_ok & vy_ok,
                         (hx, hy))


@dataclass(frozen=True)
class WindowMotion:
    """Motion of one window of frames.

    motion: a world.MOTIONS name, or None when the window has no usable interval.
    speed: |velocity| (px/frame). velocity: (ux, uy) least-squares slope of the unfolded
    track. size_range: (max - min) / median of sqrt(area) over the window.
    """

    motion: str | None
    speed: float
    velocity: tuple[float, float]
    size_range: float


def _mean_velocity(unf: UnfoldedTrack, sel: np.ndarray) -> np.ndarray | None:
    sel = sel & unf.valid
    if not sel.any():
        return None
    dt = (unf.t1 - unf.t0)[sel].astype(np.float64)
    return (unf.u[sel] * dt[:, None]).sum(0) / dt.sum()


def _fit_velocity(unf: UnfoldedTrack, sel: np.ndarray) -> np.ndarray | None:
    """Least-squares velocity [2] of the unfolded positions over the selected intervals.

    Each run of consecutive valid intervals is integrated into an unfolded position track
    with its own offset; the slope is shared (pooled within-run regression). Less
    sensitive to pixel-snapped positions than the mean velocity (endpoints only).
    """
    idx = np.flatnonzero(sel & unf.valid)
    if len(idx) == 0:
        return None
    num, den = np.zeros(2), 0.0
    for run in np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1):
        t = np.concatenate([unf.t0[run[:1]], unf.t1[run]]).astype(np.float64)
        steps = unf.u[run] * (unf.t1[run] - unf.t0[run])[:, None]
        p = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        tc = t - t.mean()
        num += tc @ (p - p.mean(0))
        den += float(tc @ tc)
    return num / den


def _direction(u: np.ndarray, config: DetectorConfig) -> str:
    ax, ay = abs(u[0]), abs(u[1])
    if min(ax, ay) >= config.diagonal_ratio * max(ax, ay):
        return DIAGONAL
    if ax > ay:
        return "moving right" if u[0] > 0 else "moving left"
    return "moving down" if u[1] > 0 else "moving up"


def size_range(det: FrameDetections, start: int, stop: int) -> float:
    """(max - min) / median of sqrt(blob area) over frames [start, stop) (3-frame median
    filtered when long enough); NaN without blobs."""
    s = np.sqrt(det.area[start:stop][det.has_object[start:stop]].astype(np.float64))
    if len(s) == 0:
        return math.nan
    if len(s) >= 5:  # 3-tap median, edges replicated (keeps the end values)
        p = np.concatenate([s[:1], s, s[-1:]])
        s = np.median(np.stack([p[:-2], p[1:-1], p[2:]]), axis=0)
    return float((s.max() - s.min()) / max(np.median(s), 1e-6))


def classify_window(unf: UnfoldedTrack, det: FrameDetections, start: int, stop: int,
                    config: DetectorConfig = DEFAULT_CONFIG) -> WindowMotion:
    """Motion class of frames [start, stop): intervals ending in [start, stop) are used
    (so a window starting at a prompt switch includes the step into its first frame)."""
    mean = _fit_velocity(unf, (unf.t1 >= start) & (unf.t1 < stop))
    rng = size_range(det, start, stop)
    if mean is None:
        return WindowMotion(None, math.nan, (math.nan, math.nan), rng)
    speed = float(np.hypot(*mean))
    if speed < config.still_speed:
        motion = "pulsing" if rng >= config.pulse_rel_range else "still"
    else:
        motion = _direction(mean, config)
    return WindowMotion(motion, speed, (float(mean[0]), float(mean[1])), rng)


def frame_motion_ok(unf: UnfoldedTrack, frames: np.ndarray, motion: str,
                    config: DetectorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Per-frame motion check for `motion` (a prompt's) at each frame index in frames [T].

    Uses the mean unfolded velocity of the valid intervals ending within
    [t - local_radius + 1, t + local_radius]. Pulsing is judged as "not moving" here
    (its size oscillation needs a window). Frames without usable intervals pass.
    """
    out = np.ones(len(frames), dtype=bool)
    r = config.local_radius
    for i, t in enumerate(frames):
        mean = _mean_velocity(unf, (unf.t1 > t - r) & (unf.t1 <= t + r))
        if mean is None:
            continue
        ux, uy = mean
        if motion in AXIS_MOTIONS:
            nx, ny = AXIS_MOTIONS[motion]
            along, off = (ux * nx, uy) if nx else (uy * ny, ux)
            out[i] = along >= config.still_speed and abs(off) <= config.off_axis_ratio * along
        elif motion == DIAGONAL:
            out[i] = _direction(mean, config) == DIAGONAL and np.hypot(ux, uy) >= config.still_speed
        else:
            out[i] = np.hypot(ux, uy) < config.still_speed
    return out


def window_bounds(start: int, stop: int, config: DetectorConfig = DEFAULT_CONFIG
                  ) -> list[tuple[int, int]]:
    """Motion windows covering frames [start, stop): `window` frames every `stride`, the
    last one aligned to stop; one window for a short segment (>= min_window frames)."""
    n = stop - start
    if n < config.min_window:
        return []
    if n <= config.window:
        return [(start, stop)]
    starts = list(range(start, stop - config.window + 1, config.stride))
    if starts[-1] + config.window < stop:
        starts.append(stop - config.window)
    return [(a, a + config.window) for a in starts]


# --------------------------------------------------------------------------- clip
@dataclass(frozen=True)
class ClipDetection:
    """Prior-free summary of a clip: majority attributes and whole-clip motion.

    background / colour / shape: majority names over frames (None if no blob ever).
    motion: WindowMotion of the whole clip; speed in px/frame. presence: fraction of
    frames with exactly one blob. frames: the per-frame detections.
    """

    background: str
    colour: str | None
    shape: str | None
    motion: WindowMotion
    presence: float
    frames: FrameDetections


def _majority(values: np.ndarray, names: Sequence[str]) -> str | None:
    values = values[values >= 0]
    if len(values) == 0:
        return None
    return names[int(np.bincount(values, minlength=len(names)).argmax())]


def detect_clip(frames: np.ndarray, config: DetectorConfig = DEFAULT_CONFIG) -> ClipDetection:
    """Detect everything in a clip uint8 [F, H, W, 3] without knowing its prompt.

    The heading on each axis is taken from the first clear displacement, so a clip that
    starts in the middle of a bounce can read as the opposite direction (evaluate_clip
    passes the prompt's heading instead).
    """
    det = detect_frames(frames, config)
    unf = unfold_track(det, config=config)
    return ClipDetection(
        background=COLOURS[int(np.bincount(det.background, minlength=len(COLOURS)).argmax())],
        colour=_majority(det.colour, COLOURS), shape=_majority(det.shape, SHAPES),
        motion=classify_window(unf, det, 0, len(det), config),
        presence=float(det.present.mean()), frames=det,
    )


__all__ = [
    "ClipDetection", "DEFAULT_CONFIG", "DetectorConfig", "FrameDetections", "UnfoldedTrack",
    "WindowMotion", "classify_shape", "classify_window", "detect_clip", "detect_frames",
    "frame_motion_ok", "nearest_palette", "size_range", "unfold_track", "window_bounds",
]
