"""Point-to-point messages between pipeline stages, and the liveness checks that name a failed rank.

``Transport`` is what the runtime sees: non-blocking ``send`` of a list of tensors, blocking ``recv``
into preallocated buffers (the receiver knows every shape from the schedule), small control-plane
values (``publish`` / ``collect``) and ``barrier``. Two implementations:

* ``InProcessTransport``: ranks are threads of one process (tests; no sockets);
* ``TorchDistributedTransport``: ``torch.distributed`` ``isend`` / ``irecv`` (gloo on CPU, NCCL on GPU)
  with the rendezvous store as control plane.

Failure handling (``Liveness``): every rank publishes a heartbeat (counter, state ``busy`` / ``wait
<peer>`` / ``done``) to the key-value store from a thread. A receive that fails (peer's connection
closed) or exceeds ``timeout`` is diagnosed: an abort record left by another rank wins; otherwise
the wait chain is followed (I wait on A, A waits on B, ...) to the rank that stopped heart-beating
(killed, crashed, stopped) or, after a timeout, that is stuck computing. The diagnosing rank writes
the abort record so every rank raises the same ``PeerFailure`` naming the culprit, instead of hanging.
"""
from __future__ import annotations

import datetime
import queue
import threading
import time
from collections import defaultdict
from typing import Sequence

import torch

HOP, RING, MIGRATE = 1, 2, 3  # message tags


class PeerFailure(RuntimeError):
    """Another rank died, hung or failed; ``rank`` is the culprit (``None`` if unknown)."""

    def __init__(self, rank: int | None, message: str):
        super().__init__(message)
        self.rank = rank


# ---------------------------------------------------------------------------------------------
# Key-value stores (control plane)
# ---------------------------------------------------------------------------------------------


class DictKV:
    """Thread-safe dict with the store interface (in-process ranks)."""

    def __init__(self):
        self._d: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._d[key] = value

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._d.get(key)


class StoreKV:
    """A ``torch.distributed.Store`` (the rendezvous TCPStore) behind the same interface; non-blocking ``get``."""

    def __init__(self, store, prefix: str = "streamgen_pp/"):
        import torch.distributed as dist

        self._store = dist.PrefixStore(prefix, store)
        self._lock = threading.Lock()

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._store.set(key, value)

    def get(self, key: str) -> str | None:
        with self._lock:
            if not self._store.check([key]):
                return None
            return self._store.get(key).decode()


# ---------------------------------------------------------------------------------------------
# Liveness
# ---------------------------------------------------------------------------------------------


STALE_AFTER_S = 4.0  # default seconds without a new heartbeat before a rank counts as gone


