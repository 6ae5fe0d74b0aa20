"""Evaluation metrics: drift, background error, sharpness, tables, video files."""

import numpy as np
import pytest

from streamgen.toyworld.captions import canonical_caption, paraphrase
from streamgen.toyworld.evaluate import (
    DRIFT_FIRST_S,
    evaluate_clip,
    evaluate_video_file,
    format_table,
)
from streamgen.toyworld.render import render_clip, render_segments
from streamgen.toyworld.world import FPS, PALETTE, ClipSpec


def test_drift_background_error_and_sharpness():
    spec = ClipSpec("square", "orange", "blue", "moving right", None, 24, 60.0, 64.0)
    n = 24 * FPS
    frames = render_clip(spec, n)
    clean = evaluate_clip(frames, spec)
    assert clean.drift is not None
    assert clean.drift.first.colour == clean.drift.last.colour == 1.0
    assert clean.background_error == 0.0 and clean.edge_sharpness == pytest.approx(1.0)
    # degrade everything after 10 s (the clip's "last" part is 10..24 s as it is shorter
    # than 70 s): the object turns red, the background brightens, edges blur
    bad = frames.astype(np.float32)
    half = int(DRIFT_FIRST_S * FPS)
    obj = (frames[half:] == np.array(PALETTE["orange"], dtype=np.uint8)).all(-1)
    bad[half:][obj] = PALETTE["red"]
    bad[half:][~obj] += 20
    pad = np.pad(bad[half:], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    bad[half:] = sum(pad[:, i:i + 128, j:j + 128] for i in range(3) for j in range(3)) / 9
    ev = evaluate_clip(np.clip(bad, 0, 255).astype(np.uint8), spec)
    assert ev.drift.first.colour == 1.0 and ev.drift.last.colour == 0.0
    assert ev.drift.first_s == (0.0, DRIFT_FIRST_S) and ev.drift.last_s == (DRIFT_FIRST_S, 24.0)
    # +20 per channel on 14 of 24 s (the blur keeps the flat background's value)
    assert ev.background_error == pytest.approx(20.0 * (n - half) / n, abs=1.0)
    assert ev.edge_sharpness < 0.8
    row = ev.row(name="degraded")
    assert row["name"] == "degraded" and row["drift_colour"] < -0.9
    # short clips have no drift
    assert evaluate_clip(frames[:64], spec).drift is None


def test_timeline_with_captions():
    a = ClipSpec("circle", "red", "black", "moving right", None, 24, 40.0, 64.0)
    b = a.with_attributes(shape="star", colour="white")
    frames = render_segments([(40, a), (40, b)])
    rng = np.random.default_rng(0)
    ev = evaluate_clip(frames, [(0, canonical_caption(a)), (40, paraphrase(b, rng))])
    assert ev.accuracy.shape == 1.0 and ev.switches[0].response_frames == 0
    with pytest.raises(ValueError):
        evaluate_clip(frames, [(10, a)])  # a timeline starts at frame 0


def test_format_table_aligns():
    text = format_table([
        {"model": "teacher", "colour": 0.98765, "motion": 1.0, "switch": None},
        {"model": "student-4step", "colour": 0.5, "motion": 0.25, "extra": 3},
    ])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1
    header = lines[0].split()
    assert header == ["model", "colour", "motion", "switch", "extra"]
    assert lines[2].split() == ["teacher", "0.988", "1.000", "-", "-"]
    assert lines[3].split() == ["student-4step", "0.500", "0.250", "-", "3"]
    # numbers are right-aligned: the column ends line up
    assert lines[2].index("0.988") + 5 == lines[3].index("0.500") + 5
    assert format_table([]) == ""


def test_evaluate_video_file_mp4(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    a = ClipSpec("star", "yellow", "blue", "moving left", None, 26, 80.0, 64.0)
    b = a.with_attributes(colour="white", motion="moving up")
    frames = render_segments([(32, a), (32, b)])
    path = str(tmp_path / "clip.mp4")
    imageio.mimwrite(path, list(frames), fps=FPS, quality=8, macro_block_size=16)
    ev = evaluate_video_file(path, timeline=[{"at": 0, "prompt": canonical_caption(a)},
                                             {"at": 2.0, "prompt": canonical_caption(b)}])
    assert ev.num_frames == 64
    acc = ev.accuracy
    assert min(acc.colour, acc.shape, acc.background, acc.presence) >= 0.95
    assert acc.motion >= 0.9
    assert ev.switches[0].response_frames is not None and ev.switches[0].response_frames <= 3
    assert 0 < ev.background_error < 8  # compression shifts colours a little
    single = evaluate_video_file(path, prompt=canonical_caption(a))
    assert single.accuracy.colour == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError):
        evaluate_video_file(path)
