"""The toy world's constants and clip specification (see /work/shared/toyworld.md).

Every number the spec fixes lives here (canvas, frame rate, palette, shapes, motions,
speeds, sizes, pulsing), so the renderer, captions, detector and evaluation share one
source of truth.

Coordinates: continuous image coordinates in pixels, x to the right and y *down*
(so "moving up" is -y). Pixel (row i, column j) covers [j, j+1) x [i, i+1) and its
centre is (j + 0.5, i + 0.5). An object's position (x, y) is its *centroid* (so a
pulsing triangle or star scales about a fixed point and its pixel centroid does not
move).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Mapping

import numpy as np

# --------------------------------------------------------------------------- canvas
CANVAS: int = 128  # frames are CANVAS x CANVAS RGB
FPS: int = 16

# --------------------------------------------------------------------------- palette
# Ordered: palette indices used by the detector follow this order.
PALETTE: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 220),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
PALETTE_RGB: np.ndarray = np.array([PALETTE[c] for c in COLOURS], dtype=np.uint8)  # [10, 3]
PALETTE_RGB.setflags(write=False)

# --------------------------------------------------------------------------- shapes
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
STAR_POINTS: int = 5
STAR_INNER_RATIO: float = 0.45  # inner / outer radius of the 5-point star
# Extent of each shape from its centroid, as fractions of its size ("pixels across"):
# (left, right, up, down). Circle: diameter = size. Square: side = size. Triangle:
# isosceles, apex up, base = height = size, centroid 2/3 of the way down from the apex.
# Star: outer radius = size / 2, one point straight up.
SHAPE_EXTENTS: Mapping[str, tuple[float, float, float, float]] = {
    "circle": (0.5, 0.5, 0.5, 0.5),
    "square": (0.5, 0.5, 0.5, 0.5),
    "triangle": (0.5, 0.5, 2.0 / 3.0, 1.0 / 3.0),
    "star": (
        0.5 * math.sin(2 * math.pi / STAR_POINTS),  # x extent of the upper side points
        0.5 * math.sin(2 * math.pi / STAR_POINTS),
        0.5,
        0.5 * math.cos(math.pi / STAR_POINTS),  # y extent of the two lower points
    ),
}

# --------------------------------------------------------------------------- sizes
SIZE_MIN: int = 20  # base object size, pixels across (inclusive)
SIZE_MAX: int = 32
PULSE_AMPLITUDE: float = 0.30  # pulsing: size * (1 + A sin(2 pi t / period))
PULSE_PERIOD_S: float = 2.0
PULSE_PERIOD_FRAMES: int = int(round(PULSE_PERIOD_S * FPS))  # 32

# --------------------------------------------------------------------------- motions
MOTIONS: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "still",
    "bouncing diagonally",
    "pulsing",
)
AXIS_MOTIONS: Mapping[str, tuple[int, int]] = {  # nominal (dx, dy) heading signs
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
DIAGONAL: str = "bouncing diagonally"
STATIC_MOTIONS: tuple[str, ...] = ("still", "pulsing")  # take no speed
MOVING_MOTIONS: tuple[str, ...] = tuple(m for m in MOTIONS if m not in STATIC_MOTIONS)

# --------------------------------------------------------------------------- speeds
# Speed words; None is the default speed. Diagonal speed is the Euclidean speed
# (each axis moves speed / sqrt(2) px/frame).
SPEED_NAMES: tuple[str, ...] = ("slowly", "quickly")
SPEED_PX: Mapping[str | None, float] = {"slowly": 1.0, None: 2.0, "quickly": 4.0}
DEFAULT_SPEED_PX: float = SPEED_PX[None]
MAX_AXIS_SPEED_PX: float = max(SPEED_PX.values())
# Initial centres are drawn at least this far inside the reachable range, so a clip
# never starts mid-bounce (its first displacement is along the nominal heading).
START_MARGIN_PX: float = MAX_AXIS_SPEED_PX

Split = Literal["train", "heldout", "any"]


def speed_px(motion: str, speed: str | None) -> float:
    """Prompt speed in px/frame (0 for still / pulsing)."""
    if motion in STATIC_MOTIONS:
        return 0.0
    return SPEED_PX[speed]


def axis_speeds(motion: str, speed: str | None) -> tuple[float, float]:
    """Per-axis speed magnitudes (|vx|, |vy|) in px/frame."""
    v = speed_px(motion, speed)
    if motion in AXIS_MOTIONS:
        dx, dy = AXIS_MOTIONS[motion]
        return abs(dx) * v, abs(dy) * v
    if motion == DIAGONAL:
        return v / math.sqrt(2.0), v / math.sqrt(2.0)
    return 0.0, 0.0


def max_size(motion: str, size: float) -> float:
    """Largest size the object reaches (pulsing grows by PULSE_AMPLITUDE)."""
    return size * (1.0 + PULSE_AMPLITUDE) if motion == "pulsing" else float(size)


def centre_bounds(shape: str, size: float) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi): range of centroid positions keeping the object inside."""
    left, right, up, down = SHAPE_EXTENTS[shape]
    return left * size, CANVAS - right * size, up * size, CANVAS - down * size


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Attributes:
    """What a caption says: the attributes a prompt controls (no geometry)."""

    shape: str
    colour: str
    background: str
    motion: str
    speed: str | None = None  # "slowly" | "quickly" | None (default 2 px/frame)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        for name in (self.colour, self.background):
            if name not in PALETTE:
                raise ValueError(f"unknown colour {name!r}")
        if self.colour == self.background:
            raise ValueError(f"object and background colour are both {self.colour!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}")
        if self.speed is not None and self.speed not in SPEED_NAMES:
            raise ValueError(f"unknown speed {self.speed!r}")
        if self.speed is not None and self.motion in STATIC_MOTIONS:
            raise ValueError(f"motion {self.motion!r} takes no speed")

    @property
    def speed_px(self) -> float:
        return speed_px(self.motion, self.speed)

    @property
    def combo(self) -> tuple[str, str, str]:
        """(shape, colour, motion): the unit of the held-out split."""
        return (self.shape, self.colour, self.motion)

    @property
    def attributes(self) -> "Attributes":
        return self