class Liveness:
    """Heartbeat publisher and observer of one rank; diagnoses failed waits (see module doc)."""

    def __init__(self, kv, rank: int, world_size: int, *, timeout: float = 60.0, interval: float = 0.2,
                 stale_after: float | None = None):
        self.kv, self.rank, self.world_size = kv, rank, world_size
        self.timeout, self.interval = timeout, interval
        # A heartbeat thread on a loaded machine can miss seconds of beats (CI saw 2.2 s on 2 shared cores),
        # so staleness waits far longer than the beat interval; a dead process is still named within seconds.
        self.stale_after = stale_after if stale_after is not None else max(STALE_AFTER_S, 20 * interval)
        self._state, self._peer, self._since = "init", -1, time.monotonic()
        self._counter = 0
        self._seen: dict[int, tuple[int, float]] = {}  # rank -> (counter, local time it last changed)
        self._hb: dict[int, tuple[str, int, float]] = {}  # rank -> (state, peer, busy_for) last read
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.store_error: str | None = None

    # -- own state ---------------------------------------------------------------------------
    def start(self) -> "Liveness":
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"pp-heartbeat-{self.rank}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)

    def set_state(self, state: str, peer: int = -1) -> None:
        with self._lock:
            if (state, peer) != (self._state, self._peer):
                self._state, self._peer, self._since = state, peer, time.monotonic()

    def fail(self, message: str) -> None:
        """Record that this rank failed (its own error): every other rank raises with ``message``."""
        self.set_state("failed")
        self._abort(self.rank, message)
        self._beat()

    def _abort(self, culprit: int | None, message: str) -> None:
        try:
            if self.kv.get("abort") is None:
                self.kv.set("abort", f"{-1 if culprit is None else culprit}|{message}")
        except Exception:  # noqa: BLE001 - the store may be gone with the failed rank
            pass

    def _beat(self) -> None:
        with self._lock:
            self._counter += 1
            busy_for = time.monotonic() - self._since
            msg = f"{self._counter} {self._state} {self._peer} {busy_for:.3f}"
        self.kv.set(f"hb/{self.rank}", msg)

    def _observe(self) -> None:
        now = time.monotonic()
        for r in range(self.world_size):
            if r == self.rank:
                continue
            raw = self.kv.get(f"hb/{r}")
            if raw is None:
                self._seen.setdefault(r, (-1, now))
                continue
            counter, state, peer, busy_for = raw.split()
            counter = int(counter)
            if self._seen.get(r, (None,))[0] != counter:
                self._seen[r] = (counter, now)
            self._hb[r] = (state, int(peer), float(busy_for))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                self._observe()
            except Exception as e:  # noqa: BLE001 - store host gone: remembered for the diagnosis
                self.store_error = f"{type(e).__name__}: {e}"

    # -- diagnosis -----------------------------------------------------------------------------
    def check_abort(self) -> PeerFailure | None:
        try:
            raw = self.kv.get("abort")
        except Exception:  # noqa: BLE001
            return None
        if raw is None:
            return None
        culprit, message = raw.split("|", 1)
        return PeerFailure(None if int(culprit) < 0 else int(culprit), message)

    def _stale_for(self, r: int) -> float:
        counter, since = self._seen.get(r, (-1, time.monotonic()))
        return time.monotonic() - since

    def is_stale(self, r: int) -> bool:
        """No new heartbeat from ``r`` for ``stale_after`` s (``timeout`` if it never beat: it may still be loading)."""
        counter, since = self._seen.get(r, (-1, time.monotonic()))
        return time.monotonic() - since > (self.timeout if counter < 0 else self.stale_after)

    def _culprit(self, start: int, timed_out: bool, allow_cycle: bool = True) -> tuple[int, str] | None:
        r, chain = start, []
        while r is not None and 0 <= r < self.world_size and r != self.rank and r not in chain:
            chain.append(r)
            if self.is_stale(r):
                return r, f"rank {r} stopped responding: no heartbeat for {self._stale_for(r):.1f} s (killed, crashed or hung)"
            state, peer, busy_for = self._hb.get(r, ("init", -1, 0.0))
            if state == "failed":
                return r, f"rank {r} failed"
            if state == "wait":
                if peer == self.rank:  # a cycle is a deadlock only once the wait timed out (heartbeats lag)
                    ok = timed_out and allow_cycle
                    return (r, f"ranks {[self.rank, *chain]} wait on each other (schedule mismatch)") if ok else None
                r = peer
                continue
            if timed_out and state == "busy":
                return r, f"rank {r} has been computing for {busy_for:.1f} s without sending (hung, or slower than the {self.timeout:.0f} s timeout)"
            return None
        return None

    def diagnose(self, waited_on: int, what: str, timed_out: bool) -> PeerFailure:
        """The failure behind a receive from ``waited_on`` that failed (``what``) or timed out."""
        # A dead rank's last heartbeat may say it waits on us, which reads as a cycle: a cycle is only
        # called a deadlock after the staleness window, once every rank in it has been seen beating.
        deadline = time.monotonic() + self.stale_after + 3 * self.interval
        found = None
        while True:
            ab = self.check_abort()
            if ab is not None:
                return ab
            try:
                self._observe()
            except Exception as e:  # noqa: BLE001
                self.store_error = f"{type(e).__name__}: {e}"
            expired = time.monotonic() >= deadline
            found = self._culprit(waited_on, timed_out, allow_cycle=expired)
            if found is not None or expired:
                break
            time.sleep(self.interval / 2)
        if found is None:
            if self.store_error is not None and not timed_out:
                found = (0, f"rank 0 (the rendezvous store host) is gone ({self.store_error})")
            else:
                found = (waited_on, f"rank {waited_on} {what}")
        culprit, message = found
        message = f"pipeline-parallel run failed: {message} (seen by rank {self.rank})"
        self._abort(culprit, message)
        return PeerFailure(culprit, message)


