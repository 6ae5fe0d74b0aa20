"""Counterfactual inputs (train.swap_input): the clip re-rendered with its shape or motion changed, checked by the
detector against the original render, and the trainer step that uses them."""
import numpy as np
import pytest

from streamgen.config import ConfigError, TeacherRunConfig, load_config
from streamgen.data import counterfactual_frames, counterfactual_track, ghost_copy, swap_kinds
from streamgen.toyworld.detector import detect_frames
from streamgen.toyworld.evaluate import evaluate_clip
from streamgen.toyworld.render import render_track, simulate
from streamgen.toyworld.world import CANVAS, DIAGONAL, MOTIONS, PALETTE, SHAPES, TRAIN_COMBOS, sample_spec

FRAMES = 13


def _specs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng) for _ in range(n)], rng


def _swapped(n, seed, swap):
    """``(spec, real track, counterfactual track)`` of ``n`` random clips cut at random phases."""
    specs, rng = _specs(n, seed)
    for spec in specs:
        start = int(rng.integers(0, 64))
        yield spec, simulate(spec, FRAMES, start)[0], counterfactual_track(spec, FRAMES, start, swap, rng)


def test_a_shape_swap_keeps_the_track_and_draws_another_training_shape():
    for spec, real, cf in _swapped(24, 0, ["shape"]):
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
    moved = 0
    for spec, real, cf in _swapped(40, 1, ["motion"]):
        other = cf.specs[0]
        assert other.motion != spec.motion and (spec.shape, spec.colour, other.motion) in TRAIN_COMBOS
        assert abs(cf.x[0] - real.x[0]) <= 0.3 * spec.size and abs(cf.y[0] - real.y[0]) <= 0.3 * spec.size
        # the detector reads the counterfactual's own motion, not the original's
        ev = evaluate_clip(render_track(cf), other)
        moved += ev.accuracy.motion == 1.0
    assert moved >= 0.85 * 40


