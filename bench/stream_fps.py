"""Streaming throughput: frames per second and time to first frame, DiT-only and end to end.

    python bench/stream_fps.py [--seconds 6] [--threads 2] [--repeats 3]

For each model directory (the tiny test config and the embedded default) and dtype:
* DiT-only FPS: pixel frames per second of denoising + cache commit (no VAE decode);
* end-to-end FPS: the same plus streaming VAE decode and uint8 conversion (what `stream()` yields);
* TTFF: seconds from the call to the first decoded frame (first chunk, prompt encoding included);
* rel_err_vs_fp32: relative error of the bf16 latents against float32 for the same seed.
Medians over --repeats runs after one warm-up run; 'x_realtime' is end-to-end FPS over the video's fps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from common import table  # noqa: E402

from streamgen.pipeline import StreamingPipeline  # noqa: E402

PROMPT = "a red circle moving right on a black background"


def measure(pipe: StreamingPipeline, seconds: float, decode: bool) -> tuple[float, float, torch.Tensor]:
    fps = pipe.config.video.fps
    total = int(seconds * fps)
    t0 = time.perf_counter()
    pipe.start(PROMPT, seed=0)
    made, ttff, lats = 0, None, []
    while made < total:
        out = pipe.next_chunk(decode=decode)
        made += pipe.chunk_pixel_frames(out.index)
        lats.append(out.latents)
        if ttff is None:
            ttff = time.perf_counter() - t0
    return made / (time.perf_counter() - t0), ttff, torch.cat(lats, dim=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from helpers import write_tiny_model_dir

    tmp = Path(tempfile.mkdtemp())
    models = {"tiny (test config)": write_tiny_model_dir(tmp / "tiny"), "default": None}
    rows = []
    for name, path in models.items():
        ref = None
        for dt_name in args.dtypes.split(","):
            dtype = getattr(torch, dt_name)
            pipe = StreamingPipeline.from_pretrained(path, dtype=dtype)
            cfg = pipe.config
            measure(pipe, min(args.seconds, 1.0), True)  # warm-up
            dit = [measure(pipe, args.seconds, False) for _ in range(args.repeats)]
            e2e = [measure(pipe, args.seconds, True) for _ in range(args.repeats)]
            lat = e2e[0][2].float()
            if ref is None:
                ref = lat
            e2e_fps = statistics.median(r[0] for r in e2e)
            rows.append({
                "model": name, "weights": "random" if ("RANDOM" in pipe.description or path is not None) else "trained",
                "size": f"{cfg.video.width}x{cfg.video.height}", "params_M": sum(p.numel() for p in pipe.model.parameters()) / 1e6,
                "dtype": dt_name, "threads": args.threads, "dit_fps": statistics.median(r[0] for r in dit),
                "e2e_fps": e2e_fps, "ttff_s": statistics.median(r[1] for r in e2e), "x_realtime": e2e_fps / cfg.video.fps,
                "rel_err_vs_fp32": ((lat - ref).norm() / ref.norm()).item(),
            })
    print(f"{args.seconds} s of video per run, median of {args.repeats} runs after a warm-up; torch {torch.__version__}")
    print(table(rows))


if __name__ == "__main__":
    main()
