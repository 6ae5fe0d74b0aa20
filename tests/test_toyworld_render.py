"""Renderer, physics and spec sampling of the toy world (checked against the physics,
not against stored outputs)."""

import collections
import itertools

import numpy as np
import pytest

from streamgen.toyworld.render import render_clip, render_segments, shape_mask, simulate, simulate_segments
from streamgen.toyworld.world import (
    CANVAS,
    COLOURS,
    HELDOUT_COMBOS,
    MOTIONS,
    PALETTE,
    PULSE_AMPLITUDE,
    PULSE_PERIOD_FRAMES,
    SHAPE_EXTENTS,
    SHAPES,
    SPEED_PX,
    TRAIN_COMBOS,
    ClipSpec,
    centre_bounds,
    is_heldout,
    max_size,
    sample_spec,
    stratified_specs,
)


def _object_mask(frames, spec):
    """[F, H, W] bool: pixels of the object's colour."""
    return (frames == np.array(PALETTE[spec.colour], dtype=np.uint8)).all(-1)


def _centroids(mask):
    """[F, 2] pixel-centre centroid (x, y) of each frame's mask [F, H, W]."""
    f, h, w = mask.shape
    area = mask.sum((1, 2))
    xs = (mask.sum(1) * (np.arange(w) + 0.5)).sum(1) / area
    ys = (mask.sum(2) * (np.arange(h) + 0.5)).sum(1) / area
    return np.stack([xs, ys], 1)


def _specs(n, seed=0, split="any"):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split) for _ in range(n)]


def test_render_is_deterministic_and_chunks_join():
    for spec in _specs(20, seed=1):
        a = render_clip(spec, 30)
        b = render_clip(spec, 30)
        assert a.dtype == np.uint8 and a.shape == (30, CANVAS, CANVAS, 3)
        np.testing.assert_array_equal(a, b)
        # rendering frames 12..29 separately gives the same frames
        np.testing.assert_array_equal(render_clip(spec, 18, start_frame=12), a[12:])


