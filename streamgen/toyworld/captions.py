"""Captions of the toy world: canonical form, paraphrases, and a parser for both.

Canonical: ``a {colour} {shape} {motion} [{speed}] on a {background} background``; the
speed word (slowly / quickly) appears only for moving motions at a non-default speed.
Paraphrases swap in synonyms (SYNONYMS) and sentence templates (TEMPLATES); parse_caption
understands every phrase in SYNONYMS in any order, so it inverts both.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from .world import COLOURS, MOTIONS, SHAPES, SPEED_NAMES, STATIC_MOTIONS, Attributes

# Synonym lists; the first entry of each list is the canonical word. Every phrase maps to
# exactly one value across all categories (checked at import).
COLOUR_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "grass-green"),
    "blue": ("blue", "cobalt", "royal blue"),
    "yellow": ("yellow", "golden", "lemon"),
    "magenta": ("magenta", "fuchsia", "hot pink"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "orange": ("orange", "tangerine", "amber"),
    "white": ("white", "snow-white", "ivory"),
    "black": ("black", "dark", "jet-black", "ebony"),
    "gray": ("gray", "grey", "silver", "ash-gray"),
}
SHAPE_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "pyramid"),
    "star": ("star", "five-pointed star", "starburst"),
}
MOTION_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "moving left": ("moving left", "drifting to the left", "sliding left", "heading left",
                    "travelling leftward", "moving to the left"),
    "moving right": ("moving right", "drifting to the right", "sliding right", "heading right",
                     "travelling rightward", "moving to the right"),
    "moving up": ("moving up", "rising", "drifting upward", "floating up", "heading up",
                  "moving upward"),
    "moving down": ("moving down", "falling", "sinking", "drifting downward", "heading down",
                    "moving downward"),
    "still": ("still", "standing still", "motionless", "stationary", "not moving", "at rest"),
    "bouncing diagonally": ("bouncing diagonally", "ricocheting diagonally",
                            "moving diagonally", "bouncing around diagonally"),
    "pulsing": ("pulsing", "pulsating", "throbbing", "growing and shrinking", "breathing"),
}
SPEED_SYNONYMS: Mapping[str | None, tuple[str, ...]] = {
    "slowly": ("slowly", "gently", "at a slow pace", "unhurriedly"),
    "quickly": ("quickly", "fast", "rapidly", "swiftly", "at high speed"),
    None: ("", "at a steady pace", "at normal speed"),  # "" = no speed phrase
}
BACKGROUND_NOUNS: tuple[str, ...] = ("background", "backdrop", "canvas", "scene")
# Words that carry no attribute and may appear anywhere in a caption.
FILLER_WORDS: frozenset[str] = frozenset(
    "a an the on over against in front of with that is which there it behind".split()
)
# {c} colour, {s} shape, {m} motion, {v} speed phrase (may be empty), {b} background colour,
# {n} background noun. {A} / {Ab} are the article for {c} / {b}.
TEMPLATES: tuple[str, ...] = (
    "{A} {c} {s} {m} {v} on {Ab} {b} {n}",
    "{A} {c} {s} {m} {v} over {Ab} {b} {n}",
    "{A} {c} {s} that is {m} {v} against {Ab} {b} {n}",
    "on {Ab} {b} {n}, {A} {c} {s} {m} {v}",
    "{Ab} {b} {n} with {A} {c} {s} {m} {v}",
    "there is {A} {c} {s} {m} {v} in front of {Ab} {b} {n}",
    "{A} {c} {s}, {m} {v}, on {Ab} {b} {n}",
)

_CATEGORY_TABLES: Mapping[str, Mapping] = {
    "colour": COLOUR_SYNONYMS,
    "shape": SHAPE_SYNONYMS,
    "motion": MOTION_SYNONYMS,
    "speed": SPEED_SYNONYMS,
}


def _tokens(text: str) -> list[str]:
    """Lower-case words; punctuation other than '-' separates words."""
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def _build_lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    lexicon: dict[tuple[str, ...], tuple[str, object]] = {}
    for category, table in _CATEGORY_TABLES.items():
        for value, phrases in table.items():
            for phrase in phrases:
                key = tuple(_tokens(phrase))
                if not key:
                    continue
                if key in lexicon and lexicon[key] != (category, value):
                    raise AssertionError(f"ambiguous phrase {phrase!r}")
                lexicon[key] = (category, value)
    return lexicon


_LEXICON = _build_lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)
assert set(COLOUR_SYNONYMS) == set(COLOURS) and set(SHAPE_SYNONYMS) == set(SHAPES)
assert set(MOTION_SYNONYMS) == set(MOTIONS) and set(SPEED_SYNONYMS) == {*SPEED_NAMES, None}


def canonical_caption(spec: Attributes) -> str:
    """``a {colour} {shape} {motion} [{speed}] on a {background} background``."""
    speed = f" {spec.speed}" if spec.speed is not None and spec.motion not in STATIC_MOTIONS else ""
    return f"a {spec.colour} {spec.shape} {spec.motion}{speed} on a {spec.background} background"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def paraphrase(spec: Attributes, rng: np.random.Generator) -> str:
    """A random paraphrase of the spec's caption (synonyms + a sentence template).

    E.g. "a crimson ball drifting to the left over a dark backdrop". Always parseable by
    parse_caption back to the same attributes.
    """

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    c = pick(COLOUR_SYNONYMS[spec.colour])
    b = pick(COLOUR_SYNONYMS[spec.background])
    speed = spec.speed if spec.motion not in STATIC_MOTIONS else None
    v = pick(SPEED_SYNONYMS[speed]) if spec.motion not in STATIC_MOTIONS else ""
    text = pick(TEMPLATES).format(
        A=_article(c), c=c, s=pick(SHAPE_SYNONYMS[spec.shape]), m=pick(MOTION_SYNONYMS[spec.motion]),
        v=v, Ab=_article(b), b=b, n=pick(BACKGROUND_NOUNS),
    )
    text = re.sub(r"\s+,", ",", text)
    return re.sub(r"\s+", " ", text).strip()


def parse_caption(text: str) -> Attributes:
    """Parse a canonical caption or a paraphrase into Attributes.

    Phrases are matched longest first; a colour directly followed by a background noun
    (background, backdrop, canvas, scene) is the background. Raises ValueError naming
    the unparsed words, or the missing / repeated attribute.
    """
    words = _tokens(text)
    found: dict[str, list[object]] = {"colour": [], "shape": [], "motion": [], "speed": [],
                                      "background": []}
    unparsed: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            hit = _LEXICON.get(tuple(words[i : i + n]))
            if hit is not None:
                category, value = hit
                if category == "colour" and i + n < len(words) and words[i + n] in BACKGROUND_NOUNS:
                    category, n = "background", n + 1
                found[category].append(value)
                i += n
                break
        else:
            if words[i] not in FILLER_WORDS:
                unparsed.append(words[i])
            i += 1
    if unparsed:
        raise ValueError(f"could not parse {' '.join(unparsed)!r} in caption {text!r}")
    for category in ("colour", "shape", "motion", "background"):
        if len(found[category]) != 1:
            what = "no" if not found[category] else "several"
            raise ValueError(f"{what} {category} in caption {text!r}: {found[category]}")
    if len(found["speed"]) > 1:
        raise ValueError(f"several speeds in caption {text!r}: {found['speed']}")
    speed = found["speed"][0] if found["speed"] else None
    motion = str(found["motion"][0])
    if speed is not None and motion in STATIC_MOTIONS:
        raise ValueError(f"motion {motion!r} takes no speed, got {speed!r} in {text!r}")
    try:
        return Attributes(str(found["shape"][0]), str(found["colour"][0]),
                          str(found["background"][0]), motion, speed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{exc} in caption {text!r}") from None


__all__ = [
    "BACKGROUND_NOUNS", "COLOUR_SYNONYMS", "MOTION_SYNONYMS", "SHAPE_SYNONYMS", "SPEED_SYNONYMS",
    "TEMPLATES", "canonical_caption", "paraphrase", "parse_caption",
]
