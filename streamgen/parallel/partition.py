"""Block partition from measured cost, and the scaling model of pipeline-parallel streaming.

``Costs`` holds what one device spends per pass on each DiT block, on the first rank's embedding, on
the last rank's head + sampler step (every denoising pass) and VAE decode + video write (once per
chunk), plus hop and ring transfer times. ``balance`` splits the blocks into contiguous stages that
minimise the largest per-chunk stage load, the first and last rank's extra work counted; ``predict``
runs the schedule's dependencies (``schedule.simulate``) with these durations and returns throughput,
time to first frame and the bubble fraction for any rank count: that is the N-GPU scaling model.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from .schedule import STEP, StreamPlan, Work, simulate


@dataclass
class Costs:
    """Seconds per pass (blocks, embed, head) or per chunk (decode), measured on one device."""

    block: list[float]
    embed: float = 0.0  # first rank: patchify + timestep embedding, every pass
    head: float = 0.0  # last rank: head + sampler step, every denoising pass
    decode: float = 0.0  # last rank: VAE decode + video write, once per chunk
    hop: float = 0.0  # one hidden-state transfer between stages
    ring: float = 0.0  # latents from the last rank back to the first
    frames_per_chunk: int = 1  # pixel frames a chunk adds (for frames per second)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Costs":
        return cls(**d)


def chunk_load(costs: Costs, layers: range, rank: int, world_size: int, steps: int) -> float:
    """Busy seconds of a stage per chunk: ``steps + 1`` passes through its blocks plus its extras."""
    load = (steps + 1) * sum(costs.block[i] for i in layers)
    if rank == 0:
        load += (steps + 1) * costs.embed
    if rank == world_size - 1:
        load += steps * costs.head + costs.decode
    return load


def balance(costs: Costs, world_size: int, steps: int) -> list[range]:
    """Contiguous block ranges (one per rank, none empty) minimising the largest per-chunk stage load."""
    L = len(costs.block)
    if not 1 <= world_size <= L:
        raise ValueError(f"cannot split {L} blocks over {world_size} ranks (each rank needs at least one block)")
    prefix = [0.0]
    for c in costs.block:
        prefix.append(prefix[-1] + c)

    def load(a: int, b: int, r: int) -> float:
        return chunk_load(costs, range(a, b), r, world_size, steps)

    # best[r][b]: minimal max-load of ranks 0..r covering blocks [0, b); cut[r][b]: where rank r starts
    INF = float("inf")
    best = [[INF] * (L + 1) for _ in range(world_size)]
    cut = [[0] * (L + 1) for _ in range(world_size)]
    for b in range(1, L + 1):
        best[0][b] = load(0, b, 0)
    for r in range(1, world_size):
        for b in range(r + 1, L + 1):
            for a in range(r, b):
                v = max(best[r - 1][a], load(a, b, r))
                if v < best[r][b] - 1e-15:
                    best[r][b], cut[r][b] = v, a
    ranges, b = [], L
    for r in range(world_size - 1, 0, -1):
        a = cut[r][b]
        ranges.append(range(a, b))
        b = a
    ranges.append(range(0, b))
    return ranges[::-1]


def even(num_blocks: int, world_size: int) -> list[range]:
    """Equal block counts, the remainder to the first ranks (the last one carries head and VAE)."""
    if not 1 <= world_size <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks over {world_size} ranks")
    q, rem = divmod(num_blocks, world_size)
    out, a = [], 0
    for r in range(world_size):
        n = q + (1 if r < rem else 0)
        out.append(range(a, a + n))
        a += n
    return out


def from_counts(counts, num_blocks: int) -> list[range]:
    counts = [int(c) for c in counts]
    if sum(counts) != num_blocks or any(c < 1 for c in counts):
        raise ValueError(f"block counts {counts} must be positive and add up to the model's {num_blocks} blocks")
    out, a = [], 0
    for c in counts:
        out.append(range(a, a + c))
        a += c
    return out


@dataclass
class Prediction:
    world_size: int
    partition: list[tuple[int, int]]
    seconds_per_chunk: float  # steady state
    fps: float
    ttff: float  # time to the first chunk's frames
    bubble: float  # steady-state idle fraction of all ranks
    loads: list[float] = field(default_factory=list)  # busy seconds per chunk per rank


def predict(costs: Costs, partition: list[range], steps: int, chunks: int = 24, rolling: bool = False) -> Prediction:
    """Throughput, time to first frame and bubble of a stream on ``len(partition)`` ranks (the schedule's
    dependencies with ``costs``; no prompt switches; ``rolling``: the rolling schedule's pass order)."""
    n = len(partition)
    plan = StreamPlan(chunks, steps, 1, rolling=rolling)
    passes = list(plan.passes())
    blocks = [sum(costs.block[i] for i in p) for p in partition]

    def cost(w: Work, r: int) -> float:
        c = blocks[r] + (costs.embed if r == 0 else 0.0)
        if r == n - 1 and w.kind == STEP:
            c += costs.head
        return c

    def tail(w: Work, r: int) -> float:
        return costs.decode if r == n - 1 and w.kind == STEP and w.step == steps - 1 else 0.0

    tm = simulate(passes, n, cost, hop=costs.hop if n > 1 else 0.0, ring=costs.ring if n > 1 else 0.0, tail=tail)
    first = {w.chunk: tm.start[w.index][0] for w in passes if w.kind == STEP and w.step == 0}
    a, b = chunks // 3, chunks - 2
    period = (first[b] - first[a]) / (b - a)
    final = [w for w in passes if w.kind == STEP and w.step == steps - 1 and w.chunk == 0][0]
    ttff = tm.end[final.index][n - 1] + costs.decode
    loads = [chunk_load(costs, p, r, n, steps) for r, p in enumerate(partition)]
    bubble = 1.0 - sum(loads) / (n * period) if period > 0 else 0.0
    return Prediction(n, [(p.start, p.stop) for p in partition], period, costs.frames_per_chunk / period, ttff, bubble, loads)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_costs(pipe, repeats: int = 3) -> Costs:
    """Per-block, embedding, head + sampler and decode time of ``pipe`` on its device, on a chunk that
    sees a full window (dummy latents; the weights' values do not matter for the cost)."""
    from ..rollout import chunk_step, commit_input

    model, cfg = pipe.model, pipe.config
    dev = pipe.device
    shape = pipe.latent_shape()
    C = cfg.cache.chunk_frames
    filled = max(cfg.cache.window_frames // C, 2) if cfg.cache.bounded else 4
    cache = model.new_cache(cfg.cache, 1, shape[3], shape[4], max_frames=(filled + 1) * C, device=dev, dtype=pipe.dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev, pipe.dtype)
    ctx = model.encode_context(torch.randn(1, 4, model.config.text_dim, generator=g).to(dev, pipe.dtype))
    for c in range(filled):  # fill the window so attention costs what it costs mid-stream
        xc, t = commit_input(x, 0.0)
        model.forward_cached(xc, t, ctx, cache, write=True, frame_start=c * C)
    fs = filled * C
    L = len(model.blocks)
    per_block = [[] for _ in range(L)]
    embed_t, head_t, dec_t = [], [], []
    decoder = pipe.vae.stream_decoder()
    decoder.decode(x.float())  # first-chunk path out of the way
    t = torch.tensor(500.0, device=dev)
    for _ in range(repeats + 1):
        _sync(dev)
        t0 = time.perf_counter()
        state = model.embed(x, t, pooled=ctx.pooled)
        _sync(dev)
        embed_t.append(time.perf_counter() - t0)
        view = cache.view(fs, C, write=False)
        for i in range(L):
            t0 = time.perf_counter()
            state = model.run_blocks(state, ctx, view, range(i, i + 1))
            _sync(dev)
            per_block[i].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        flow = model.output(model.head(state, (1, model.config.out_channels, *shape[2:])), x, t)
        chunk_step(lambda *_: flow, x, pipe.sigmas, 0, lambda i: x) if len(pipe.sigmas) > 1 else None
        _sync(dev)
        head_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decoder.decode(x.float()).cpu()
        dec_t.append(time.perf_counter() - t0)
    med = lambda v: statistics.median(v[1:])  # noqa: E731 - first round is warm-up
    return Costs([med(v) for v in per_block], med(embed_t), med(head_t), med(dec_t),
                 frames_per_chunk=pipe.chunk_pixel_frames(1))
