"""Pipeline-parallel schedule of one stream: which pass each rank works on at each tick.

Vocabulary

* pass: one trip of one chunk through every DiT block. ``STEP s`` is denoising step ``s`` (reads the
  cache), ``COMMIT`` runs the finished chunk at the context noise level and writes its K/V,
  ``RECACHE`` re-commits a kept chunk under a new prompt after a prompt switch (LongLive).
* stage ``r`` = rank ``r``: a contiguous range of blocks; a pass visits stages ``0 .. N-1`` in order.
  Rank 0 also embeds, the last rank also applies the head, the sampler step and the VAE decode.
* tick: the time one stage needs for one pass (stages balanced).

Dependencies that keep the result *identical* to the single-process pipeline:

1. hop: a pass runs on stage ``r`` after it ran on stage ``r - 1`` (the hidden state travels);
2. cache order: every stage runs the passes in stream order. Chunk ``k + 1``'s ``STEP 0`` reads
   chunk ``k``'s committed K/V in every layer, so on each stage it must come after chunk ``k``'s
   ``COMMIT``; a re-cache refill reads the refills before it;
3. ring: ``STEP s > 0`` and ``COMMIT`` start from the sampler output of the chunk's previous step,
   produced on the last stage (``STEP 0`` starts from seeded noise, ``RECACHE`` from kept latents).

So the "stream batch" holds at most two passes in flight: a chunk's ``COMMIT`` and, one stage
behind it, the next chunk's ``STEP 0``. Every other pass of a chunk waits for the full ring. In the
steady state a chunk takes ``T * N + 1`` ticks (``T`` steps, ``N`` stages) while each stage works
``T + 1`` of them:

    bubble = 1 - (T + 1) / (T N + 1)        speed-up over one rank = N (T + 1) / (T N + 1) < (T + 1) / T

(for T = 4: 1.11x on 2 ranks, 1.15x on 3, 1.18x on 4, never above 1.25x). Re-cache refills have no
ring dependency and pipeline fully (``m`` refills take ``m + N - 1`` ticks instead of ``m N``).
StreamDiffusionV2 keeps every stage busy by letting chunk ``k + 1`` start denoising before chunk
``k`` is final (each step batch reads a cache written by noisy passes); that changes the video, so
it is not done here.

Rolling schedule (``sampler.schedule: rolling``, Rolling Forcing). Tick ``k`` of the stream is the pass
list ``[COMMIT of chunk k - T | RECACHE refills if chunk k enters with a new prompt | STEP of every
in-flight chunk, oldest to newest]``; in-flight chunk ``c`` is at step ``k - c`` (so every chunk passes
``STEP 0 .. T-1`` once, in order, one per tick). The single process runs the STEP passes of a tick as
one joint forward; here each is a micro-batch: on stage ``r`` chunk ``c``'s STEP reads the committed
cache and this tick's K/V of the older in-flight chunks at stage ``r`` (dependency 2, stream order),
and starts from its own previous step's sampler output (dependency 3). A pass waits for the one ``T``
places before it in the stream (same position in the previous tick, shifted by one chunk), so in the
steady state (unit ticks) a tick takes ``max(T, N) + 1`` ticks and each stage works ``T + 1``:

    bubble = 1 - (T + 1) / (max(T, N) + 1)      speed-up = N (T + 1) / (max(T, N) + 1)  (= N for N <= T)

Warm-up (the first ``T - 1`` ticks hold fewer chunks) and drain (the last ``T - 1`` ticks, then the
last chunk's commit alone) add ``O(T N)`` ticks. The rolling video differs from the chunkwise one (it is
the single-process rolling pipeline's video); the pipeline-parallel one equals it.

Everything in this module is pure: ``Schedule.at(tick)`` gives the work of every rank at a tick,
``Schedule.program(rank)`` the order a rank executes (the runtime follows it and checks every message
against it), ``io`` the messages a rank exchanges for a pass, ``simulate`` the same dependencies with
real durations (the scaling model in ``partition.py`` and ``bench/pp_scaling.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

from ..cache import make_sink_policy
from ..config import CacheConfig

STEP, COMMIT, RECACHE = "step", "commit", "recache"
KINDS = (STEP, COMMIT, RECACHE)


@dataclass(frozen=True)
class Work:
    """One pass of the stream (the same item on every stage it visits)."""

    index: int  # position in the stream's pass sequence
    kind: str  # STEP | COMMIT | RECACHE
    chunk: int  # chunk being generated (RECACHE: the chunk the cache is refilled for)
    step: int  # STEP: denoising step; COMMIT: number of steps; RECACHE: refill number
    frame_start: int  # latent frame the pass attends at (RECACHE: the kept chunk's)

    @property
    def writes(self) -> bool:
        """The pass stores its K/V in the cache."""
        return self.kind != STEP

    @property
    def ring_input(self) -> bool:
        """The first stage needs the last stage's sampler output to start this pass."""
        return self.kind == COMMIT or (self.kind == STEP and self.step > 0)

    @property
    def ring_output(self) -> bool:
        """The last stage sends latents back to the first stage after this pass (every STEP)."""
        return self.kind == STEP


