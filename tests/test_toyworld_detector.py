"""The model-free detector against the renderer's ground truth.

Accuracy is measured on random ground-truth clips (ClipSpecs from sample_spec, physics
tracks from simulate), never against stored outputs.
"""

import numpy as np
import pytest

from streamgen.toyworld.detector import detect_clip, detect_frames
from streamgen.toyworld.evaluate import evaluate_clip
from streamgen.toyworld.render import render_clip, render_segments, simulate
from streamgen.toyworld.world import (
    COLOURS,
    MOTIONS,
    PALETTE,
    SHAPE_EXTENTS,
    SHAPES,
    Attributes,
    ClipSpec,
    sample_spec,
)

N_CLIPS = 300
ATTRIBUTES = ("colour", "shape", "background", "motion", "presence")


def _blur_noise(frames, rng, sigma):
    """3x3 box blur plus Gaussian noise (per channel sigma), back to uint8."""
    x = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    blurred = sum(x[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return np.clip(np.rint(blurred + rng.normal(0, sigma, blurred.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ground_truth_run():
    """Evaluate N_CLIPS random clips (16..24 frames) against their own specs."""
    rng = np.random.default_rng(2024)
    rows = []
    for _ in range(N_CLIPS):
        spec = sample_spec(rng, "any")
        n = int(rng.integers(16, 25))
        frames = render_clip(spec, n)
        ev = evaluate_clip(frames, spec)
        clip = detect_clip(frames)
        track, _ = simulate(spec, n)
        rows.append((spec, ev, clip, track))
    return rows


def test_covers_every_value(ground_truth_run):
    specs = [r[0] for r in ground_truth_run]
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.colour for s in specs} == set(COLOURS)
    assert {s.background for s in specs} == set(COLOURS)
    assert {s.motion for s in specs} == set(MOTIONS)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_accuracy_on_ground_truth(ground_truth_run, attribute):
    """Frame (window, for motion) accuracy against the prompt >= 99% per attribute."""
    values = [getattr(ev.accuracy, attribute) for _, ev, _, _ in ground_truth_run]
    weights = [ev.accuracy.windows if attribute == "motion" else ev.accuracy.frames
               for _, ev, _, _ in ground_truth_run]
    assert np.average(values, weights=weights) >= 0.99


def test_prior_free_clip_detection(ground_truth_run):
    """detect_clip (no prompt) recovers every attribute of >= 99% of the clips."""
    for attribute in ("colour", "shape", "background"):
        hits = [getattr(c, attribute) == getattr(s, attribute) for s, _, c, _ in ground_truth_run]
        assert np.mean(hits) >= 0.99, attribute
    assert np.mean([c.motion.motion == s.motion for s, _, c, _ in ground_truth_run]) >= 0.99
    assert np.mean([c.presence for _, _, c, _ in ground_truth_run]) >= 0.99


def test_centroid_and_size_match_physics(ground_truth_run):
    for spec, ev, _, track in ground_truth_run[:100]:
        det = ev.detections
        np.testing.assert_allclose(det.cx, track.x, atol=0.6)
        np.testing.assert_allclose(det.cy, track.y, atol=0.6)
        # bounding-box extent vs the shape's extent (stars: 0.95 size wide, sharp tips)
        left, right, up, down = SHAPE_EXTENTS[spec.shape]
        extent = max(left + right, up + down) * track.size
        tolerance = 3.0 if spec.shape == "star" else 2.0  # pixel centres miss sharp tips
        assert np.all(np.abs(det.size - extent) <= tolerance)


def test_speed_ratio_on_ground_truth(ground_truth_run):
    ratios = np.array([ev.speed_ratio for s, ev, _, _ in ground_truth_run
                       if s.motion not in ("still", "pulsing")])
    assert len(ratios) > 100
    assert abs(np.median(ratios) - 1) < 0.01
    assert np.abs(ratios - 1).max() < 0.05
    # detect_clip's whole-clip speed in px/frame, too
    for spec, _, clip, _ in ground_truth_run:
        if spec.motion not in ("still", "pulsing"):
            assert clip.motion.speed == pytest.approx(spec.speed_px, rel=0.05)


def test_robust_to_blur_and_noise():
    rng = np.random.default_rng(7)
    acc = {k: [] for k in ATTRIBUTES}
    for _ in range(60):
        spec = sample_spec(rng, "any")
        frames = _blur_noise(render_clip(spec, 20), rng, sigma=10.0)
        ev = evaluate_clip(frames, spec)
        for k in ATTRIBUTES:
            acc[k].append(getattr(ev.accuracy, k))
        if spec.motion not in ("still", "pulsing"):
            assert ev.speed_ratio == pytest.approx(1.0, abs=0.1)
        assert ev.edge_sharpness < 0.8  # blurred edges read as soft
    for k in ATTRIBUTES:
        assert np.mean(acc[k]) >= 0.97, (k, np.mean(acc[k]))


def test_wrong_prompts_score_zero():
    """The metrics can fail: every attribute of a wrong prompt scores ~0."""
    spec = ClipSpec("circle", "red", "black", "moving right", None, 26, 40.0, 64.0)
    frames = render_clip(spec, 24)
    good = evaluate_clip(frames, spec).accuracy
    assert min(good.colour, good.shape, good.background, good.motion, good.presence) == 1.0
    wrong = {
        "colour": Attributes("circle", "blue", "black", "moving right"),
        "shape": Attributes("square", "red", "black", "moving right"),
        "background": Attributes("circle", "red", "white", "moving right"),
        "motion": Attributes("circle", "red", "black", "moving left"),
    }
    for attribute, target in wrong.items():
        assert getattr(evaluate_clip(frames, target).accuracy, attribute) == 0.0, attribute
    for other in ("moving up", "still", "pulsing", "bouncing diagonally"):
        target = Attributes("circle", "red", "black", other)
        assert evaluate_clip(frames, target).accuracy.motion == 0.0, other
    slow = evaluate_clip(frames, Attributes("circle", "red", "black", "moving right", "quickly"))
    assert slow.speed_ratio == pytest.approx(0.5, rel=0.05)


def test_still_versus_pulsing():
    for shape in SHAPES:
        still = ClipSpec(shape, "green", "white", "still", None, 22, 64.0, 64.0)
        pulse = still.with_attributes(motion="pulsing")
        for spec in (still, pulse):
            assert detect_clip(render_clip(spec, 16, start_frame=5)).motion.motion == spec.motion


def test_presence_counts_blobs():
    spec = ClipSpec("square", "white", "blue", "still", None, 20, 30.0, 30.0)
    other = ClipSpec("circle", "yellow", "blue", "still", None, 20, 90.0, 90.0)
    one = render_clip(spec, 1)
    two = one.copy()
    obj = (render_clip(other, 1) == np.array(PALETTE["yellow"], dtype=np.uint8)).all(-1)
    two[obj] = PALETTE["yellow"]
    empty = np.broadcast_to(np.array(PALETTE["blue"], dtype=np.uint8), one.shape).copy()
    speck = one.copy()
    speck[0, 100:103, 10:13] = PALETTE["red"]  # 9 px: ignored as a speck
    det = detect_frames(np.concatenate([one, two, empty, speck]))
    np.testing.assert_array_equal(det.n_blobs, [1, 2, 0, 1])
    np.testing.assert_array_equal(det.present, [True, False, False, True])
    assert det.shape[0] == SHAPES.index("square") and det.shape[2] == -1


def test_switch_response_on_rendered_timeline():
    base = ClipSpec("circle", "red", "black", "moving right", "quickly", 24, 70.0, 64.0)
    changes = [dict(colour="blue"), dict(shape="star"), dict(motion="moving up", speed=None),
               dict(background="white"), dict(motion="pulsing"), dict(motion="bouncing diagonally"),
               dict(shape="triangle", colour="green"), dict(motion="moving left", speed="slowly")]
    segments, spec = [(32, base)], base
    for change in changes:
        spec = spec.with_attributes(**change)
        segments.append((32, spec))
    frames = render_segments(segments)
    timeline = [(32 * i, s) for i, (_, s) in enumerate(segments)]
    ev = evaluate_clip(frames, timeline)
    assert len(ev.switches) == len(changes)
    for switch in ev.switches:
        assert switch.response_frames is not None and switch.response_frames <= 2, switch
    assert ev.accuracy.motion >= 0.95 and ev.accuracy.colour == 1.0
    # a video that ignores the switches never responds (and loses accuracy)
    frozen = render_clip(base, len(frames))
    ev = evaluate_clip(frozen, timeline)
    assert all(s.response_frames is None for s in ev.switches)
    assert ev.accuracy.colour < 0.5
    # a late switch (the video changes colour 10 frames after the prompt) reads as ~10
    late = render_segments([(42, base), (22, base.with_attributes(colour="blue"))])
    ev = evaluate_clip(late, [(0, base), (32, base.with_attributes(colour="blue"))])
    assert ev.switches[0].response_frames == 10