def test_palette_exact_and_object_drawn():
    for spec in _specs(60, seed=2):
        frames = render_clip(spec, 33)
        packed = frames.astype(np.uint32)
        codes = np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2])
        colours = {(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in codes}
        assert colours == {PALETTE[spec.colour], PALETTE[spec.background]}
        assert _object_mask(frames, spec).sum((1, 2)).min() > 0


def test_object_stays_fully_inside_canvas():
    """No object pixel is ever clipped: the rendered area equals the shape's area on an
    unbounded grid at the physics position, for long clips with many bounces."""
    for spec in _specs(16, seed=3):
        track, _ = simulate(spec, 160)
        frames = render_clip(spec, 160)
        area = _object_mask(frames, spec).sum((1, 2))
        left, right, up, down = SHAPE_EXTENTS[spec.shape]
        assert (track.x - left * track.size >= -1e-9).all()
        assert (track.x + right * track.size <= CANVAS + 1e-9).all()
        assert (track.y - up * track.size >= -1e-9).all()
        assert (track.y + down * track.size <= CANVAS + 1e-9).all()
        big = np.arange(-CANVAS // 2, CANVAS + CANVAS // 2) + 0.5
        for t in range(0, 160, 9):
            dx = big[None, :] - track.x[t]
            dy = big[:, None] - track.y[t]
            dx, dy = np.broadcast_arrays(dx, dy)
            assert shape_mask(spec.shape, dx, dy, track.size[t]).sum() == area[t]


@pytest.mark.parametrize("motion", ["moving right", "moving left", "moving up", "moving down"])
def test_bounce_is_elastic(motion):
    spec = ClipSpec("square", "red", "black", motion, "quickly", 24, 64, 64)
    lo_x, hi_x, lo_y, hi_y = centre_bounds("square", 24)
    track, _ = simulate(spec, 100)
    axis = 0 if motion in ("moving right", "moving left") else 1
    pos = track.x if axis == 0 else track.y
    lo, hi = (lo_x, hi_x) if axis == 0 else (lo_y, hi_y)
    sign = 1 if motion in ("moving right", "moving down") else -1
    steps = np.diff(pos)
    # first leg: straight towards the named border at 4 px/frame
    first_turn = np.flatnonzero(np.sign(steps) != sign)[0]
    np.testing.assert_allclose(steps[: first_turn], sign * 4.0)
    # it reaches the border (within one step) and comes back at the same speed
    border = hi if sign > 0 else lo
    assert abs(pos[: first_turn + 2] - border).min() <= 2.0 + 1e-9
    assert np.sign(steps[first_turn + 1]) == -sign and abs(steps[first_turn + 1]) == pytest.approx(4.0)
    # heading flips exactly once per leg and positions stay within the bounds
    heading = track.hx if axis == 0 else track.hy
    assert heading[0] == sign and (heading[first_turn + 1:first_turn + 5] == -sign).all()
    assert pos.min() >= lo - 1e-9 and pos.max() <= hi + 1e-9
    # the rendered object touches the border at the bounce and follows the physics
    frames = render_clip(spec, 100)
    mask = _object_mask(frames, spec)
    cent = _centroids(mask)
    np.testing.assert_allclose(cent[:, axis], pos, atol=0.51)
    edge_cols = mask.any(1 if axis == 0 else 2)  # [F, W]: columns (rows) occupied
    touching = edge_cols[:, -1] if sign > 0 else edge_cols[:, 0]
    assert touching[max(first_turn - 1, 0): first_turn + 3].any()


@pytest.mark.parametrize("speed", ["slowly", None, "quickly"])
@pytest.mark.parametrize("motion", ["moving right", "moving up", "bouncing diagonally"])
def test_speeds_match_px_per_frame(motion, speed):
    spec = ClipSpec("circle", "white", "blue", motion, speed, 26, 50.3, 70.6, dir_x=-1, dir_y=1)
    frames = render_clip(spec, 48)
    cent = _centroids(_object_mask(frames, spec))
    track, _ = simulate(spec, 48)
    true_step = np.hypot(np.diff(track.x), np.diff(track.y))
    free = np.isclose(true_step, SPEED_PX[speed])  # steps without a bounce
    assert free.mean() > 0.7
    np.testing.assert_allclose(np.hypot(np.diff(track.x), np.diff(track.y))[free], SPEED_PX[speed])
    # measured from pixels over bounce-free 8-frame windows (hard edges jitter ~0.1 px)
    k = 8
    ok = np.convolve(free, np.ones(k), mode="valid") == k
    speed_px = np.hypot(*(cent[k:] - cent[:-k]).T)[ok] / k
    assert ok.sum() >= 5
    np.testing.assert_allclose(speed_px, SPEED_PX[speed], rtol=0.03)


def test_pulsing_period_and_amplitude():
    spec = ClipSpec("star", "yellow", "black", "pulsing", None, 30, 64, 64)
    frames = render_clip(spec, 3 * PULSE_PERIOD_FRAMES)
    track, _ = simulate(spec, 3 * PULSE_PERIOD_FRAMES)
    p = PULSE_PERIOD_FRAMES
    np.testing.assert_array_equal(frames[:p], frames[p:2 * p])  # period 2 s = 32 frames
    assert track.size.max() == pytest.approx(30 * (1 + PULSE_AMPLITUDE))
    assert track.size.min() == pytest.approx(30 * (1 - PULSE_AMPLITUDE))
    area = _object_mask(frames, spec).sum((1, 2))
    assert area.argmax() % p == p // 4 and area.argmin() % p == 3 * p // 4
    ratio = area.max() / area.min()
    assert ratio == pytest.approx(((1 + PULSE_AMPLITUDE) / (1 - PULSE_AMPLITUDE)) ** 2, rel=0.08)
    # not a period of 16 or 48 frames
    assert not np.array_equal(frames[:16], frames[16:32])
    # the object does not move while pulsing
    cent = _centroids(_object_mask(frames, spec))
    assert np.abs(cent - cent.mean(0)).max() < 0.6


def test_segment_continuity_on_colour_switch():
    spec = ClipSpec("triangle", "red", "gray", "moving right", "quickly", 28, 90.0, 60.0)
    switched = spec.with_attributes(colour="cyan")
    frames = render_segments([(20, spec), (30, switched)])
    plain = render_clip(spec, 50)
    # the physics is unchanged by a colour switch (position and bounce state carry) ...
    whole, _ = simulate(spec, 50)
    seg = simulate_segments([(20, spec), (30, switched)])
    np.testing.assert_allclose(seg.x, whole.x)
    np.testing.assert_allclose(seg.y, whole.y)
    np.testing.assert_array_equal(seg.hx, whole.hx)
    assert (np.diff(seg.hx) != 0).any()  # the clip includes a bounce after the switch
    # ... so the frames equal the unswitched clip recoloured from frame 20 on
    recoloured = plain.copy()
    obj = _object_mask(plain[20:], spec)
    recoloured[20:][obj] = PALETTE["cyan"]
    np.testing.assert_array_equal(frames, recoloured)


def test_segment_continuity_on_motion_and_shape_switch():
    spec = ClipSpec("circle", "red", "black", "moving left", None, 24, 64.0, 64.0)
    up = spec.with_attributes(motion="moving up", shape="square")
    pulse = up.with_attributes(motion="pulsing")
    track = simulate_segments([(10, spec), (10, up), (40, pulse)])
    steps = np.hypot(np.diff(track.x), np.diff(track.y))
    assert steps.max() <= 2.0 + 1e-9  # never jumps
    # the new motion starts with the step into the first frame after the switch
    np.testing.assert_allclose(np.diff(track.x[:10]), -2.0)
    np.testing.assert_allclose(np.diff(track.y[9:20]), -2.0)  # from frame 9 to 10 on: up
    np.testing.assert_allclose(np.diff(track.x[9:]), 0.0)
    assert np.ptp(track.x[10:]) == 0 and np.ptp(track.y[20:]) == 0
    assert track.size[20:].max() > 24 * 1.25  # pulsing started


def test_heldout_split():
    assert len(HELDOUT_COMBOS) == round(0.1 * len(SHAPES) * len(COLOURS) * len(MOTIONS))
    assert set(TRAIN_COMBOS).isdisjoint(HELDOUT_COMBOS)
    # every shape, colour, motion and every pair of them still appears in training
    for i, j in itertools.combinations(range(3), 2):
        pairs = {(c[i], c[j]) for c in TRAIN_COMBOS}
        universe = [SHAPES, COLOURS, MOTIONS]
        assert len(pairs) == len(universe[i]) * len(universe[j])
    rng = np.random.default_rng(4)
    train = [sample_spec(rng, "train") for _ in range(3000)]
    assert not any(is_heldout(s) for s in train)
    assert len({s.combo for s in train}) > 0.9 * len(TRAIN_COMBOS)
    held = [sample_spec(rng, "heldout") for _ in range(300)]
    assert all(is_heldout(s) for s in held)
    assert {s.combo for s in held} == set(HELDOUT_COMBOS)
    anyway = [sample_spec(rng, "any") for _ in range(2000)]
    assert 0.05 < np.mean([is_heldout(s) for s in anyway]) < 0.15


@pytest.mark.parametrize("split, n", [("train", 16), ("train", 32), ("heldout", 32), ("any", 70)])
def test_stratified_specs_spread_shapes_motions_and_colours(split, n):
    """Eval prompt sets: every shape, motion and colour as often as the split allows (independent
    draws of 16 gave 7 stars and no circle), combinations not repeated before the pool is used up,
    the split respected, and the same seed gives the same set."""
    specs = stratified_specs(n, split, seed=4321)
    assert specs == stratified_specs(n, split, seed=4321)
    assert specs != stratified_specs(n, split, seed=4322)
    for attr, values in (("shape", SHAPES), ("motion", MOTIONS), ("colour", COLOURS)):
        counts = [sum(getattr(s, attr) == v for s in specs) for v in values]
        slack = 1 if attr == "shape" or split != "heldout" else 2  # held out: few motions per shape
        assert max(counts) - min(counts) <= slack, (attr, counts)
    pool = HELDOUT_COMBOS if split == "heldout" else TRAIN_COMBOS if split == "train" else None
    if pool is not None:
        assert all(s.combo in pool for s in specs)
    combos = [s.combo for s in specs]
    assert len(set(combos)) == min(n, len(pool) if pool is not None else n)
    for spec in specs:  # the rest of the spec is drawn as for training clips
        x_lo, x_hi, y_lo, y_hi = centre_bounds(spec.shape, max_size(spec.motion, spec.size))
        assert spec.colour != spec.background and x_lo < spec.x < x_hi and y_lo < spec.y < y_hi


def test_samples_are_valid():
    for spec in _specs(500, seed=5):
        assert spec.colour != spec.background
        assert (spec.speed is None) or spec.motion not in ("still", "pulsing")
        x_lo, x_hi, y_lo, y_hi = centre_bounds(spec.shape, max_size(spec.motion, spec.size))
        assert x_lo < spec.x < x_hi and y_lo < spec.y < y_hi


@pytest.mark.parametrize("kwargs", [
    dict(colour="red", background="red"),
    dict(motion="still", speed="quickly"),
    dict(shape="hexagon"),
    dict(colour="purple"),
    dict(size=40),
    dict(x=2.0),
])
def test_invalid_specs_raise(kwargs):
    base = dict(shape="circle", colour="red", background="black", motion="moving left",
                speed=None, size=24, x=64.0, y=64.0)
    base.update(kwargs)
    with pytest.raises(ValueError):
        ClipSpec(**base)


def test_motion_weights_set_how_often_each_motion_is_drawn():
    n = 7000
    plain = _specs(50, seed=9, split="train")
    # no weights (or empty ones) draw as before: the same specs from the same generator
    rng = np.random.default_rng(9)
    assert [sample_spec(rng, "train", {}) for _ in range(50)] == plain
    rng = np.random.default_rng(10)
    weights = {"bouncing diagonally": 3.0, "still": 0.0}
    counts = collections.Counter(sample_spec(rng, "train", weights).motion for _ in range(n))
    # expected shares from the pool of training combinations, weighted by motion (not a flat 3 / 8)
    pool = [m for (_, _, m) in TRAIN_COMBOS]
    w = {m: weights.get(m, 1.0) * pool.count(m) for m in MOTIONS}
    total = sum(w.values())
    assert counts["still"] == 0
    for m in MOTIONS:
        share = w[m] / total
        assert abs(counts[m] / n - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-9, (m, counts[m] / n, share)
    assert counts["bouncing diagonally"] > 2.5 * counts["moving left"]
    for bad in ({"diagonal": 2.0}, {"still": -1.0}, {m: 0.0 for m in MOTIONS}):
        with pytest.raises(ValueError, match="motion_weights"):
            sample_spec(rng, "train", bad)
