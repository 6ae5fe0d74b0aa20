"""Counterfactual inputs (train.swap_input): the clip re-rendered with its shape or motion changed, checked by the
detector against the original render, and the trainer step that uses them."""
import numpy as np
import pytest

from streamgen.config import ConfigError, TeacherRunConfig, load_config
from streamgen.data import counterfactual_track
from streamgen.toyworld.detector import detect_frames
from streamgen.toyworld.evaluate import evaluate_clip
from streamgen.toyworld.render import render_track, simulate
from streamgen.toyworld.world import SHAPES, TRAIN_COMBOS, sample_spec

FRAMES = 13


def _specs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng) for _ in range(n)], rng


def test_a_shape_swap_keeps_the_track_and_draws_another_training_shape():
    specs, rng = _specs(24)
    for spec in specs:
        start = int(rng.integers(0, 64))
        real, _ = simulate(spec, FRAMES, start)
        cf = counterfactual_track(spec, FRAMES, start, ["shape"], rng)
        other = cf.specs[0]
        assert other.shape != spec.shape and (other.shape, spec.colour, spec.motion) in TRAIN_COMBOS
        assert (other.colour, other.background, other.motion) == (spec.colour, spec.background, spec.motion)
        np.testing.assert_array_equal(cf.x, real.x)
        np.testing.assert_array_equal(cf.size, real.size)
        det_real, det_cf = detect_frames(render_track(real)), detect_frames(render_track(cf))
        assert (det_cf.shape == SHAPES.index(other.shape)).mean() > 0.9  # the outline really changed
        assert (det_cf.colour == det_real.colour).all() and (det_cf.background == det_real.background).all()
        # same place: the centroids of two outlines on one track agree within a few pixels (a triangle's
        # pixel centroid sits below its bounding-box centre)
        assert np.abs(det_cf.cx - det_real.cx).max() < 4 and np.abs(det_cf.cy - det_real.cy).max() < 6


def test_a_motion_swap_starts_where_the_clip_starts_and_moves_otherwise():
    specs, rng = _specs(40, seed=1)
    moved = 0
    for spec in specs:
        start = int(rng.integers(0, 64))
        real, _ = simulate(spec, FRAMES, start)
        cf = counterfactual_track(spec, FRAMES, start, ["motion"], rng)
        other = cf.specs[0]
        assert other.motion != spec.motion and (spec.shape, spec.colour, other.motion) in TRAIN_COMBOS
        assert abs(cf.x[0] - real.x[0]) <= 0.3 * spec.size and abs(cf.y[0] - real.y[0]) <= 0.3 * spec.size
        # the detector reads the counterfactual's own motion, not the original's
        ev = evaluate_clip(render_track(cf), other)
        moved += ev.accuracy.motion == 1.0
    assert moved >= 0.85 * len(specs)


def test_swap_input_config_errors_name_the_fix():
    base = ["train.swap_input=0.5"]
    cfg = load_config(["configs/teacher_toy.yaml"], base, schema=TeacherRunConfig)
    assert cfg.train.swap_attributes == ("shape", "motion")
    with pytest.raises(ConfigError, match="swap_attributes"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.swap_attributes=[colour]"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="crop"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.crop=8", "train.crop_every=2"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="swap_input"):
        load_config(["configs/teacher_toy.yaml"], ["train.swap_input=1.5"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="swap_sigma_min"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.swap_sigma_min=1.0"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="track_loss_weight"):
        load_config(["configs/teacher_toy.yaml"], ["train.track_loss_weight=0"], schema=TeacherRunConfig)
