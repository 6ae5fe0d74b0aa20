"""Captions: canonical form, paraphrases, and parsing both back to the attributes."""

import numpy as np
import pytest

from streamgen.toyworld.captions import (
    COLOUR_SYNONYMS,
    MOTION_SYNONYMS,
    SHAPE_SYNONYMS,
    SPEED_SYNONYMS,
    canonical_caption,
    paraphrase,
    parse_caption,
)
from streamgen.toyworld.world import Attributes, ClipSpec, sample_spec


def test_canonical_form():
    assert canonical_caption(ClipSpec("circle", "red", "black", "moving right", "quickly")) == (
        "a red circle moving right quickly on a black background")
    assert canonical_caption(Attributes("star", "gray", "white", "bouncing diagonally", "slowly")) == (
        "a gray star bouncing diagonally slowly on a white background")
    assert canonical_caption(Attributes("square", "blue", "yellow", "moving up")) == (
        "a blue square moving up on a yellow background")  # default speed: no word
    assert canonical_caption(Attributes("triangle", "cyan", "red", "pulsing")) == (
        "a cyan triangle pulsing on a red background")


def test_round_trip_canonical_and_paraphrase():
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(1500):
        spec = sample_spec(rng, "any")
        assert parse_caption(canonical_caption(spec)) == spec.attributes
        text = paraphrase(spec, rng)
        seen.add(text)
        assert parse_caption(text) == spec.attributes, text
    assert len(seen) > 1400  # paraphrases vary


def test_paraphrases_use_every_synonym():
    rng = np.random.default_rng(12)
    texts = " | ".join(paraphrase(sample_spec(rng, "any"), rng) for _ in range(4000))
    for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, MOTION_SYNONYMS, SPEED_SYNONYMS):
        for phrases in table.values():
            for phrase in phrases:
                assert phrase in texts, phrase


def test_spec_example_paraphrase():
    assert parse_caption("a crimson ball drifting to the left over a dark backdrop") == Attributes(
        "circle", "red", "black", "moving left")
    assert parse_caption("On a GREY backdrop, an amber wedge is falling rapidly.") == Attributes(
        "triangle", "orange", "gray", "moving down", "quickly")


@pytest.mark.parametrize("text, fragment", [
    ("a red circle moving sideways on a black background", "sideways"),
    ("a red hexagon moving left on a black background", "hexagon"),
    ("a red circle moving left on a black background with sparkles", "sparkles"),
    ("a red circle on a black background", "no motion"),
    ("a circle moving left on a black background", "no colour"),
    ("a red circle moving left", "no background"),
    ("a red blue circle moving left on a black background", "several colour"),
    ("a red circle still quickly on a black background", "takes no speed"),
    ("a red circle moving left on a red background", "both 'red'"),
])
def test_parse_errors_name_the_problem(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_caption(text)
