"""Pipeline-parallel generation equals the single-process StreamingPipeline: same seed, same
timeline with a prompt switch (re-cache), for 1-3 ranks as threads and 2-3 gloo processes."""
import numpy as np
import pytest
import torch

from helpers import rel_err
from pp_helpers import NUM_FRAMES, reference, switch_timeline, tiny_pp_pipeline
from streamgen.parallel.runtime import launch_local, plan_stream, run_pipeline_parallel, run_threads
from streamgen.parallel.schedule import RECACHE
from streamgen.video import read_video

SEED = 3


@pytest.fixture(scope="module")
def ref():
    torch.set_num_threads(1)
    return reference(tiny_pp_pipeline(), switch_timeline(), SEED)


def _assert_equal(res, ref_lat, ref_frames):
    assert len(res.latents) == len(ref_lat) == 7
    for c, (a, b) in enumerate(zip(res.latents, ref_lat)):
        assert rel_err(a, b) <= 1e-5, f"chunk {c}"
    video = np.concatenate(ref_frames)
    assert res.video.shape == video.shape == (NUM_FRAMES, 32, 32, 3)
    assert np.abs(res.video.astype(int) - video.astype(int)).max() <= 1  # uint8 rounding at most


def test_plan_has_the_switch_recache():
    pipe = tiny_pp_pipeline()
    plan = plan_stream(pipe, switch_timeline(), NUM_FRAMES)
    assert plan.num_chunks == 7 and list(plan.refills) == [3]
    assert plan.refills[3] == (0, 2, 4)  # the sink chunk and the two chunks in the window
    assert sum(w.kind == RECACHE for w in plan.passes()) == 3


@pytest.mark.parametrize("n", [1, 2, 3])
def test_threads_equal_single_process(ref, n):
    res = run_threads(tiny_pp_pipeline, switch_timeline(), n, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True)
    assert all(not isinstance(r, BaseException) for r in res), res
    last = res[-1]
    assert len(last.partition) == n and last.partition[0][0] == 0 and last.partition[-1][1] == 6
    _assert_equal(last, *ref)
    assert [s["layers"] for s in last.stats] == [list(p) for p in last.partition]


@pytest.mark.parametrize("mode,ctx_t", [("blend", 0.0), ("none", 0.0), ("recache", 60.0)])
def test_threads_other_switch_modes_and_context_noise(mode, ctx_t):
    make = lambda: tiny_pp_pipeline(mode=mode, context_timestep=ctx_t)  # noqa: E731
    ref_lat, ref_frames = reference(make(), switch_timeline(), SEED)
    res = run_threads(make, switch_timeline(), 3, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True, partition=[1, 3, 2])
    assert all(not isinstance(r, BaseException) for r in res), res
    assert res[-1].partition == [(0, 1), (1, 4), (4, 6)]
    _assert_equal(res[-1], ref_lat, ref_frames)


def test_threads_equal_single_process_with_pooled_text():
    """``model.pooled_text``: later ranks rebuild the pooled vector from the text tokens the first rank sends."""
    make = lambda: tiny_pp_pipeline(pooled_text=True)  # noqa: E731
    ref_lat, ref_frames = reference(make(), switch_timeline(), SEED)
    plain_lat, _ = reference(tiny_pp_pipeline(), switch_timeline(), SEED)
    assert rel_err(ref_lat[-1], plain_lat[-1]) > 1e-3  # the pooled path changes the output
    res = run_threads(make, switch_timeline(), 3, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True)
    assert all(not isinstance(r, BaseException) for r in res), res
    _assert_equal(res[-1], ref_lat, ref_frames)


def _gloo_rank(rank, world, out):
    # 3 ranks also move blocks over gloo: to given counts before chunk 2, to the measured balance before 5
    rebalance = {2: [1, 4, 1], 5: "measure"} if world == 3 else None
    return run_pipeline_parallel(tiny_pp_pipeline, switch_timeline(), num_frames=NUM_FRAMES, seed=SEED, out_path=out,
                                 keep_outputs=True, timeout=30.0, rebalance=rebalance)


@pytest.mark.parametrize("n", [2, 3])
def test_gloo_processes_equal_single_process(ref, tmp_path, n):
    out = tmp_path / f"pp{n}.mp4"
    res = launch_local(n, _gloo_rank, (str(out),), timeout=120)
    assert [s for s, _ in res] == ["ok"] * n, res
    last = res[-1][1]
    _assert_equal(last, *ref)
    assert last.frames == NUM_FRAMES and 0.0 <= last.bubble < 1.0 and last.ttff > 0
    assert last.costs is not None and len(last.costs["block"]) == 6  # partition from measured costs
    if n == 3:
        assert [c for c, _ in last.rebalances] == [2, 5] and last.rebalances[0][1] == [(0, 1), (1, 5), (5, 6)]
    assert read_video(out).shape == (NUM_FRAMES, 32, 32, 3)
    # each rank holds only its blocks' weights and K/V cache
    full = tiny_pp_pipeline()
    full_params = sum(p.numel() * p.element_size() for p in full.model.parameters())
    full_cache = full.model.new_cache(full.config.cache, 1, 4, 4).nbytes()
    assert all(s["param_bytes"] < full_params * 0.8 for s in last.stats)
    assert sum(s["cache_bytes"] for s in last.stats) == full_cache


@pytest.mark.parametrize("rebalance", [{2: [1, 4, 1], 5: [3, 1, 2]}, {3: "measure"}])
def test_rebalance_moves_blocks_and_keeps_the_video(ref, rebalance):
    """Blocks (weights and K/V) move between ranks at chunk boundaries, across the prompt switch's
    re-cache (chunk 3), and the video stays the single-process one."""
    res = run_threads(tiny_pp_pipeline, switch_timeline(), 3, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True,
                      partition=[2, 2, 2], rebalance=rebalance)
    assert all(not isinstance(r, BaseException) for r in res), res
    last = res[-1]
    _assert_equal(last, *ref)
    assert [c for c, _ in last.rebalances] == sorted(rebalance)
    if 5 in rebalance:
        assert last.rebalances == [(2, [(0, 1), (1, 5), (5, 6)]), (5, [(0, 3), (3, 4), (4, 6)])]
        assert last.partition == [(0, 3), (3, 4), (4, 6)]