@dataclass(frozen=True)
class ClipSpec(Attributes):
    """Attributes plus the geometry needed to render a clip deterministically.

    size: base size in pixels across (SIZE_MIN..SIZE_MAX).
    x, y: initial centroid position (px, y down); must be inside centre_bounds.
    dir_x, dir_y: heading signs (+1/-1) of `bouncing diagonally`; for the axis motions
        the heading comes from the motion and these are ignored.
    """

    size: float = (SIZE_MIN + SIZE_MAX) / 2
    x: float = CANVAS / 2
    y: float = CANVAS / 2
    dir_x: int = 1
    dir_y: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not SIZE_MIN <= self.size <= SIZE_MAX:
            raise ValueError(f"size {self.size} outside [{SIZE_MIN}, {SIZE_MAX}]")
        if self.dir_x not in (-1, 1) or self.dir_y not in (-1, 1):
            raise ValueError("dir_x and dir_y must be +1 or -1")
        x_lo, x_hi, y_lo, y_hi = centre_bounds(self.shape, max_size(self.motion, self.size))
        if not (x_lo <= self.x <= x_hi and y_lo <= self.y <= y_hi):
            raise ValueError(
                f"centre ({self.x:.1f}, {self.y:.1f}) outside [{x_lo:.1f}, {x_hi:.1f}] x "
                f"[{y_lo:.1f}, {y_hi:.1f}] for a {self.shape} of size {self.size}"
            )

    @property
    def attributes(self) -> Attributes:
        return Attributes(self.shape, self.colour, self.background, self.motion, self.speed)

    @property
    def heading(self) -> tuple[int, int]:
        """Nominal (hx, hy) heading signs at the clip start (0 on a non-moving axis)."""
        if self.motion in AXIS_MOTIONS:
            return AXIS_MOTIONS[self.motion]
        if self.motion == DIAGONAL:
            return (self.dir_x, self.dir_y)
        return (0, 0)

    def with_attributes(self, **changes: object) -> "ClipSpec":
        """Copy with some attributes changed; geometry is clamped to stay valid.

        E.g. spec.with_attributes(colour="blue"). Switching to a static motion drops
        the speed; the position is clamped into the new shape's / size's bounds.
        """
        if changes.get("motion") in STATIC_MOTIONS:
            changes.setdefault("speed", None)
        shape = str(changes.get("shape", self.shape))
        motion = str(changes.get("motion", self.motion))
        size = float(changes.get("size", self.size))  # type: ignore[arg-type]
        x_lo, x_hi, y_lo, y_hi = centre_bounds(shape, max_size(motion, size))
        changes.setdefault("x", float(np.clip(self.x, x_lo, x_hi)))
        changes.setdefault("y", float(np.clip(self.y, y_lo, y_hi)))
        return replace(self, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- held-out split
def _combo_is_heldout(shape: str, colour: str, motion: str) -> bool:
    # (s + 2c + 3m) mod 10 == 0 holds out exactly 28 of the 280 (shape, colour, motion)
    # combinations (10%). For a fixed (shape, colour) at most one motion qualifies, for
    # a fixed (colour, motion) at most one shape, for a fixed (shape, motion) at most two
    # colours: every shape, colour, motion (and every pair) still appears in training.
    s, c, m = SHAPES.index(shape), COLOURS.index(colour), MOTIONS.index(motion)
    return (s + 2 * c + 3 * m) % 10 == 0


HELDOUT_COMBOS: frozenset[tuple[str, str, str]] = frozenset(
    (s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS if _combo_is_heldout(s, c, m)
)
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS if (s, c, m) not in HELDOUT_COMBOS
)
_HELDOUT_SORTED: tuple[tuple[str, str, str], ...] = tuple(sorted(HELDOUT_COMBOS))
_ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS
)