def kept_frames(cfg: CacheConfig, chunk: int) -> tuple[int, ...]:
    """Frame starts a re-cache before ``chunk`` re-commits: what ``rollout.recache`` refills from the
    chunks ``rollout.remember_chunk`` kept (sink chunks unless the sink policy keeps the sink, then the
    past chunks still in the window)."""
    C, S = cfg.chunk_frames, cfg.sink_frames
    starts = [c * C for c in range(chunk)]
    sink = [f for f in starts if f < S]
    recent = [f for f in starts if f >= S]
    if cfg.bounded:
        keep = (cfg.window_frames - C) // C
        recent = recent[len(recent) - min(len(recent), keep):]
    keep_sink = not make_sink_policy(cfg).recache_sink
    return tuple(([] if keep_sink else sink) + recent)


@dataclass(frozen=True)
class StreamPlan:
    """The pass sequence of a finite stream: ``num_chunks`` chunks of ``steps`` denoising steps, and
    the chunks before which the cache is re-cached (``refills``: chunk -> frame starts re-committed)."""

    num_chunks: int
    steps: int
    chunk_frames: int
    refills: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    rolling: bool = False  # the rolling schedule (see the module doc): passes grouped in ticks

    @classmethod
    def build(cls, num_chunks: int, steps: int, cache_cfg: CacheConfig, recache_chunks=(), rolling: bool = False) -> "StreamPlan":
        """``recache_chunks``: chunks whose start (rolling: whose entering tick) re-caches the window."""
        if num_chunks < 0 or steps < 1:
            raise ValueError(f"need num_chunks >= 0 and steps >= 1, got {num_chunks}, {steps}")
        # rolling: when chunk c enters, chunks 0 .. c - T are committed
        done = (lambda c: max(0, c - steps + 1)) if rolling else (lambda c: c)
        refills = {c: kept_frames(cache_cfg, done(c)) for c in sorted(set(recache_chunks)) if c < num_chunks}
        return cls(num_chunks, steps, cache_cfg.chunk_frames, refills, rolling)

    def tick_passes(self) -> list[list[Work]]:
        """Rolling schedule: the passes of every tick (``num_chunks + T`` ticks, the last one only
        commits the last chunk), indexed in stream order."""
        if not self.rolling:
            raise ValueError("tick_passes is the rolling schedule's; the chunkwise one has chunk_passes")
        n, T, C = self.num_chunks, self.steps, self.chunk_frames
        out, i = [], 0
        for k in range(n + T if n else 0):
            tick = []
            if 0 <= k - T < n:
                tick.append((COMMIT, k - T, T, (k - T) * C))
            if k < n:
                tick += [(RECACHE, k, j, f) for j, f in enumerate(self.refills.get(k, ()))]
            tick += [(STEP, c, k - c, c * C) for c in range(max(0, k - T + 1), min(k, n - 1) + 1)]
            out.append([Work(i + j, *w) for j, w in enumerate(tick)])
            i += len(tick)
        return out

    def chunk_passes(self, chunk: int, start_index: int = 0) -> list[Work]:
        fs = chunk * self.chunk_frames
        out = [Work(0, RECACHE, chunk, j, f) for j, f in enumerate(self.refills.get(chunk, ()))]
        out += [Work(0, STEP, chunk, s, fs) for s in range(self.steps)]
        out.append(Work(0, COMMIT, chunk, self.steps, fs))
        return [Work(start_index + i, w.kind, w.chunk, w.step, w.frame_start) for i, w in enumerate(out)]

    def passes(self) -> Iterator[Work]:
        if self.rolling:
            for tick in self.tick_passes():
                yield from tick
            return
        i = 0
        for c in range(self.num_chunks):
            ws = self.chunk_passes(c, i)
            i += len(ws)
            yield from ws


