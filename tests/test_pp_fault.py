"""Faults under pipeline parallelism: a killed, hung or failing rank ends the run on every other
rank within the timeout, with an error naming it, and the mp4 written so far stays readable."""
import os
import signal
import time
from pathlib import Path

import pytest

from pp_helpers import switch_timeline, tiny_pp_pipeline, NUM_FRAMES
from streamgen.parallel.runtime import launch_local, run_pipeline_parallel
from streamgen.parallel.schedule import COMMIT
from streamgen.parallel.transport import STALE_AFTER_S, PeerFailure
from streamgen.video import read_video

TIMEOUT = 3.0
# a dead rank is named after the timeout or the heartbeat staleness, whichever comes first, plus slack for
# the diagnosis and a loaded machine
GIVE_UP_S = max(TIMEOUT, STALE_AFTER_S) + 2.5
FAULT_CHUNK = 2  # after this chunk's commit pass; chunks 0-2 are 5 + 8 + 8 pixel frames
FRAMES_BEFORE = 21


def _rank(rank, world, out, victim, how, marker, schedule="chunkwise"):
    def on_work(r, w):
        if r == victim and w.kind == COMMIT and w.chunk == FAULT_CHUNK:
            Path(marker).write_text(repr(time.time()))
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                raise ValueError("injected failure")

    try:
        run_pipeline_parallel(lambda: tiny_pp_pipeline(schedule=schedule), switch_timeline(), num_frames=NUM_FRAMES,
                              seed=3, out_path=out, timeout=TIMEOUT, on_work=on_work)
    except PeerFailure:
        Path(f"{marker}.{rank}").write_text(repr(time.time()))
        raise  # an error result makes the launcher stop the (hung) victim after its grace period


@pytest.mark.parametrize("world,victim,how", [
    (3, 1, "kill"),  # a middle rank dies: both neighbours name it
    (2, 0, "hang"),  # the first rank stops (SIGSTOP): the writer names it after the timeout
    (2, 1, "kill"),  # the writer itself dies
    (3, 2, "raise"),  # an exception on the last rank reaches the others
])
def test_fault_ends_run_with_error_naming_rank(tmp_path, world, victim, how):
    out, marker = tmp_path / "v.mp4", tmp_path / "fault_time"
    res = launch_local(world, _rank, (str(out), victim, how, str(marker)), timeout=60, grace=1.0)
    fault_time = float(marker.read_text())
    for r, (status, value) in enumerate(res):
        if r == victim:
            if how == "raise":
                assert status == "error" and value[0] == "ValueError"
            else:
                assert status == "died"
            continue
        assert status == "error", (r, status, value)
        kind, msg, culprit = value
        assert kind == "PeerFailure" and culprit == victim, (r, value)
        assert f"rank {victim}" in msg, msg
        if how == "raise":
            assert "injected failure" in msg
        t_end = float(Path(f"{marker}.{r}").read_text())
        assert t_end - fault_time < GIVE_UP_S, f"rank {r} took {t_end - fault_time:.1f} s to give up"
    frames = read_video(out)
    if victim == world - 1 and how == "kill":
        # the writer was killed: what reached ffmpeg is playable (Python's pipe buffer may hold the last frame)
        assert FRAMES_BEFORE - 2 <= len(frames) <= FRAMES_BEFORE
    else:
        assert frames.shape == (FRAMES_BEFORE, 32, 32, 3)


def _slow_loader_rank(rank, world):
    def factory():
        if rank == 1:
            time.sleep(STALE_AFTER_S + 1.0)  # longer than the heartbeat staleness: rank 0 is already waiting for it
        return tiny_pp_pipeline()

    return run_pipeline_parallel(factory, switch_timeline(), num_frames=13, seed=3, timeout=10.0).frames


def test_a_rank_that_loads_slowly_is_not_a_failure():
    """A rank still building its pipeline has no heartbeat yet: the others wait for it (up to the timeout)."""
    res = launch_local(2, _slow_loader_rank, timeout=60)
    assert res == [("ok", 0), ("ok", 13)], res


def test_fault_under_the_rolling_schedule(tmp_path):
    """The same guarantees when ranks stream micro-batches of the rolling schedule: a killed middle rank
    is named by the others within the timeout and the mp4 written so far is readable."""
    out, marker = tmp_path / "v.mp4", tmp_path / "fault_time"
    res = launch_local(3, _rank, (str(out), 1, "kill", str(marker), "rolling"), timeout=60, grace=1.0)
    fault_time = float(marker.read_text())
    assert res[1][0] == "died"
    for r in (0, 2):
        status, value = res[r]
        assert status == "error" and value[0] == "PeerFailure" and value[2] == 1, (r, res[r])
        assert float(Path(f"{marker}.{r}").read_text()) - fault_time < GIVE_UP_S
    frames = read_video(out)
    assert 1 <= len(frames) < NUM_FRAMES and frames.shape[1:] == (32, 32, 3)


def _stuck_rank(rank, world):
    if rank == 1:
        _wait_here_forever()
    return rank


def _wait_here_forever():
    while True:
        time.sleep(0.05)


def test_a_hung_rank_prints_where_it_is_stuck(capfd):
    """A launch that times out with no error anywhere is a hang: the stuck rank's stack is printed before it
    is killed, so a flaky hang in CI says where it happened."""
    res = launch_local(2, _stuck_rank, timeout=3.0)
    assert res[0] == ("ok", 0) and res[1][0] == "died", res
    err = capfd.readouterr().err
    assert "_wait_here_forever" in err, err[-2000:]


def test_a_receive_posted_to_a_dead_peer_names_the_peer():
    """Gloo can refuse to post a receive on a connection that a killed peer closed (seen in the rolling schedule):
    that is the peer's failure, diagnosed like a failed wait, not a RuntimeError of this rank's own (which the
    others would then blame on this rank)."""
    import torch

    from streamgen.parallel.transport import TorchDistributedTransport

    class DeadPeer:
        def irecv(self, *a, **k):
            raise RuntimeError("Connection closed by peer [127.0.0.1]:1234\nmore")

    class Liveness:
        def diagnose(self, peer, what, timed_out):
            return PeerFailure(peer, f"rank {peer} {what}")

    t = object.__new__(TorchDistributedTransport)
    t.dist, t.group, t.liveness = DeadPeer(), None, Liveness()
    with pytest.raises(PeerFailure, match="rank 1 connection lost") as e:
        t.recv(1, 0, [torch.zeros(2)])
    assert e.value.rank == 1
