"""Command line: ``streamgen generate`` and ``streamgen eval``.

    streamgen generate --prompt "a red circle moving right on a black background" --seconds 10 --out out.mp4
    streamgen generate --timeline assets/timelines/demo.yaml --out demo.mp4 cache.sink_policy=ema
    streamgen eval out.mp4 --prompt "a red circle moving right on a black background"
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt or a prompt timeline",
                       description="Generate a video chunk by chunk; frames are written as they are decoded.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt")
    src.add_argument("--timeline", help="YAML/JSON timeline: [{at: seconds, prompt: ...}, ...]")
    p.add_argument("--seconds", type=float, default=None, help="video length (default: 10, or the timeline's 'seconds')")
    p.add_argument("--out", default="outputs/video.mp4", help="output mp4 path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model directory (default: the embedded toy-world model)")
    p.add_argument("--config", action="append", default=[], help="extra YAML config merged over the model's")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks (DiT blocks split over ranks); launch with "
                   "torchrun --nproc_per_node=N -m streamgen generate --pp N ...")
    p.add_argument("--pp-timeout", type=float, default=120.0, help="seconds a rank may go silent before every rank "
                   "stops with an error naming it")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. cache.sink_policy=ema")


def _generate_pp(args, timeline, total: int) -> int:
    """``--pp N``: this process is one of N torchrun ranks; the last one writes the video."""
    import os

    from .parallel.runtime import local_device, run_pipeline_parallel
    from .parallel.transport import PeerFailure
    from .pipeline import StreamingPipeline

    if int(os.environ.get("WORLD_SIZE", 1)) != args.pp:
        print(f"streamgen: error: --pp {args.pp} needs {args.pp} ranks: torchrun --nproc_per_node={args.pp} "
              f"-m streamgen generate --pp {args.pp} ... (WORLD_SIZE is {os.environ.get('WORLD_SIZE', 'unset')})", file=sys.stderr)
        return 2
    device = str(local_device()) if args.device == "cuda" else args.device

    def factory():
        return StreamingPipeline.from_pretrained(args.model, args.overrides, device=device, dtype=DTYPES[args.dtype],
                                                 config_files=args.config)

    try:
        res = run_pipeline_parallel(factory, timeline, out_path=args.out, seed=args.seed, num_frames=total,
                                    world_size=args.pp, timeout=args.pp_timeout)
    except PeerFailure as e:
        print(f"streamgen: error: {e}", file=sys.stderr)
        return 1
    if res.rank == args.pp - 1:
        print(f"wrote {res.frames} frames to {args.out} with {args.pp} pipeline ranks (blocks {res.partition}): "
              f"{res.fps:.1f} FPS end to end, first frame after {res.ttff:.2f} s, bubble {res.bubble:.2f}")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a toy-world video with the detector")
    p.add_argument("video")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--timeline")
    p.add_argument("--fps", type=int, default=16)


def _suite_parser(sub) -> None:
    p = sub.add_parser("suite", help="stream a fixed set of toy-world prompts and timelines and print one eval table")
    p.add_argument("--model", default=None, help="model directory (default: the embedded toy-world model)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each prompt's clip")
    p.add_argument("--long-seconds", type=float, default=0.0, help="also one long stream (drift), e.g. 180")
    p.add_argument("--label", default="")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. cache.sink_policy=ema for ablations)")


def cmd_suite(args) -> int:
    from .eval_suite import pipeline_suite
    from .pipeline import StreamingPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = StreamingPipeline.from_pretrained(args.model, args.overrides)
    print(f"streamgen: {pipe.description}", file=sys.stderr)
    _, table = pipeline_suite(pipe, num_prompts=args.prompts, seconds=args.seconds, long_seconds=args.long_seconds,
                              label=args.label or " ".join(args.overrides) or "default")
    print(table)
    return 0


def cmd_generate(args) -> int:
    import yaml

    from .pipeline import StreamingPipeline
    from .timeline import Timeline
    from .video import VideoWriter

    if args.threads:
        torch.set_num_threads(args.threads)
    # validate the config and the timeline before loading any weights: bad input fails fast
    fps = StreamingPipeline.load_config(args.model, args.overrides, args.config).video.fps
    seconds = args.seconds
    if args.timeline:
        if seconds is None:
            data = yaml.safe_load(Path(args.timeline).read_text()) if Path(args.timeline).is_file() else None
            seconds = float(data.get("seconds", 10.0)) if isinstance(data, dict) else 10.0
        timeline = Timeline.load(args.timeline, fps, total_frames=int(round(seconds * fps)))
    else:
        seconds = 10.0 if seconds is None else seconds
        timeline = Timeline.single(args.prompt)
    total = int(round(seconds * fps))
    if args.pp > 1:
        return _generate_pp(args, timeline, total)
    pipe = StreamingPipeline.from_pretrained(args.model, args.overrides, device=args.device, dtype=DTYPES[args.dtype],
                                             config_files=args.config)
    print(f"streamgen: {pipe.description}", file=sys.stderr)
    from tqdm import tqdm

    # Ctrl-C and SIGTERM end the run after the chunk in flight: the writer is closed and the mp4 stays playable.
    # A flag, not KeyboardInterrupt: once in tests/test_cli.py a SIGINT did not stop the run (a KeyboardInterrupt
    # that lands inside a finalizer is only printed, the likely cause). A second signal interrupts at once.
    stop = threading.Event()

    def request_stop(*_):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    first_frame_s = None
    try:
        with VideoWriter(args.out, fps) as writer, tqdm(total=total, unit="frame", dynamic_ncols=True) as bar:
            try:
                for chunk in pipe.stream(timeline, num_frames=total, seed=args.seed):
                    writer.append(chunk.frames)
                    if first_frame_s is None:
                        first_frame_s = time.perf_counter() - t0
                    bar.update(len(chunk.frames))
                    bar.set_postfix(fps=f"{writer.frames / (time.perf_counter() - t0):.1f}", prompt=chunk.prompt[:30])
                    if stop.is_set():
                        break
            except KeyboardInterrupt:
                stop.set()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    interrupted = stop.is_set()
    wall = time.perf_counter() - t0
    status = "interrupted; kept" if interrupted else "wrote"
    print(f"{status} {writer.frames} frames to {args.out} in {wall:.2f} s: {writer.frames / max(wall, 1e-9):.1f} FPS "
          f"end to end, first frame after {first_frame_s if first_frame_s is not None else float('nan'):.2f} s")
    return 130 if interrupted else 0


def cmd_eval(args) -> int:
    from .timeline import Timeline
    from .toyworld.captions import parse_caption
    from .toyworld.evaluate import evaluate_clip, format_table
    from .video import read_video

    frames = read_video(args.video)
    if len(frames) == 0:
        raise FileNotFoundError(f"{args.video}: no readable frames")
    tl = Timeline.load(args.timeline, args.fps) if args.timeline else Timeline.single(args.prompt)
    target = [(e.frame, parse_caption(e.prompt)) for e in tl.events]
    result = evaluate_clip(frames, target if len(target) > 1 else target[0][1], fps=args.fps)
    print(format_table([result.row(video=Path(args.video).name)]))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="streamgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _generate_parser(sub)
    _eval_parser(sub)
    _suite_parser(sub)
    args = ap.parse_args(argv)
    from .config import ConfigError
    from .timeline import TimelineError

    try:
        return {"generate": cmd_generate, "eval": cmd_eval, "suite": cmd_suite}[args.cmd](args)
    except (ConfigError, TimelineError, FileNotFoundError) as e:
        print(f"streamgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
