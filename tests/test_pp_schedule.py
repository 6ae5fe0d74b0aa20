"""The pipeline-parallel scheduler on its own: exhaustive over small rank and step counts."""
import itertools
from collections import defaultdict, deque

import pytest
import torch

from streamgen.cache import RollingKVCache, TokenGrid
from streamgen.config import CacheConfig
from streamgen.parallel.schedule import (COMMIT, RECACHE, STEP, Schedule, StreamPlan, io, kept_frames, simulate,
                                         steady_bubble, steady_period, steady_speedup)
from streamgen.rollout import recache, remember_chunk

CACHES = {
    "window_sink": CacheConfig(chunk_frames=2, window_frames=6, sink_frames=2, sink_policy="anchor", position_policy="rebased"),
    "unbounded": CacheConfig(chunk_frames=1, window_frames=-1),
    "ema": CacheConfig(chunk_frames=1, window_frames=3, sink_frames=1, sink_policy="ema"),
}
RECACHES = [(), (1,), (0, 3)]


def _plans():
    for n, steps, chunks, rc, cache in itertools.product(range(1, 5), range(1, 5), (1, 2, 5), RECACHES, ("window_sink", "ema")):
        yield n, StreamPlan.build(chunks, steps, CACHES[cache], rc)


def _ring_source(w, steps):
    """(kind, chunk, step) of the pass whose sampler output ``w`` starts from."""
    return (STEP, w.chunk, w.step - 1) if w.kind == STEP else (STEP, w.chunk, steps - 1)


def _run_protocol(sched: Schedule):
    """Execute every rank's program against FIFO channels with blocking receives and non-blocking
    sends, in any interleaving that makes progress; returns the per-rank programs, fails on deadlock."""
    n, steps = sched.world_size, sched.plan.steps
    programs = [sched.program(r) for r in range(n)]
    pc = [0] * n
    chans: dict[tuple, deque] = defaultdict(deque)
    moved = True
    while moved:
        moved = False
        for r in range(n):
            if pc[r] == len(programs[r]):
                continue
            w = programs[r][pc[r]]
            recvs, sends = io(w, r, n)
            if not all(chans[(ch, peer, r)] for ch, peer in recvs):
                continue  # blocked on a receive
            for ch, peer in recvs:
                got = chans[(ch, peer, r)].popleft()
                if ch == "hop":
                    assert got == w, f"rank {r} expected {w}, the hop delivered {got}"
                else:
                    assert (got.kind, got.chunk, got.step) == _ring_source(w, steps), (w, got)
            for ch, peer in sends:
                chans[(ch, r, peer)].append(w)
            pc[r] += 1
            moved = True
    stuck = {r: programs[r][pc[r]] for r in range(n) if pc[r] < len(programs[r])}
    assert not stuck, f"deadlock: ranks blocked at {stuck}"
    assert all(not q for q in chans.values()), "messages left unread"
    return programs


@pytest.mark.parametrize("n", range(1, 5))
@pytest.mark.parametrize("steps", range(1, 5))
def test_every_chunk_passes_every_step_once_in_order_no_deadlock(n, steps):
    for chunks, rc, cache in itertools.product((1, 2, 5), RECACHES, sorted(CACHES)):
        plan = StreamPlan.build(chunks, steps, CACHES[cache], rc)
        sched = Schedule(plan, n)
        passes = list(plan.passes())
        programs = _run_protocol(sched)
        for r, prog in enumerate(programs):
            assert prog == passes  # every stage runs the stream order
            for c in range(chunks):
                mine = [w for w in prog if w.chunk == c]
                kinds = [(w.kind, w.step) for w in mine]
                refills = [(RECACHE, j) for j in range(len(plan.refills.get(c, ())))]
                assert kinds == refills + [(STEP, s) for s in range(steps)] + [(COMMIT, steps)]
        # the tick table: one pass per rank and tick, and every dependency respected
        seen = defaultdict(list)
        for t in range(sched.length + 2):
            for r, w in enumerate(sched.at(t)):
                if w is not None:
                    seen[w.index].append((r, t))
        index = {(w.kind, w.chunk, w.step): w.index for w in passes}
        for w in passes:
            ticks = [t for _, t in sorted(seen[w.index])]
            assert [r for r, _ in sorted(seen[w.index])] == list(range(n))  # each stage exactly once
            assert all(a < b for a, b in zip(ticks, ticks[1:]))  # hop order
            if w.index:
                prev = [t for _, t in sorted(seen[w.index - 1])]
                assert all(p < q for p, q in zip(prev, ticks))  # stream order on every stage
            if w.ring_input:
                src = index[_ring_source(w, steps)]
                assert ticks[0] > sorted(seen[src])[-1][1]  # ring: after the last stage's sampler
        assert sched.at(-1) == sched.at(sched.length) == (None,) * n