def test_swap_input_config_errors_name_the_fix():
    base = ["train.swap_input=0.5"]
    cfg = load_config(["configs/teacher_toy.yaml"], base, schema=TeacherRunConfig)
    assert cfg.train.swap_attributes == ("shape", "motion", "bounce", "count") and cfg.train.swap_one_at_a_time
    with pytest.raises(ConfigError, match="swap_attributes"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.swap_attributes=[colour]"], schema=TeacherRunConfig)
    cfg = load_config(["configs/teacher_toy.yaml"], base + ["train.swap_attributes=[shape, count]",
                                                            "train.swap_one_at_a_time=true"], schema=TeacherRunConfig)
    assert cfg.train.swap_attributes == ("shape", "count") and cfg.train.swap_one_at_a_time
    with pytest.raises(ConfigError, match="crop"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.crop=8", "train.crop_every=2"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="swap_input"):
        load_config(["configs/teacher_toy.yaml"], ["train.swap_input=1.5"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="swap_sigma_min"):
        load_config(["configs/teacher_toy.yaml"], base + ["train.swap_sigma_min=1.0"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="track_loss_weight"):
        load_config(["configs/teacher_toy.yaml"], ["train.track_loss_weight=0"], schema=TeacherRunConfig)


def test_a_count_swap_adds_one_fainter_copy_that_moves_with_the_object():
    specs, rng = _specs(24, seed=2)
    placed = 0
    for spec in specs:
        frames = render_track(simulate(spec, FRAMES, int(rng.integers(0, 64)))[0])
        bg = np.array(PALETTE[spec.background], dtype=np.uint8)
        ghost = ghost_copy(frames, bg, rng)
        obj = np.any(frames != bg, axis=-1)
        changed = np.any(ghost != frames, axis=-1)
        if not changed.any():
            continue
        placed += 1
        assert not (changed & obj).any()  # the object itself is untouched
        # every frame's change is that frame's object moved by one offset, for the whole clip
        offsets = set()
        for t in range(FRAMES):
            ys, xs = np.nonzero(obj[t])
            cy, cx = np.nonzero(changed[t])
            assert len(cy) == len(ys)
            offsets.add((cy.min() - ys.min(), cx.min() - xs.min()))
        assert len(offsets) == 1
        # fainter: between the backdrop and the object's colour, strictly
        d_obj = np.abs(frames[obj].astype(int) - bg.astype(int)).sum(-1).mean()
        d_ghost = np.abs(ghost[changed].astype(int) - bg.astype(int)).sum(-1).mean()
        assert 0.2 * d_obj < d_ghost < 0.9 * d_obj
    assert placed >= 0.75 * len(specs)
    # a strong copy is a second object to the detector: presence (exactly one object) fails
    spec = specs[0]
    frames = render_track(simulate(spec, FRAMES, 0)[0])
    strong = ghost_copy(frames, PALETTE[spec.background], np.random.default_rng(0), alpha=(0.9, 0.9))
    assert detect_frames(frames).present.mean() == 1.0 and detect_frames(strong).present.mean() < 0.2


def test_one_at_a_time_changes_exactly_one_attribute_per_clip():
    specs, rng = _specs(40, seed=3)
    starts = [0] * len(specs)
    cf = counterfactual_frames(specs, starts, FRAMES, ["shape", "motion"], np.random.default_rng(4), one_at_a_time=True)
    both = counterfactual_frames(specs, starts, FRAMES, ["shape", "motion"], np.random.default_rng(4))
    assert cf.shape == (len(specs), FRAMES, CANVAS, CANVAS, 3)
    wrong_one = [_wrong(clip, spec) for clip, spec in zip(cf, specs)]
    # all at once: both attributes wrong, except on diagonal clips, which never get a motion swap (swap_kinds)
    wrong_all = [_wrong(clip, spec) for clip, spec in zip(both, specs) if spec.motion != DIAGONAL]
    assert sum(w == 1 for w in wrong_one) >= 0.8 * len(specs)
    assert sum(w == 2 for w in wrong_all) >= 0.8 * len(wrong_all) and len(wrong_all) >= 20
    assert all(_wrong_names(clip, spec) <= {"shape"} for clip, spec in zip(both, specs) if spec.motion == DIAGONAL)
    assert {"shape", "motion"} <= set().union(*(_wrong_names(c, s) for c, s in zip(cf, specs)))


def _wrong_names(clip, spec):
    acc = evaluate_clip(clip, spec).accuracy
    return {name for name in ("shape", "motion") if getattr(acc, name) < 0.5}


def _wrong(clip, spec):
    return len(_wrong_names(clip, spec))


def test_a_bounce_swap_turns_the_object_back_away_from_the_border():
    turned = 0
    for spec, real, cf in _swapped(40, 5, ["bounce"]):
        assert cf.specs == real.specs
        moves = np.abs(np.diff(real.x)).max() + np.abs(np.diff(real.y)).max() > 0.1
        if not moves:
            np.testing.assert_array_equal(cf.x, real.x)
            np.testing.assert_array_equal(cf.y, real.y)
            continue
        k = int(np.argmax((np.abs(cf.x - real.x) + np.abs(cf.y - real.y)) > 1e-9)) - 1  # last shared frame
        assert 1 <= k <= FRAMES - 2
        np.testing.assert_array_equal(cf.x[: k + 1], real.x[: k + 1])
        # the detector sees the centroid come back: after frame k it moves against its motion before k
        det = detect_frames(render_track(cf))
        before = np.array([det.cx[k] - det.cx[0], det.cy[k] - det.cy[0]])
        after = np.array([det.cx[-1] - det.cx[k], det.cy[-1] - det.cy[k]])
        if np.abs(before).max() > 3 and np.abs(after).max() > 3 and np.abs(np.diff(real.x)).max() < 8:
            turned += 1
            assert before @ after < 0 or (real.hx[0] != real.hx[-1] or real.hy[0] != real.hy[-1])
    assert turned >= 5


def test_a_diagonal_clip_is_never_motion_swapped():
    """A motion swap of a diagonal clip would leave at least one axis's heading to chance (``data.swap_kinds``):
    the diagonal clips come back as they were with ``[motion]``, and get only the other change with one at a time;
    the other clips still get their motion changed."""
    rng = np.random.default_rng(11)
    specs = [sample_spec(rng, motion_weights={"bouncing diagonally": 1.0, **{m: 0.3 for m in MOTIONS if m != DIAGONAL}})
             for _ in range(24)]
    diag = [s.motion == DIAGONAL for s in specs]
    assert 4 <= sum(diag) <= 20
    assert swap_kinds(specs[diag.index(True)], ["shape", "motion", "count"]) == ["shape", "count"]
    assert swap_kinds(specs[diag.index(False)], ["shape", "motion"]) == ["shape", "motion"]
    starts = [int(v) for v in rng.integers(0, 64, len(specs))]
    real = np.stack([render_track(simulate(s, FRAMES, f0)[0]) for s, f0 in zip(specs, starts)])
    motion = counterfactual_frames(specs, starts, FRAMES, ["motion"], np.random.default_rng(12))
    one = counterfactual_frames(specs, starts, FRAMES, ["shape", "motion"], np.random.default_rng(13), one_at_a_time=True)
    for i, spec in enumerate(specs):
        if diag[i]:
            np.testing.assert_array_equal(motion[i], real[i])
            assert _wrong_names(one[i], spec) <= {"shape"}
            # same track: the centroid of another outline on it stays within a few pixels of the real one
            d_one, d_real = detect_frames(one[i]), detect_frames(real[i])
            assert np.abs(d_one.cx - d_real.cx).max() < 4 and np.abs(d_one.cy - d_real.cy).max() < 4
    changed = [not np.array_equal(motion[i], real[i]) for i in range(len(specs)) if not diag[i]]
    assert sum(changed) >= 0.8 * len(changed)


def test_motion_weights_config_errors_name_the_fix():
    cfg = load_config([], ["train.motion_weights={bouncing diagonally: 2}"], schema=TeacherRunConfig)
    assert cfg.train.motion_weights == {"bouncing diagonally": 2.0}
    for bad in ("{diagonal: 2}", "{still: -1}"):
        with pytest.raises(ConfigError, match="train.motion_weights maps some of"):
            load_config([], [f"train.motion_weights={bad}"], schema=TeacherRunConfig)
