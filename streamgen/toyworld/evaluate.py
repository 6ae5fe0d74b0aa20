"""Prompt-adherence evaluation of (generated) toy-world clips against their prompts.

evaluate_clip(frames, target) runs the detector and compares it with a prompt or a
prompt timeline:
  * colour / shape / background accuracy: fraction of frames whose detection matches
    (colour and shape are read from the largest blob; a frame without any blob counts
    as wrong);
  * presence: fraction of frames with exactly one blob;
  * motion: fraction of motion windows (16 frames, stride 8, within one prompt segment)
    whose bounce-unfolded motion class equals the prompt's (see detector's bounce rule;
    the expected heading starts from the prompt and carries across a switch that keeps
    the motion, as the renderer does);
  * speed ratio: median over windows of moving prompts of measured px/frame / prompt px/frame;
  * background error: mean over frames of mean |mean background pixel - palette colour|
    (RGB, 0..255);
  * edge sharpness: mean of the detector's per-frame sharpness (1.0 = hard edge);
  * drift: the accuracies over the first DRIFT_FIRST_S seconds versus the last
    DRIFT_LAST_S seconds (or everything after the first part when shorter), for clips of
    at least DRIFT_MIN_S seconds;
  * switch response: for each prompt switch, frames from the switch until the detector
    reports the new attributes (presence, colour, shape, background, local motion) for
    SWITCH_HOLD_FRAMES consecutive frames; None if that never happens in the segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .captions import parse_caption
from .detector import (
    DEFAULT_CONFIG,
    DetectorConfig,
    FrameDetections,
    classify_window,
    detect_frames,
    frame_motion_ok,
    unfold_track,
    window_bounds,
)
from .world import (
    AXIS_MOTIONS,
    CANVAS,
    COLOURS,
    FPS,
    MOVING_MOTIONS,
    PALETTE_RGB,
    SHAPES,
    Attributes,
)

DRIFT_FIRST_S: float = 10.0
DRIFT_LAST_S: float = 60.0
DRIFT_MIN_S: float = 20.0
SWITCH_HOLD_FRAMES: int = 8

Target = Union[Attributes, Sequence[tuple[int, Attributes]]]


@dataclass(frozen=True)
class Accuracies:
    """Per-attribute accuracies in [0, 1] (NaN when nothing was scored).

    colour, shape, background, presence: over `frames` frames. motion: over `windows`
    motion windows.
    """

    colour: float
    shape: float
    background: float
    motion: float
    presence: float
    frames: int
    windows: int


@dataclass(frozen=True)
class SwitchResponse:
    """A prompt switch at frame `frame`; response_frames: frames until the new attributes
    hold for SWITCH_HOLD_FRAMES frames (None if never within the segment)."""

    frame: int
    target: Attributes
    response_frames: int | None


@dataclass(frozen=True)
class Drift:
    """Accuracies over the first and the last part of a long clip (seconds given)."""

    first: Accuracies
    last: Accuracies
    first_s: tuple[float, float]
    last_s: tuple[float, float]


@dataclass(frozen=True)
class WindowResult:
    """One motion window [start, stop) of a segment: detected vs prompted motion."""

    start: int
    stop: int
    target: str
    detected: str | None
    speed: float
    speed_ratio: float | None  # measured / prompt px/frame (moving prompts only)

    @property
    def correct(self) -> bool:
        return self.detected == self.target


@dataclass(frozen=True)
class ClipEvaluation:
    """Everything evaluate_clip measures for one clip of num_frames frames at fps."""

    num_frames: int
    fps: float
    accuracy: Accuracies
    speed_ratio: float | None
    background_error: float
    edge_sharpness: float
    drift: Drift | None
    switches: tuple[SwitchResponse, ...]
    windows: tuple[WindowResult, ...]
    detections: FrameDetections

    def row(self, **extra: Any) -> dict[str, Any]:
        """A flat dict for format_table (extra keys first)."""
        acc = self.accuracy
        out: dict[str, Any] = dict(extra)
        out.update(frames=self.num_frames, colour=acc.colour, shape=acc.shape,
                   background=acc.background, motion=acc.motion, presence=acc.presence,
                   speed_ratio=self.speed_ratio, bg_error=self.background_error,
                   sharpness=self.edge_sharpness)
        if self.drift is not None:
            for name in ("colour", "shape", "background", "motion", "presence"):
                out[f"drift_{name}"] = getattr(self.drift.last, name) - getattr(self.drift.first, name)
        if self.switches:
            resp = [s.response_frames for s in self.switches]
            done = [r for r in resp if r is not None]
            out["switch_resp"] = float(np.mean(done)) if done else None
            out["switch_missed"] = sum(r is None for r in resp)
        return out


def _timeline(target: Target | str, num_frames: int) -> list[tuple[int, Attributes]]:
    if isinstance(target, str):
        target = parse_caption(target)
    if isinstance(target, Attributes):
        return [(0, target.attributes)]
    items = sorted(((int(s), a if isinstance(a, Attributes) else parse_caption(str(a)))
                    for s, a in target), key=lambda p: p[0])
    if not items or items[0][0] != 0:
        raise ValueError("a timeline must start at frame 0")
    if len({s for s, _ in items}) != len(items):
        raise ValueError("two prompts start at the same frame")
    return [(s, a.attributes) for s, a in items if s < num_frames]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _accuracies(ok: Mapping[str, np.ndarray], windows: Sequence[WindowResult],
                lo: int, hi: int) -> Accuracies:
    sl = slice(lo, hi)
    win = [w.correct for w in windows if lo <= w.start and w.stop <= hi]
    return Accuracies(
        colour=_mean(ok["colour"][sl]), shape=_mean(ok["shape"][sl]),
        background=_mean(ok["background"][sl]), motion=_mean(np.array(win, dtype=float)),
        presence=_mean(ok["presence"][sl]), frames=len(ok["colour"][sl]), windows=len(win),
    )


def evaluate_clip(frames: np.ndarray, target: Target | str, fps: float = FPS,
                  config: DetectorConfig = DEFAULT_CONFIG) -> ClipEvaluation:
    """Evaluate frames uint8 [F, H, W, 3] against a prompt or a timeline.

    target: an Attributes / ClipSpec, a caption string, or a timeline
    [(start_frame, Attributes or caption), ...] starting at frame 0.
    """
    det = detect_frames(frames, config)
    n = len(det)
    timeline = _timeline(target, n)
    starts = [s for s, _ in timeline] + [n]
    # per-frame targets
    t_colour = np.empty(n, dtype=np.int64)
    t_shape = np.empty(n, dtype=np.int64)
    t_bg = np.empty(n, dtype=np.int64)
    for (s, a), e in zip(timeline, starts[1:]):
        t_colour[s:e] = COLOURS.index(a.colour)
        t_shape[s:e] = SHAPES.index(a.shape)
        t_bg[s:e] = COLOURS.index(a.background)
    ok = {
        "colour": det.colour == t_colour,
        "shape": det.shape == t_shape,
        "background": det.background == t_bg,
        "presence": det.present,
    }
    motion_ok = np.ones(n, dtype=bool)
    windows: list[WindowResult] = []
    heading: tuple[int, int] = (1, 1)
    prev_motion: str | None = None
    for (s, a), e in zip(timeline, starts[1:]):
        lo = max(s - 1, 0)  # the step into a segment's first frame belongs to it
        if a.motion in AXIS_MOTIONS:
            nx, ny = AXIS_MOTIONS[a.motion]
            nominal = (nx or None, ny or None)
            carried = heading if a.motion == prev_motion else (nx, ny)
            h0 = (carried[0] if nx else None, carried[1] if ny else None)
        else:
            nominal = (None, None)
            h0 = heading if a.motion == prev_motion else (None, None)
        unf = unfold_track(det, lo, e, h0, nominal, config)
        heading, prev_motion = unf.heading_end, a.motion
        motion_ok[s:e] = frame_motion_ok(unf, np.arange(s, e), a.motion, config)
        for ws, we in window_bounds(s, e, config):
            wm = classify_window(unf, det, ws, we, config)
            ratio = None
            if a.motion in MOVING_MOTIONS and not math.isnan(wm.speed):
                ratio = wm.speed / a.speed_px
            windows.append(WindowResult(ws, we, a.motion, wm.motion, wm.speed, ratio))
    accuracy = _accuracies(ok, windows, 0, n)
    ratios = [w.speed_ratio for w in windows if w.speed_ratio is not None]
    # drift
    drift = None
    if n >= DRIFT_MIN_S * fps:
        first_hi = int(round(DRIFT_FIRST_S * fps))
        last_lo = max(first_hi, n - int(round(DRIFT_LAST_S * fps)))
        drift = Drift(_accuracies(ok, windows, 0, first_hi), _accuracies(ok, windows, last_lo, n),
                      (0.0, first_hi / fps), (last_lo / fps, n / fps))
    # background error against the prompt's palette colour
    bg_target = PALETTE_RGB[t_bg].astype(np.float64)
    background_error = float(np.abs(det.background_mean_rgb - bg_target).mean())
    sharp = det.sharpness[np.isfinite(det.sharpness)]
    # switch response
    switches = []
    all_ok = ok["colour"] & ok["shape"] & ok["background"] & ok["presence"] & motion_ok
    for (s, a), e in list(zip(timeline, starts[1:]))[1:]:
        seg = all_ok[s:e]
        run = np.convolve(seg.astype(np.int64), np.ones(SWITCH_HOLD_FRAMES, dtype=np.int64),
                          mode="valid") if len(seg) >= SWITCH_HOLD_FRAMES else np.zeros(0)
        hit = np.flatnonzero(run == SWITCH_HOLD_FRAMES)
        switches.append(SwitchResponse(s, a, int(hit[0]) if len(hit) else None))
    return ClipEvaluation(
        num_frames=n, fps=fps, accuracy=accuracy,
        speed_ratio=float(np.median(ratios)) if ratios else None,
        background_error=background_error,
        edge_sharpness=float(sharp.mean()) if len(sharp) else math.nan,
        drift=drift, switches=tuple(switches), windows=tuple(windows), detections=det,
    )


# --------------------------------------------------------------------------- tables
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned plain-text table of rows (columns: union of keys in first-seen order).

    Floats get 3 decimals, None prints as '-'; numbers are right-aligned.
    """
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    if not columns:
        return ""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) or r.get(c) is None
                   for r in rows) for c in columns]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


