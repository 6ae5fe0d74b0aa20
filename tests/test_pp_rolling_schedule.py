"""The rolling (joint-window) pipeline-parallel schedule on its own: every chunk passes every sigma once
in order, the tick structure of the single-process rolling pipeline, no deadlock, closed-form period."""
import itertools
from collections import defaultdict

import pytest

from streamgen.parallel.schedule import (COMMIT, RECACHE, STEP, Schedule, StreamPlan, rolling_steady_bubble,
                                         rolling_steady_period, rolling_steady_speedup)
from test_pp_schedule import CACHES, RECACHES, _ring_source, _run_protocol


@pytest.mark.parametrize("n", range(1, 5))
@pytest.mark.parametrize("steps", range(1, 5))
def test_rolling_passes_every_sigma_once_in_order_no_deadlock(n, steps):
    for chunks, rc, cache in itertools.product((1, 2, 5), RECACHES, sorted(CACHES)):
        plan = StreamPlan.build(chunks, steps, CACHES[cache], rc, rolling=True)
        ticks = plan.tick_passes()
        passes = list(plan.passes())
        assert [w.index for w in passes] == list(range(len(passes)))
        assert len(ticks) == chunks + steps
        for k, tick in enumerate(ticks):  # [commit of k - T | refills | in-flight oldest .. newest at T-1-j ..]
            kinds = [w.kind for w in tick]
            assert kinds == sorted(kinds, key=[COMMIT, RECACHE, STEP].index)
            fly = [w for w in tick if w.kind == STEP]
            assert [w.chunk for w in fly] == list(range(max(0, k - steps + 1), min(k, chunks - 1) + 1))
            assert all(w.step == k - w.chunk for w in fly)
            assert [w.chunk for w in tick if w.kind == COMMIT] == ([k - steps] if k >= steps else [])
        for c in range(chunks):
            mine = [(w.kind, w.step) for w in passes if w.chunk == c and w.kind != RECACHE]
            assert mine == [(STEP, s) for s in range(steps)] + [(COMMIT, steps)]
        sched = Schedule(plan, n)
        programs = _run_protocol(sched)
        assert all(prog == passes for prog in programs)
        seen = defaultdict(list)
        for t in range(sched.length):
            for r, w in enumerate(sched.at(t)):
                if w is not None:
                    seen[w.index].append(t)
        index = {(w.kind, w.chunk, w.step): w.index for w in passes if w.kind != RECACHE}
        for w in passes:
            assert len(seen[w.index]) == n and all(a < b for a, b in zip(seen[w.index], seen[w.index][1:]))
            if w.ring_input:
                assert seen[w.index][0] > seen[index[_ring_source(w, steps)]][-1]


def test_rolling_refills_use_the_chunks_committed_when_the_switch_enters():
    cfg = CACHES["window_sink"]  # C=2, W=6, S=2: keeps the sink chunk and two window chunks
    plan = StreamPlan.build(7, 4, cfg, [3, 4, 6], rolling=True)
    assert plan.refills == {3: (), 4: (0,), 6: (0, 2, 4)}  # chunk 3 enters before any commit, 4 after chunk 0's, 6 after 0..2
    tick = plan.tick_passes()[6]
    assert [(w.kind, w.chunk) for w in tick] == [(COMMIT, 2)] + [(RECACHE, 6)] * 3 + [(STEP, c) for c in (3, 4, 5, 6)]


@pytest.mark.parametrize("n", range(1, 5))
@pytest.mark.parametrize("steps", range(1, 5))
def test_rolling_steady_period_and_bubble(n, steps):
    plan = StreamPlan.build(40, steps, CACHES["window_sink"], rolling=True)
    sched = Schedule(plan, n)
    enter = {w.chunk: sched.ticks[w.index][0] for w in sched.passes if w.kind == STEP and w.step == 0}
    assert {enter[c + 1] - enter[c] for c in range(steps + n, 36)} == {rolling_steady_period(steps, n)}
    assert abs(sched.bubble() - rolling_steady_bubble(steps, n)) < 0.02 + (n + steps) / 40
    assert rolling_steady_speedup(steps, 1) == 1.0
    if n <= steps:
        assert rolling_steady_bubble(steps, n) == 0.0 and rolling_steady_speedup(steps, n) == n


def test_rolling_bound_numbers_for_four_steps():
    assert [round(rolling_steady_speedup(4, n), 3) for n in (1, 2, 3, 4, 5, 8)] == [1.0, 2.0, 3.0, 4.0, 4.167, 4.444]


def test_rolling_prediction_from_costs():
    from streamgen.parallel.partition import Costs, even, predict

    costs = Costs([1.0] * 8)
    one = predict(costs, even(8, 1), 4, rolling=True)
    for n in (2, 4):
        p = predict(costs, even(8, n), 4, rolling=True)
        assert abs(p.fps / one.fps - n) < 1e-9 and abs(p.bubble) < 1e-9
    assert predict(costs, even(8, 2), 4).fps / predict(costs, even(8, 1), 4).fps < 1.12  # chunkwise bound