# ---------------------------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------------------------


class Transport:
    """Messages between ranks; see the module doc."""

    rank: int
    world_size: int
    liveness: Liveness

    def send(self, dst: int, tag: int, tensors: Sequence[torch.Tensor]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def recv(self, src: int, tag: int, buffers: Sequence[torch.Tensor]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self) -> None:
        """Wait until every send has left."""

    # -- control plane (small strings through the store) ---------------------------------------
    def publish(self, key: str, value: str) -> None:
        self.liveness.kv.set(f"pub/{key}", value)

    def collect(self, key: str, ranks: Sequence[int] | None = None) -> list[str]:
        """Values ``publish``-ed under ``key/<rank>`` by ``ranks`` (default all), waiting for them."""
        ranks = range(self.world_size) if ranks is None else ranks
        out = {}
        t0 = time.monotonic()
        while True:
            for r in ranks:
                if r not in out:
                    v = self.liveness.kv.get(f"pub/{key}/{r}")
                    if v is not None:
                        out[r] = v
            if len(out) == len(ranks):
                return [out[r] for r in ranks]
            missing = next(r for r in ranks if r not in out)
            ab = self.liveness.check_abort()
            if ab is not None:
                raise ab
            if time.monotonic() - t0 > self.liveness.timeout:
                raise self.liveness.diagnose(missing, f"did not publish {key!r} within {self.liveness.timeout:.0f} s", True)
            if self.liveness.is_stale(missing):
                raise self.liveness.diagnose(missing, f"did not publish {key!r}", False)
            self.liveness.set_state("wait", missing)
            time.sleep(0.005)

    def barrier(self, name: str) -> None:
        self.publish(f"{name}/{self.rank}", "1")
        self.collect(name)
        self.liveness.set_state("busy")

    def close(self) -> None:
        self.liveness.stop()


class InProcessHub:
    """Shared by the in-process ranks (threads): channels and the key-value store."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.kv = DictKV()
        self.queues: dict[tuple[int, int, int], queue.Queue] = defaultdict(queue.Queue)
        self._lock = threading.Lock()

    def channel(self, src: int, dst: int, tag: int) -> queue.Queue:
        with self._lock:
            return self.queues[(src, dst, tag)]


class InProcessTransport(Transport):
    def __init__(self, hub: InProcessHub, rank: int, *, timeout: float = 60.0, interval: float = 0.05):
        self.hub, self.rank, self.world_size = hub, rank, hub.world_size
        # Threads of one process cannot die alone (a raising rank reports 'failed' itself), so missing beats
        # only mean a busy interpreter: staleness waits the full timeout.
        self.liveness = Liveness(hub.kv, rank, hub.world_size, timeout=timeout, interval=interval,
                                 stale_after=timeout).start()

    def send(self, dst, tag, tensors):
        self.hub.channel(self.rank, dst, tag).put([t.detach().clone() for t in tensors])

    def recv(self, src, tag, buffers):
        q = self.hub.channel(src, self.rank, tag)
        self.liveness.set_state("wait", src)
        t0 = time.monotonic()
        while True:
            try:
                got = q.get(timeout=self.liveness.interval)
                break
            except queue.Empty:
                ab = self.liveness.check_abort()
                if ab is not None:
                    raise ab from None
                if time.monotonic() - t0 > self.liveness.timeout:
                    raise self.liveness.diagnose(src, f"sent nothing for {self.liveness.timeout:.0f} s", True) from None
        if len(got) != len(buffers) or any(g.shape != b.shape for g, b in zip(got, buffers)):
            raise RuntimeError(f"rank {self.rank}: message from rank {src} has shapes {[tuple(g.shape) for g in got]}, "
                               f"expected {[tuple(b.shape) for b in buffers]}")
        for g, b in zip(got, buffers):
            b.copy_(g)
        self.liveness.set_state("busy")


class TorchDistributedTransport(Transport):
    """``isend`` / ``irecv`` on the default process group; the rendezvous store is the control plane.

    Gloo waits block with the timeout (a peer's death closes the connection and ends the wait at once);
    NCCL waits poll ``is_completed`` so the liveness checks run while waiting.
    """

    _runs = 0  # transports created in this process: runs in one process group get their own store keys

    def __init__(self, *, timeout: float = 60.0, interval: float = 0.2, store=None, group=None, prefix: str | None = None):
        import torch.distributed as dist

        TorchDistributedTransport._runs += 1
        prefix = prefix if prefix is not None else f"streamgen_pp/{TorchDistributedTransport._runs}/"
        self.dist, self.group = dist, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        store = store if store is not None else dist.distributed_c10d._get_default_store()
        self.liveness = Liveness(StoreKV(store, prefix), self.rank, self.world_size, timeout=timeout, interval=interval).start()
        self._pending: list[tuple[object, torch.Tensor, int]] = []

    def send(self, dst, tag, tensors):
        try:
            for t in tensors:
                t = t.contiguous()
                self._pending.append((self.dist.isend(t, dst, group=self.group, tag=tag), t, dst))
            self._pending = [p for p in self._pending if not p[0].is_completed()]
        except RuntimeError as e:  # the connection to a dead peer is gone
            raise self._lost(dst, e) from None

    def recv(self, src, tag, buffers):
        try:  # posting a receive on a connection that a dead peer closed fails at once, not in the wait
            works = [self.dist.irecv(b, src, group=self.group, tag=tag) for b in buffers]
        except RuntimeError as e:
            raise self._lost(src, e) from None
        self.liveness.set_state("wait", src)
        for w in works:
            self._wait(w, src, "sent nothing")
        self.liveness.set_state("busy")

    def flush(self):
        for w, _, dst in self._pending:
            self._wait(w, dst, "did not take a message")
        self._pending = []

    def _lost(self, peer: int, e: RuntimeError) -> PeerFailure:
        """A communication error with ``peer`` as the failure behind it (which rank died), not this rank's own."""
        return self.liveness.diagnose(peer, f"connection lost ({str(e).splitlines()[0][:160]})", False)

    def _wait(self, work, peer: int, what: str) -> None:
        timeout = self.liveness.timeout
        if self.backend == "gloo":
            try:
                work.wait(timeout=datetime.timedelta(seconds=timeout))
                return
            except RuntimeError as e:
                timed_out = "Timed out" in str(e) or "timeout" in str(e).lower() and "closure" not in str(e)
                if not timed_out:
                    raise self._lost(peer, e) from None
                raise self.liveness.diagnose(peer, f"{what} for {timeout:.0f} s", True) from None
        t0, sleep = time.monotonic(), 1e-5
        last_check = t0
        while not work.is_completed():
            now = time.monotonic()
            if now - last_check > self.liveness.interval:
                last_check = now
                ab = self.liveness.check_abort()
                if ab is not None:
                    raise ab
                if self.liveness.is_stale(peer):
                    raise self.liveness.diagnose(peer, what, False)
                if now - t0 > timeout:
                    raise self.liveness.diagnose(peer, f"{what} for {timeout:.0f} s", True)
            time.sleep(sleep)
            sleep = min(sleep * 2, 1e-3)
        work.wait()
