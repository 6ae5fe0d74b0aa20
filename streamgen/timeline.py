"""Prompt timelines: which prompt holds from which pixel frame on.

A timeline file is YAML or JSON: a list of entries (or a mapping with a ``timeline`` list), each
``{at: <seconds>, prompt: ...}``. ``at`` is in seconds (``2.5`` or ``"2.5s"``) or in pixel frames
(``"40f"``, or ``frame: 40`` instead of ``at``) -- never in latent indices. Validation names the
entry and the rule it breaks.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class TimelineError(ValueError):
    pass


@dataclass(frozen=True)
class PromptEvent:
    frame: int  # first pixel frame the prompt conditions
    prompt: str


@dataclass(frozen=True)
class Timeline:
    events: tuple[PromptEvent, ...]

    @classmethod
    def single(cls, prompt: str) -> "Timeline":
        if not isinstance(prompt, str) or not prompt.strip():
            raise TimelineError("the prompt must be a non-empty string")
        return cls((PromptEvent(0, prompt),))

    def prompt_at(self, frame: int) -> str:
        current = self.events[0].prompt
        for e in self.events:
            if e.frame <= frame:
                current = e.prompt
        return current

    def switches(self) -> list[PromptEvent]:
        return list(self.events[1:])

    # -- parsing -----------------------------------------------------------------------------
    @classmethod
    def from_entries(cls, entries, fps: int, total_frames: int | None = None, source: str = "timeline") -> "Timeline":
        if isinstance(entries, dict):
            if "timeline" not in entries:
                raise TimelineError(f"{source}: expected a list of {{at, prompt}} entries or a mapping with a 'timeline' list")
            entries = entries["timeline"]
        if not isinstance(entries, list) or not entries:
            raise TimelineError(f"{source}: the timeline must be a non-empty list of {{at: <seconds>, prompt: <text>}} entries")
        events = []
        for i, e in enumerate(entries):
            where = f"{source}: entry {i + 1}"
            if not isinstance(e, dict):
                raise TimelineError(f"{where}: must be a mapping like {{at: 2.0, prompt: '...'}}, got {e!r}")
            unknown = set(e) - {"at", "frame", "prompt"}
            if unknown:
                raise TimelineError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: at, frame, prompt")
            prompt = e.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise TimelineError(f"{where}: 'prompt' must be a non-empty string")
            if ("at" in e) == ("frame" in e):
                raise TimelineError(f"{where}: give exactly one of 'at' (seconds, or '40f' for frames) or 'frame'")
            frame = _to_frame(e["at"], fps, where) if "at" in e else _frame_value(e["frame"], where)
            if events and frame <= events[-1].frame:
                raise TimelineError(f"{where}: times must increase (frame {frame} is not after frame {events[-1].frame})")
            if not events and frame != 0:
                raise TimelineError(f"{where}: the first prompt must start at 0 (got frame {frame})")
            if total_frames is not None and frame >= total_frames:
                raise TimelineError(f"{where}: frame {frame} lies outside the video ({total_frames} frames); shorten it or lengthen the video")
            events.append(PromptEvent(frame, prompt.strip()))
        return cls(tuple(events))

    @classmethod
    def load(cls, path: str | Path, fps: int, total_frames: int | None = None) -> "Timeline":
        p = Path(path)
        if not p.is_file():
            raise TimelineError(f"timeline file not found: {p}")
        text = p.read_text()
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise TimelineError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
        return cls.from_entries(data, fps, total_frames, source=str(p))


def _frame_value(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TimelineError(f"{where}: 'frame' must be a non-negative integer pixel frame, got {v!r}")
    return v


def _to_frame(at, fps: int, where: str) -> int:
    if isinstance(at, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|f)?\s*", at)
        if not m:
            raise TimelineError(f"{where}: 'at' must be seconds (2.5 or '2.5s') or frames ('40f'), got {at!r}")
        value, unit = float(m.group(1)), m.group(2) or "s"
        if unit == "f":
            if not value.is_integer():
                raise TimelineError(f"{where}: a frame number must be whole, got {at!r}")
            return int(value)
        at = value
    if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0:
        raise TimelineError(f"{where}: 'at' must be a non-negative number of seconds, got {at!r}")
    return int(round(at * fps))


def latent_index(pixel_frame: int, temporal: int = 4) -> int:
    """Latent frame holding ``pixel_frame`` under causal 1 + 4k compression."""
    return 0 if pixel_frame == 0 else (pixel_frame - 1) // temporal + 1


def chunk_of_frame(pixel_frame: int, chunk_frames: int, temporal: int = 4) -> int:
    """Chunk (of ``chunk_frames`` latent frames) whose decoded pixels contain ``pixel_frame``."""
    return latent_index(pixel_frame, temporal) // chunk_frames
