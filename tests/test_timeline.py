import json

import pytest

from streamgen.timeline import Timeline, TimelineError, chunk_of_frame, latent_index

OK = [{"at": 0, "prompt": "a"}, {"at": 2.5, "prompt": "b"}, {"at": "48f", "prompt": "c"}, {"frame": 60, "prompt": "d"}]


def test_units_seconds_and_frames():
    tl = Timeline.from_entries(OK, fps=16, total_frames=100)
    assert [e.frame for e in tl.events] == [0, 40, 48, 60]
    assert tl.prompt_at(39) == "a" and tl.prompt_at(40) == "b" and tl.prompt_at(99) == "d"
    tl = Timeline.from_entries({"timeline": [{"at": "0s", "prompt": "x"}, {"at": "1.5s", "prompt": "y"}]}, fps=16)
    assert [e.frame for e in tl.events] == [0, 24]


@pytest.mark.parametrize("entries,msg", [
    ([], "non-empty list"),
    ("a prompt", "non-empty list"),
    ([{"at": 1, "prompt": "a"}], "entry 1: the first prompt must start at 0"),
    ([{"at": 0, "prompt": "a"}, {"at": 2, "prompt": "b"}, {"at": 1, "prompt": "c"}], "entry 3: times must increase"),
    ([{"at": 0, "prompt": "a"}, {"at": 0, "prompt": "b"}], "entry 2: times must increase"),
    ([{"at": 0, "prompt": ""}], "entry 1: 'prompt' must be a non-empty string"),
    ([{"at": 0}], "'prompt' must be a non-empty string"),
    ([{"at": 0, "prompt": "a"}, {"at": 99, "prompt": "b"}], "entry 2: frame 1584 lies outside the video"),
    ([{"at": 0, "prompt": "a", "colour": "red"}], "unknown key"),
    ([{"at": 0, "frame": 0, "prompt": "a"}], "exactly one of 'at'"),
    ([{"at": "soon", "prompt": "a"}], "'at' must be seconds"),
    ([{"at": -1, "prompt": "a"}], "non-negative"),
    ([{"frame": 1.5, "prompt": "a"}], "'frame' must be a non-negative integer"),
    (["just text"], "entry 1: must be a mapping"),
])
def test_each_bad_timeline_gets_its_error(entries, msg):
    with pytest.raises(TimelineError, match=msg):
        Timeline.from_entries(entries, fps=16, total_frames=100)


def test_load_files(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(OK))
    assert len(Timeline.load(tmp_path / "t.json", 16).events) == 4
    (tmp_path / "t.yaml").write_text("- {at: 0, prompt: a}\n- {at: 1, prompt: b}\n")
    assert Timeline.load(tmp_path / "t.yaml", 16).events[1].frame == 16
    (tmp_path / "bad.yaml").write_text("- {at: 0, prompt: [unclosed\n")
    with pytest.raises(TimelineError, match="not valid YAML"):
        Timeline.load(tmp_path / "bad.yaml", 16)
    with pytest.raises(TimelineError, match="not found"):
        Timeline.load(tmp_path / "nope.yaml", 16)


def test_pixel_frames_map_to_chunks():
    # causal VAE: latent 0 = pixel 0, latent k = pixels 4k-3 .. 4k
    assert [latent_index(f) for f in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    # chunks of 3 latents: chunk 0 = pixels 0..8, chunk 1 = pixels 9..20, chunk 2 from 21
    assert [chunk_of_frame(f, 3) for f in (0, 8, 9, 20, 21, 32, 33)] == [0, 0, 1, 1, 2, 2, 3]