def is_heldout(spec: Attributes | tuple[str, str, str]) -> bool:
    """True if the (shape, colour, motion) combination is in the held-out split."""
    combo = spec if isinstance(spec, tuple) else spec.combo
    return combo in HELDOUT_COMBOS


def check_motion_weights(motion_weights: Mapping[str, float]) -> None:
    """Raise ValueError unless ``motion_weights`` maps motions to weights >= 0, not all 0 (unnamed motions weigh 1)."""
    bad = sorted(set(motion_weights) - set(MOTIONS))
    if bad or any(w < 0 for w in motion_weights.values()) or sum(motion_weights.get(m, 1.0) for m in MOTIONS) <= 0:
        raise ValueError(f"motion_weights maps some of {list(MOTIONS)} to weights >= 0 (not all 0), "
                         f"got {dict(motion_weights)}")


def sample_spec(rng: np.random.Generator, split: Split = "train",
                motion_weights: Mapping[str, float] | None = None) -> ClipSpec:
    """Draw a valid random ClipSpec.

    split: "train" never returns a held-out (shape, colour, motion) combination,
    "heldout" only returns held-out ones, "any" draws from all combinations.
    motion_weights: relative weight of each combination by its motion (a motion not named weighs 1); None or
    empty draws every combination of the split equally often (and uses the generator as before weights existed).
    Background is uniform over the colours other than the object's; speed uniform over
    slowly / default / quickly for moving motions; size an integer in [SIZE_MIN, SIZE_MAX];
    centre uniform in the reachable range shrunk by START_MARGIN_PX.
    """
    pool = _combo_pool(split)
    if not motion_weights:
        return _spec_for_combo(rng, pool[int(rng.integers(len(pool)))])
    check_motion_weights(motion_weights)
    w = np.array([float(motion_weights.get(m, 1.0)) for _, _, m in pool])
    if w.sum() <= 0:
        raise ValueError(f"motion_weights leaves no combination of split {split!r} to draw: {dict(motion_weights)}")
    return _spec_for_combo(rng, pool[int(rng.choice(len(pool), p=w / w.sum()))])