def io(work: Work, rank: int, world_size: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Messages of ``rank`` for ``work``: ``(receives, sends)`` as ``(channel, peer)`` with channel
    ``"hop"`` (hidden state to the next stage) or ``"ring"`` (latents from the last stage to the first)."""
    last = world_size - 1
    recvs, sends = [], []
    if rank > 0:
        recvs.append(("hop", rank - 1))
    if rank == 0 and work.ring_input:
        recvs.append(("ring", last))
    if rank < last:
        sends.append(("hop", rank + 1))
    if rank == last and work.ring_output:
        sends.append(("ring", 0))
    return recvs, sends


# ---------------------------------------------------------------------------------------------
# Timing: the dependencies above with durations (ticks of 1 for the schedule).
# ---------------------------------------------------------------------------------------------

Cost = Callable[[Work, int], float]


@dataclass
class Timing:
    """Start and end of every pass on every stage, and the busy time each rank spends after it
    (``tail``: the last rank's VAE decode and video write of a finished chunk)."""

    start: list[list[float]]
    end: list[list[float]]
    busy: list[float]  # per rank, total
    makespan: float

    def bubble(self) -> float:
        n = len(self.busy)
        return 1.0 - sum(self.busy) / (n * self.makespan) if self.makespan > 0 else 0.0


def simulate(passes: Sequence[Work], world_size: int, cost: Cost = lambda w, r: 1.0, *, hop: float = 0.0,
             ring: float = 0.0, tail: Cost = lambda w, r: 0.0) -> Timing:
    """As-soon-as-possible execution of ``passes`` under the three dependencies.

    ``cost(work, rank)``: time until the stage's output is sent; ``tail(work, rank)``: busy time after
    sending (the next pass on that rank starts after it); ``hop`` / ``ring``: transfer latencies.
    """
    n = world_size
    free = [0.0] * n  # when each rank can start its next pass
    ring_ready: dict[int, float] = {}  # chunk -> when its latest sampler output reaches rank 0
    busy = [0.0] * n
    starts, ends = [], []
    for w in passes:
        s_row, e_row = [], []
        t = free[0]
        if w.ring_input:
            t = max(t, ring_ready[w.chunk])
        for r in range(n):
            if r:
                t = max(e_row[-1] + hop, free[r])
            c, tl = cost(w, r), tail(w, r)
            s_row.append(t)
            e_row.append(t + c)
            free[r] = t + c + tl
            busy[r] += c + tl
            t = t + c
        if w.ring_output:
            ring_ready[w.chunk] = e_row[-1] + ring
        starts.append(s_row)
        ends.append(e_row)
    makespan = max(free) if passes else 0.0
    return Timing(starts, ends, busy, makespan)


class Schedule:
    """Unit-tick schedule of a ``StreamPlan`` on ``world_size`` stages: a pure function of the tick."""

    def __init__(self, plan: StreamPlan, world_size: int):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.plan, self.world_size = plan, world_size
        self.passes = list(plan.passes())
        timing = simulate(self.passes, world_size)
        self.ticks = [tuple(int(t) for t in row) for row in timing.start]
        self.length = int(timing.makespan)
        self._by_tick: dict[int, list[Work | None]] = {}
        for w, row in zip(self.passes, self.ticks):
            for r, t in enumerate(row):
                slot = self._by_tick.setdefault(t, [None] * world_size)
                if slot[r] is not None:
                    raise AssertionError(f"rank {r} has two passes at tick {t}")  # cannot happen: free[r] advances
                slot[r] = w

    def at(self, tick: int) -> tuple[Work | None, ...]:
        """The pass each rank works on during ``tick`` (``None``: idle)."""
        return tuple(self._by_tick.get(tick, [None] * self.world_size))

    def program(self, rank: int) -> list[Work]:
        """The passes ``rank`` executes, in tick order (the stream order: see dependency 2)."""
        return [w for t in range(self.length) for w in [self.at(t)[rank]] if w is not None]

    def busy_fraction(self) -> float:
        return len(self.passes) * self.world_size / (self.world_size * self.length) if self.length else 1.0

    def bubble(self) -> float:
        return 1.0 - self.busy_fraction()


def steady_period(steps: int, world_size: int) -> int:
    """Ticks per chunk once the stream runs (no prompt switch)."""
    return steps * world_size + 1


def steady_bubble(steps: int, world_size: int) -> float:
    return 1.0 - (steps + 1) / steady_period(steps, world_size)


def steady_speedup(steps: int, world_size: int) -> float:
    """Throughput over one rank (a tick is 1/N of the whole model)."""
    return world_size * (steps + 1) / steady_period(steps, world_size)


def rolling_steady_period(steps: int, world_size: int) -> int:
    """Rolling schedule: ticks per chunk once the stream runs (no prompt switch)."""
    return max(steps, world_size) + 1


def rolling_steady_bubble(steps: int, world_size: int) -> float:
    return 1.0 - (steps + 1) / rolling_steady_period(steps, world_size)


def rolling_steady_speedup(steps: int, world_size: int) -> float:
    """Throughput over one rank (one rank: ``T + 1`` passes per chunk, as chunkwise)."""
    return world_size * (steps + 1) / rolling_steady_period(steps, world_size)
