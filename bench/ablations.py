"""Ablation table of the distilled student: every row is the toy-world eval suite
(``streamgen.eval_suite.pipeline_suite``) run on one model directory with config overrides.

    python bench/ablations.py --student runs/distill/student --teacher-forcing runs/ode_init/student \
        --long-seconds 180 [--groups training,sink,switch] [--prompts 8] [--seconds 4]

Groups (the rows issue #5 asks for):
- ``training``: teacher-forcing student (ODE regression on the teacher's trajectories, which attends to
  the teacher's clean frames: CausVid's initialisation) vs the Self-Forcing (DMD) student; drift over
  the long stream.
- ``sink``: the Self-Forcing student with sink none / anchor / ema / deep (accuracy, drift, speed ratio).
- ``switch``: switch mode recache / none / blend (switch response in frames, centroid jump in px).

Prints one table per group (markdown, for bench/RESULTS.md). Run it on a quiet machine: the
suite's ``fps`` column is wall-clock.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import table  # noqa: E402
from streamgen.eval_suite import pipeline_suite  # noqa: E402
from streamgen.pipeline import StreamingPipeline  # noqa: E402

def sink_rows(window_frames: int) -> dict[str, list[str]]:
    """Overrides per sink row. Deep Forcing's sink is large (half the window here): with the default's
    ``rebased`` positions a one-frame ``deep`` sink is the ``anchor`` sink (same frames, same phase)."""
    return {
        "none": ["cache.sink_policy=none", "cache.sink_frames=0"],
        "anchor": ["cache.sink_policy=anchor"],
        "ema": ["cache.sink_policy=ema"],
        "deep": ["cache.sink_policy=deep", f"cache.sink_frames={max(2, window_frames // 2)}"],
    }


SWITCHES = {mode: [f"switch.mode={mode}"] for mode in ("recache", "none", "blend")}
COLUMNS = ("run", "set", "colour", "shape", "background", "motion", "presence", "speed_ratio", "fps",
           "switch_resp_median", "switch_jump_px", "drift_colour", "drift_shape", "drift_motion", "drift_presence")


def rows_for(model: str, overrides: list[str], label: str, sets: tuple[str, ...], args) -> list[dict]:
    pipe = StreamingPipeline.from_pretrained(model, overrides)
    rows, _ = pipeline_suite(pipe, num_prompts=args.prompts, seconds=args.seconds,
                             long_seconds=args.long_seconds, label=label)
    keep = [r for r in rows if any(str(r["set"]).startswith(s) for s in sets)]
    return [{c: r.get(c) if r.get(c) is not None else "-" for c in COLUMNS} for r in keep]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="the Self-Forcing (DMD) student's model directory")
    ap.add_argument("--teacher-forcing", default=None, help="the teacher-forcing (ODE-regression) student's directory")
    ap.add_argument("--groups", default="training,sink,switch")
    ap.add_argument("--sinks", default="none,anchor,ema,deep", help="sink rows to run")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--long-seconds", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = set(groups) - {"training", "sink", "switch"}
    if unknown:
        ap.error(f"unknown groups {sorted(unknown)}; choose from training, sink, switch")
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    unknown = set(sinks) - set(sink_rows(1))
    if unknown:
        ap.error(f"unknown sinks {sorted(unknown)}; choose from {', '.join(sink_rows(1))}")
    if "training" in groups and not args.teacher_forcing:
        ap.error("the training group needs --teacher-forcing DIR (e.g. runs/ode_init/student)")
    long_set = ("train/canonical", "long")
    for group in groups:
        rows = []
        if group == "training":
            rows += rows_for(args.teacher_forcing, [], "teacher-forcing (ODE regression)", long_set, args)
            rows += rows_for(args.student, [], "Self-Forcing (DMD)", long_set, args)
        elif group == "sink":
            overrides = sink_rows(StreamingPipeline.load_config(args.student).cache.window_frames)
            for name in sinks:
                rows += rows_for(args.student, overrides[name], f"sink {name}", long_set, args)
        else:
            for name, ov in SWITCHES.items():
                rows += rows_for(args.student, ov, f"switch {name}", ("switch",), args)
        print(f"\n### {group}\n\n{table(rows)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
