"""Pipeline-parallel scaling of one stream: measured on this machine for 1 and 2 ranks, predicted for N.

    python bench/pp_scaling.py [--chunks 10] [--layers 8] [--threads 1] [--schedule rolling]
    python bench/pp_scaling.py --device cuda --predict-only --save-costs gpu_costs.json   # on a GPU box
    python bench/pp_scaling.py --costs gpu_costs.json --predict-only --max-ranks 8

Measured: frames per second (whole run and steady state after the first chunk), time to first frame
and bubble fraction (1 - busy / (ranks x wall)) of the single-process ``StreamingPipeline`` and of
the pipeline-parallel runtime on 1 and 2 gloo ranks, each with ``--threads`` threads. Predicted: the
schedule's dependencies (``schedule.simulate``) with per-block, embed, head + sampler and decode costs
measured on one device (``partition.measure_costs``) and hop / ring transfer times measured with a
gloo ping-pong; ``--costs`` swaps in costs saved on another device to predict N-GPU scaling.

The schedule is exact (the video equals the single-process one), so one stream scales at most by
``(T + 1) / (T + 1/N)`` with T denoising steps: see ``streamgen/parallel/schedule.py``. With
``--schedule rolling`` (Rolling Forcing joint window; equal to the single-process rolling pipeline) each
tick's in-flight chunks flow through the ranks as micro-batches: the bound is ``N (T + 1) / (max(T, N) + 1)``
(= N for N <= T).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import table  # noqa: E402

from streamgen.config import CacheConfig, ModelConfig, SamplerConfig, StreamGenConfig, VideoConfig  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.parallel.partition import Costs, balance, even, measure_costs, predict  # noqa: E402
from streamgen.parallel.runtime import launch_local, run_pipeline_parallel  # noqa: E402
from streamgen.parallel.schedule import rolling_steady_bubble, rolling_steady_speedup, steady_bubble, steady_speedup  # noqa: E402
from streamgen.pipeline import StreamingPipeline  # noqa: E402
from streamgen.vae import PCAVideoVAE  # noqa: E402

PROMPT = "a red circle moving right on a black background"


class SeededText:
    """Text-encoder stand-in (the cost of a real encoder is paid once per prompt, off the stream)."""

    dim, max_length = 384, 16

    def encode(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else prompts
        return torch.stack([torch.randn(self.max_length, self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                            for p in prompts])


def make_pipe(layers: int, device: str = "cpu", schedule: str = "chunkwise") -> StreamingPipeline:
    """A toy-world-sized DiT (dim 384, 6 heads, 64 tokens per latent frame) with random weights and a
    random orthonormal PCA VAE: the costs are those of real blocks, the pixels do not matter."""
    torch.manual_seed(0)
    mcfg = ModelConfig(num_attention_heads=6, attention_head_dim=64, in_channels=16, out_channels=16, text_dim=384,
                       freq_dim=256, ffn_dim=1536, num_layers=layers)
    cfg = StreamGenConfig(model=mcfg, cache=CacheConfig(chunk_frames=3, window_frames=12, sink_frames=3, sink_policy="anchor",
                                                        position_policy="rebased"),
                          sampler=SamplerConfig(denoising_steps=[1000, 750, 500, 250], schedule=schedule), video=VideoConfig(128, 128, 16))
    model = CausalWanModel(mcfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    vae = PCAVideoVAE(16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("first_basis", "basis"):
            b = getattr(vae, name)
            b.copy_(torch.linalg.qr(torch.randn(b.shape[1], b.shape[0], generator=g))[0].T)
    return StreamingPipeline(model, vae, SeededText(), cfg, device=device)


def single_process(args, frames: int) -> dict:
    torch.set_num_threads(args.threads)
    pipe = make_pipe(args.layers, schedule=args.schedule)
    list(pipe.stream(PROMPT, num_frames=pipe.chunk_pixel_frames(0), seed=1))  # warm-up chunk
    t0 = time.perf_counter()
    times, made = [], 0
    for out in pipe.stream(PROMPT, num_frames=frames, seed=0):
        made += len(out.frames)
        times.append((time.perf_counter() - t0, made))
    first = times[0][1]
    return dict(ranks="1 (StreamingPipeline)", fps=made / times[-1][0], steady_fps=(made - first) / (times[-1][0] - times[0][0]),
                ttff_s=times[0][0], bubble=0.0)


def _pp_rank(rank, world, layers, frames, out_dir, schedule="chunkwise"):
    def factory():
        return make_pipe(layers, schedule=schedule)

    # warm-up run (allocator, first-call costs), then the measured one
    run_pipeline_parallel(factory, PROMPT, num_frames=9, seed=1, partition="even")  # 9 pixel frames: one chunk
    return run_pipeline_parallel(factory, PROMPT, num_frames=frames, seed=0, partition="measure",
                                 out_path=None if out_dir is None else os.path.join(out_dir, f"pp{world}.mp4"))


def pipeline_parallel(args, world: int, frames: int) -> dict:
    res = launch_local(world, _pp_rank, (args.layers, frames, args.out_dir, args.schedule), threads=args.threads, timeout=1800)
    bad = [(r, s, v) for r, (s, v) in enumerate(res) if s != "ok"]
    if bad:
        raise RuntimeError(f"pipeline-parallel run failed: {bad}")
    last = res[-1][1]
    return dict(ranks=f"{world} (pipeline)", fps=last.fps, steady_fps=last.steady_fps, ttff_s=last.ttff, bubble=last.bubble,
                partition=last.partition, stats=last.stats)


def _pingpong(rank, world, numel, repeats):
    import torch.distributed as dist

    x = torch.zeros(numel)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        else:
            dist.recv(x, 0)
            dist.send(x, 0)
        times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times[2:])


def transfer_times(pipe: StreamingPipeline, threads: int) -> tuple[float, float]:
    shape = pipe.latent_shape()
    tokens = shape[2] * pipe.model.token_grid(shape[3], shape[4]).tokens
    hop_numel, ring_numel = tokens * pipe.model.config.dim, int(torch.Size(shape).numel())
    out = []
    for n in (hop_numel, ring_numel):
        res = launch_local(2, _pingpong, (n, 20), threads=threads, timeout=120)
        out.append(res[0][1])
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (and for the single process)")
    ap.add_argument("--device", default="cpu", help="device for measuring costs (--predict-only)")
    ap.add_argument("--predict-only", action="store_true", help="measure costs and predict, run nothing parallel")
    ap.add_argument("--costs", help="JSON of Costs to predict from (e.g. saved on a GPU)")
    ap.add_argument("--save-costs", help="write the measured Costs here")
    ap.add_argument("--max-ranks", type=int, default=None)
    ap.add_argument("--out-dir", default=None, help="also write the pipeline-parallel videos here")
    ap.add_argument("--schedule", choices=("chunkwise", "rolling"), default="chunkwise",
                    help="sampler.schedule of the stream (rolling: joint-window micro-batches over the ranks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0]
    print(f"host: {os.cpu_count()} CPUs, load average {load:.2f}; torch {torch.__version__}; {args.threads} thread(s) per rank; "
          f"schedule {args.schedule}")
    if load > 0.5:
        print(f"WARNING: the machine is not idle (load {load:.2f}): measured times include other jobs' interference")

    rolling = args.schedule == "rolling"
    bound_speedup, bound_bubble = (rolling_steady_speedup, rolling_steady_bubble) if rolling else (steady_speedup, steady_bubble)
    pipe = make_pipe(args.layers, args.device, args.schedule)
    steps = len(pipe.sigmas)
    frames = pipe.chunk_pixel_frames(0) + (args.chunks - 1) * pipe.chunk_pixel_frames(1)
    if args.costs:
        costs = Costs.from_dict(json.loads(Path(args.costs).read_text()))
        print(f"costs from {args.costs}")
    else:
        costs = measure_costs(pipe, repeats=5)
        if not args.predict_only:
            costs.hop, costs.ring = transfer_times(pipe, args.threads)
        if args.save_costs:
            Path(args.save_costs).write_text(json.dumps(costs.to_dict(), indent=1))
    blocks = len(costs.block)
    print(f"model: dim {pipe.model.config.dim}, {blocks} blocks, {steps} steps, chunk {pipe.chunk_frames} latent frames "
          f"({costs.frames_per_chunk} pixel frames); per pass: block {1e3 * statistics.mean(costs.block):.2f} ms x {blocks}, "
          f"embed {1e3 * costs.embed:.2f} ms, head+sampler {1e3 * costs.head:.2f} ms; per chunk: decode {1e3 * costs.decode:.2f} ms; "
          f"hop {1e3 * costs.hop:.3f} ms, ring {1e3 * costs.ring:.3f} ms")

    measured = {}
    if not args.predict_only:
        rows = [single_process(args, frames)]
        for world in (1, 2):
            r = pipeline_parallel(args, world, frames)
            measured[world] = r
            rows.append({k: r[k] for k in rows[0]})
        base = rows[0]["steady_fps"]
        for r in rows:
            r["speedup"] = r["steady_fps"] / base
        print(f"\nmeasured ({args.chunks} chunks, {frames} frames; load average now {os.getloadavg()[0]:.2f}):")
        print(table(rows))
        for world, r in measured.items():
            print(f"  {world} rank(s): partition {r['partition']}, busy/wait s per rank "
                  f"{[(round(s['busy_s'], 2), round(s['wait_s'], 2)) for s in r['stats']]}")

    print("\npredicted from the measured costs (schedule.simulate):")
    one = predict(costs, even(blocks, 1), steps, rolling=rolling)
    rows = []
    for n in range(1, min(args.max_ranks or blocks, blocks) + 1):
        p = predict(costs, balance(costs, n, steps), steps, rolling=rolling)
        row = dict(ranks=n, partition=str([b - a for a, b in p.partition]), fps=p.fps, speedup=p.fps / one.fps,
                   ttff_s=p.ttff, bubble=p.bubble, bound_speedup=bound_speedup(steps, n), bound_bubble=bound_bubble(steps, n))
        if n in measured:
            row["measured_speedup"] = measured[n]["steady_fps"] / measured[1]["steady_fps"]
            row["measured_bubble"] = measured[n]["bubble"]
        else:
            row["measured_speedup"] = row["measured_bubble"] = "-"
        rows.append(row)
    print(table(rows))
    if rolling:
        print(f"bound (rolling): N (T+1) / (max(T, N) + 1): {bound_speedup(steps, 2):.2f}x on 2 ranks, N x up to N = T = {steps} "
              f"(a micro-batch needs the same chunk's previous step, T passes earlier in the stream)")
    else:
        print(f"bound: one exact stream cannot exceed (T+1)/T = {(steps + 1) / steps:.2f}x at any rank count "
              f"(chunk k+1 needs chunk k's committed K/V; each step needs the previous one's sampler output)")


if __name__ == "__main__":
    main()