def stratified_specs(n: int, split: Split = "train", seed: int = 1234) -> list[ClipSpec]:
    """n ClipSpecs whose shapes, then motions, then colours are as evenly spread as the split allows.

    For eval prompt sets: independent draws leave small sets lopsided (16 draws gave 7 stars and no
    circle), and the detector reads a blocky sprite as a square or star far more often than as a
    circle, so an unbalanced set misstates shape accuracy. Each prompt takes the combination whose
    (times used, shape count, motion count, colour count) is smallest, ties broken at random; the
    rest of the spec (background, speed, size, position) is drawn as in `sample_spec`.
    """
    rng = np.random.default_rng(seed)
    pool = _combo_pool(split)
    used: dict[tuple[str, str, str], int] = {c: 0 for c in pool}
    counts: dict[str, int] = {v: 0 for v in (*SHAPES, *MOTIONS, *COLOURS)}
    specs = []
    for _ in range(n):
        keys = [(used[(s, c, m)], counts[s], counts[m], counts[c]) for s, c, m in pool]
        best = min(keys)
        ties = [combo for combo, key in zip(pool, keys) if key == best]
        combo = ties[int(rng.integers(len(ties)))]
        used[combo] += 1
        for v in combo:
            counts[v] += 1
        specs.append(_spec_for_combo(rng, combo))
    return specs


def _combo_pool(split: Split) -> tuple[tuple[str, str, str], ...]:
    pool = {"train": TRAIN_COMBOS, "heldout": _HELDOUT_SORTED, "any": _ALL_COMBOS}.get(split)
    if pool is None:
        raise ValueError(f"split must be 'train', 'heldout' or 'any', not {split!r}")
    return pool


def _spec_for_combo(rng: np.random.Generator, combo: tuple[str, str, str]) -> ClipSpec:
    shape, colour, motion = combo
    others = [c for c in COLOURS if c != colour]
    background = others[int(rng.integers(len(others)))]
    speed: str | None = None
    if motion not in STATIC_MOTIONS:
        speed = (SPEED_NAMES[0], None, SPEED_NAMES[1])[int(rng.integers(3))]
    size = int(rng.integers(SIZE_MIN, SIZE_MAX + 1))
    x_lo, x_hi, y_lo, y_hi = centre_bounds(shape, max_size(motion, size))
    m = min(START_MARGIN_PX, (x_hi - x_lo) / 2, (y_hi - y_lo) / 2)
    x = float(rng.uniform(x_lo + m, x_hi - m))
    y = float(rng.uniform(y_lo + m, y_hi - m))
    dir_x, dir_y = (int(v) for v in rng.choice([-1, 1], size=2))
    return ClipSpec(shape, colour, background, motion, speed, size, x, y, dir_x, dir_y)


__all__ = [
    "AXIS_MOTIONS", "Attributes", "CANVAS", "COLOURS", "ClipSpec", "DEFAULT_SPEED_PX", "DIAGONAL",
    "FPS", "HELDOUT_COMBOS", "MAX_AXIS_SPEED_PX", "MOTIONS", "MOVING_MOTIONS", "PALETTE",
    "PALETTE_RGB", "PULSE_AMPLITUDE", "PULSE_PERIOD_FRAMES", "PULSE_PERIOD_S", "SHAPES",
    "SHAPE_EXTENTS", "SIZE_MAX", "SIZE_MIN", "SPEED_NAMES", "SPEED_PX", "STAR_INNER_RATIO",
    "STAR_POINTS", "START_MARGIN_PX", "STATIC_MOTIONS", "TRAIN_COMBOS", "axis_speeds",
    "centre_bounds", "check_motion_weights", "is_heldout", "max_size", "sample_spec", "speed_px", "stratified_specs",
]
