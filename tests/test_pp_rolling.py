"""Pipeline-parallel generation with ``sampler.schedule: rolling`` equals the single-process rolling
StreamingPipeline (same seed, a timeline with two prompt switches: one whose chunk enters before any
commit, one that re-caches three kept chunks), for 1-3 ranks as threads and 2 gloo processes."""
import functools

import numpy as np
import pytest
import torch

from helpers import rel_err
from pp_helpers import A, B, NUM_FRAMES, reference, tiny_pp_pipeline
from streamgen.parallel.runtime import launch_local, plan_stream, run_pipeline_parallel, run_threads
from streamgen.parallel.schedule import RECACHE
from streamgen.timeline import Timeline

SEED = 3
rolling_pipe = functools.partial(tiny_pp_pipeline, schedule="rolling")


def two_switches(fps: int = 8) -> Timeline:
    # chunk 0 has 5 pixel frames, later chunks 8: frame 21 starts chunk 3, frame 45 chunk 6
    return Timeline.from_entries([{"at": 0, "prompt": A}, {"frame": 21, "prompt": B}, {"frame": 45, "prompt": A}], fps)


@pytest.fixture(scope="module")
def ref():
    torch.set_num_threads(1)
    return reference(rolling_pipe(), two_switches(), SEED)


def _assert_equal(res, ref_lat, ref_frames):
    assert len(res.latents) == len(ref_lat) == 7
    for c, (a, b) in enumerate(zip(res.latents, ref_lat)):
        assert rel_err(a, b) <= 1e-5, (c, rel_err(a, b))
    video = np.concatenate(ref_frames)
    assert res.video.shape == video.shape == (NUM_FRAMES, 32, 32, 3)
    assert np.abs(res.video.astype(int) - video.astype(int)).max() <= 1  # uint8 rounding at most


def test_rolling_plan_and_reference_differs_from_chunkwise(ref):
    plan = plan_stream(rolling_pipe(), two_switches(), NUM_FRAMES)
    assert plan.rolling and plan.num_chunks == 7 and plan.refills == {3: (), 6: (0, 2, 4)}
    assert sum(w.kind == RECACHE for w in plan.passes()) == 3
    chunkwise = reference(tiny_pp_pipeline(), two_switches(), SEED)[0]
    assert rel_err(chunkwise[-1], ref[0][-1]) > 1e-3  # the rolling video is another video


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rolling_threads_equal_single_process(ref, n):
    res = run_threads(rolling_pipe, two_switches(), n, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True)
    assert all(not isinstance(r, BaseException) for r in res), res
    _assert_equal(res[-1], *ref)


@pytest.mark.parametrize("mode,ctx_t", [("blend", 0.0), ("recache", 60.0)])
def test_rolling_threads_blend_and_context_noise(mode, ctx_t):
    make = functools.partial(tiny_pp_pipeline, mode=mode, context_timestep=ctx_t, schedule="rolling")
    ref_lat, ref_frames = reference(make(), two_switches(), SEED)
    res = run_threads(make, two_switches(), 2, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True, partition=[2, 4])
    assert all(not isinstance(r, BaseException) for r in res), res
    _assert_equal(res[-1], ref_lat, ref_frames)


def _gloo_rank(rank, world):
    return run_pipeline_parallel(rolling_pipe, two_switches(), num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True,
                                 timeout=30.0)


@pytest.mark.parametrize("n", [2, 3])
def test_rolling_gloo_processes_equal_single_process(ref, n):
    res = launch_local(n, _gloo_rank, timeout=120)
    assert [s for s, _ in res] == ["ok"] * n, res
    last = res[-1][1]
    _assert_equal(last, *ref)
    assert last.frames == NUM_FRAMES and 0.0 <= last.bubble < 1.0


def test_rolling_rebalance_at_a_tick_keeps_the_video(ref):
    res = run_threads(rolling_pipe, two_switches(), 3, num_frames=NUM_FRAMES, seed=SEED, keep_outputs=True,
                      partition=[2, 2, 2], rebalance={2: [1, 4, 1], 6: [3, 1, 2]})
    assert all(not isinstance(r, BaseException) for r in res), res
    assert res[-1].rebalances == [(2, [(0, 1), (1, 5), (5, 6)]), (6, [(0, 3), (3, 4), (4, 6)])]
    _assert_equal(res[-1], *ref)
