"""Cost-balanced block partition and the pipeline-parallel scaling model."""
import itertools
import random

import pytest

from pp_helpers import tiny_pp_pipeline
from streamgen.parallel.partition import Costs, balance, chunk_load, even, from_counts, measure_costs, predict
from streamgen.parallel.schedule import steady_bubble, steady_period


def _brute(costs, n, steps):
    L = len(costs.block)
    best = None
    for cuts in itertools.combinations(range(1, L), n - 1):
        bounds = (0, *cuts, L)
        parts = [range(a, b) for a, b in zip(bounds, bounds[1:])]
        v = max(chunk_load(costs, p, r, n, steps) for r, p in enumerate(parts))
        best = v if best is None else min(best, v)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_balance_is_optimal(seed):
    rnd = random.Random(seed)
    for n in range(1, 5):
        costs = Costs([rnd.uniform(0.5, 2.0) for _ in range(7)], embed=rnd.uniform(0, 1), head=rnd.uniform(0, 2),
                      decode=rnd.uniform(0, 6))
        parts = balance(costs, n, steps=4)
        assert [p.start for p in parts][0] == 0 and parts[-1].stop == 7 and all(len(p) for p in parts)
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        got = max(chunk_load(costs, p, r, n, 4) for r, p in enumerate(parts))
        assert got == pytest.approx(_brute(costs, n, 4))


def test_last_rank_gets_fewer_blocks_when_decode_is_expensive():
    cheap = balance(Costs([1.0] * 12), 2, steps=4)
    costly = balance(Costs([1.0] * 12, decode=20.0), 2, steps=4)
    assert [len(p) for p in cheap] == [6, 6]
    assert len(costly[1]) < len(costly[0])


@pytest.mark.parametrize("n,steps", [(1, 4), (2, 4), (3, 2), (4, 1)])
def test_prediction_with_unit_costs_is_the_schedule(n, steps):
    costs = Costs([1.0] * (2 * n), frames_per_chunk=8)
    p = predict(costs, even(2 * n, n), steps, chunks=30)
    assert p.seconds_per_chunk == pytest.approx(2 * steady_period(steps, n))
    assert p.bubble == pytest.approx(steady_bubble(steps, n))
    assert p.fps == pytest.approx(8 / p.seconds_per_chunk)


def test_transfers_and_decode_enter_the_prediction():
    base = Costs([1.0] * 8, head=0.2, decode=1.0, frames_per_chunk=8)
    slow = Costs([1.0] * 8, head=0.2, decode=1.0, hop=0.3, ring=0.3, frames_per_chunk=8)
    a, b = predict(base, even(8, 2), 4), predict(slow, even(8, 2), 4)
    assert b.seconds_per_chunk > a.seconds_per_chunk and b.ttff > a.ttff
    one = predict(base, even(8, 1), 4)
    assert one.seconds_per_chunk == pytest.approx(5 * 8 + 4 * 0.2 + 1.0)  # everything serial on one rank
    assert a.fps / one.fps < 5 / 4  # one stream never beats (T + 1) / T


def test_measure_costs_on_a_pipeline():
    c = measure_costs(tiny_pp_pipeline(), repeats=1)
    assert len(c.block) == 6 and all(t > 0 for t in c.block)
    assert c.embed > 0 and c.head > 0 and c.decode > 0 and c.frames_per_chunk == 8
    assert Costs.from_dict(c.to_dict()) == c


def test_partition_arguments_are_checked():
    assert [len(p) for p in even(7, 3)] == [3, 2, 2]
    assert from_counts([1, 3, 2], 6) == [range(0, 1), range(1, 4), range(4, 6)]
    with pytest.raises(ValueError, match="add up"):
        from_counts([1, 1], 6)
    with pytest.raises(ValueError, match="cannot split"):
        even(2, 3)