@pytest.mark.parametrize("n", range(1, 5))
@pytest.mark.parametrize("steps", range(1, 5))
def test_steady_state_period_and_bubble(n, steps):
    plan = StreamPlan.build(40, steps, CACHES["window_sink"])
    sched = Schedule(plan, n)
    first = {w.chunk: sched.ticks[w.index][0] for w in sched.passes if w.kind == STEP and w.step == 0}
    periods = {first[c + 1] - first[c] for c in range(1, 39)}
    assert periods == {steady_period(steps, n)}
    # long streams approach the closed-form bubble (start-up and drain are the rest)
    assert abs(sched.bubble() - steady_bubble(steps, n)) < 0.02 + (n - 1) / 40
    assert steady_speedup(steps, 1) == 1.0
    assert steady_speedup(steps, n) < (steps + 1) / steps + 1e-12


def test_bound_numbers_for_four_steps():
    assert [round(steady_speedup(4, n), 3) for n in (1, 2, 3, 4)] == [1.0, 1.111, 1.154, 1.176]
    assert round(steady_bubble(4, 2), 3) == 0.444


def test_recache_refills_pipeline():
    """Refills have no ring dependency: m refills take m + N - 1 ticks, not m * N."""
    cfg = CacheConfig(chunk_frames=1, window_frames=-1)
    plan = StreamPlan.build(8, 2, cfg, recache_chunks=[7])
    sched = Schedule(plan, 3)
    refills = [w for w in sched.passes if w.kind == RECACHE]
    assert len(refills) == 7
    span = sched.ticks[refills[-1].index][2] - sched.ticks[refills[0].index][0] + 1
    assert span == 7 + 3 - 1


def test_simulate_with_durations_matches_ticks_and_counts_tails():
    plan = StreamPlan.build(3, 2, CACHES["window_sink"])
    passes = list(plan.passes())
    unit = simulate(passes, 2)
    assert [row for row in unit.start] == [list(map(float, r)) for r in Schedule(plan, 2).ticks]
    # a decode tail on the last rank after each finished chunk delays the commit there
    tl = simulate(passes, 2, tail=lambda w, r: 5.0 if (r == 1 and w.kind == STEP and w.step == 1) else 0.0)
    assert tl.makespan > unit.makespan and tl.busy[1] == unit.busy[1] + 15.0


@pytest.mark.parametrize("name", sorted(CACHES))
def test_kept_frames_match_the_pipeline_recache(name):
    cfg = CACHES[name]
    cache = RollingKVCache(cfg, 1, 1, 1, 2, TokenGrid(1, 1), max_frames=32)
    sink, recent = [], deque()
    for c in range(9):
        got = []
        recache(cache, sink, recent, lambda lat, fs: got.append(fs))
        assert tuple(got) == kept_frames(cfg, c), c
        remember_chunk(cache, sink, recent, c * cfg.chunk_frames, torch.zeros(1))
        cache.state.next_frame = (c + 1) * cfg.chunk_frames
