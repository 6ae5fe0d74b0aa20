"""The toy world: a procedurally rendered domain with known ground truth.

world: constants (palette, shapes, motions, speeds, sizes) and ClipSpec / sample_spec.
render: deterministic renderer and physics (render_clip, render_segments, simulate).
captions: canonical captions, paraphrases and parse_caption.
detector: a model-free detector (detect_frames, detect_clip).
evaluate: prompt-adherence metrics (evaluate_clip, evaluate_video_file, format_table).
"""

from .captions import canonical_caption, paraphrase, parse_caption
from .detector import DetectorConfig, FrameDetections, detect_clip, detect_frames
from .evaluate import ClipEvaluation, evaluate_clip, evaluate_video_file, format_table
from .render import (
    Track,
    render_batch,
    render_clip,
    render_segments,
    simulate,
    simulate_segments,
)
from .world import (
    CANVAS,
    COLOURS,
    FPS,
    MOTIONS,
    PALETTE,
    SHAPES,
    Attributes,
    ClipSpec,
    is_heldout,
    sample_spec,
)

__all__ = [
    "CANVAS", "COLOURS", "FPS", "MOTIONS", "PALETTE", "SHAPES", "Attributes", "ClipEvaluation",
    "ClipSpec", "DetectorConfig", "FrameDetections", "Track", "canonical_caption", "detect_clip",
    "detect_frames", "evaluate_clip", "evaluate_video_file", "format_table", "is_heldout",
    "paraphrase", "parse_caption", "render_batch", "render_clip", "render_segments",
    "sample_spec", "simulate", "simulate_segments",
]