# --------------------------------------------------------------------------- files
def _resize(frames: np.ndarray, size: int = CANVAS) -> np.ndarray:
    """Resize frames [F, H, W, 3] to size x size: box average for integer factors,
    nearest neighbour otherwise."""
    f, h, w, _ = frames.shape
    if (h, w) == (size, size):
        return frames
    if h % size == 0 and w % size == 0:
        kh, kw = h // size, w // size
        box = frames.reshape(f, size, kh, size, kw, 3).mean((2, 4))
        return np.clip(np.rint(box), 0, 255).astype(np.uint8)
    ys = ((np.arange(size) + 0.5) * h / size).astype(np.int64)
    xs = ((np.arange(size) + 0.5) * w / size).astype(np.int64)
    return frames[:, ys][:, :, xs]


def read_video(path: str) -> np.ndarray:
    """Read a video file (mp4 via imageio-ffmpeg) as uint8 [F, H, W, 3]."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        frames = [np.asarray(fr)[..., :3] for fr in reader]
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"no frames in {path}")
    return np.stack(frames).astype(np.uint8)


def evaluate_video_file(path: str, prompt: str | Attributes | None = None,
                        timeline: Sequence[Mapping[str, Any]] | None = None,
                        fps: float = FPS, config: DetectorConfig = DEFAULT_CONFIG
                        ) -> ClipEvaluation:
    """Evaluate a video file against a prompt or a timeline.

    prompt: a caption (canonical or a paraphrase) or Attributes. timeline: a list of
    {"at": seconds, "prompt": caption} (the first at 0). Frames are resized to the
    CANVAS if needed.
    """
    if (prompt is None) == (timeline is None):
        raise ValueError("give exactly one of prompt and timeline")
    frames = _resize(read_video(path))
    if prompt is not None:
        target: Target | str = prompt
    else:
        target = [(int(round(float(item["at"]) * fps)),
                   item["prompt"] if isinstance(item["prompt"], Attributes)
                   else parse_caption(str(item["prompt"]))) for item in timeline]  # type: ignore[union-attr]
    return evaluate_clip(frames, target, fps=fps, config=config)


__all__ = [
    "Accuracies", "ClipEvaluation", "DRIFT_FIRST_S", "DRIFT_LAST_S", "DRIFT_MIN_S", "Drift",
    "SWITCH_HOLD_FRAMES", "SwitchResponse", "WindowResult", "evaluate_clip", "evaluate_video_file",
    "format_table", "read_video",
]
