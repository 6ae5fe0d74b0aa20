"""Pipeline-parallel streaming: one rank's loop, and ``run_pipeline_parallel``, the entry point.

Every rank builds the same ``StreamingPipeline`` (``pipe_factory``), keeps only its blocks' weights
and builds a rolling cache for those blocks only (``new_cache(layers=...)``); rank 0 keeps the patch
and text embedding and the text encoder, the last rank the head, the VAE and the video writer. All
ranks walk the same ``StreamPlan`` in the order ``Schedule.program(rank)`` gives and check every
message header against it.

Per pass (see ``schedule``): rank 0 embeds the latents (step 0: seeded noise; later steps and the
commit: the latents the last rank sent back; re-cache: the kept clean latents) and runs its blocks;
each hop carries the hidden state and a header (pass, kind, chunk, step, frame, context id, timestep)
and, when the prompt context changes, the projected text tokens, from which each rank computes the
cross-attention K/V of its own blocks. Ranks recompute the timestep modulation from the header. The
last rank applies the head and the sampler step through ``rollout.chunk_step`` (``denoise_step``
with a ``predict`` that returns the flow the ranks computed), sends the next input back to rank 0 and,
after the last step, decodes and writes the chunk. Prompt switches follow the single-process logic
(``StreamingPipeline._apply_switch`` / ``_chunk_context`` on rank 0); a re-cache runs
``rollout.recache`` on every rank over its own blocks. The video equals the single-process one.

``sampler.schedule: rolling``: the ranks walk the ticks of ``StreamPlan.tick_passes`` (commit of the
chunk that finished last tick, re-cache refills when the entering chunk switches the prompt, then the
in-flight chunks oldest to newest as micro-batches, each at its own sigma). At a tick's first STEP every
rank builds the tick's ``JointCacheView`` on its cache and runs each chunk through ``.chunk(j)`` (the
joint plan's rows of chunk ``j``, older in-flight chunks' K/V from the tick's scratch at this stage); the
last rank runs ``chunk_step`` per chunk as ``rollout.rolling_tick`` does. Switch rule, contexts and
commits follow ``StreamingPipeline._tick``. The video equals the single-process rolling one.
"""
from __future__ import annotations

import copy
import datetime
import faulthandler
import gc
import json
import os
import pickle
import signal
import socket
import time
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..model import TokenState
from ..pipeline import StreamingPipeline, StreamState
from ..rollout import chunk_step, commit_input, recache, remember_chunk
from ..sampler import timestep
from ..timeline import Timeline
from ..video import VideoWriter, to_uint8
from .partition import Costs, balance, even, from_counts, measure_costs
from .schedule import COMMIT, KINDS, RECACHE, STEP, Schedule, StreamPlan, Work
from .transport import HOP, MIGRATE, RING, InProcessHub, InProcessTransport, PeerFailure, TorchDistributedTransport, Transport

HEADER = 8  # float64: pass index, kind, chunk, step, frame_start, context id, timestep, text tokens that follow


@dataclass
class PPResult:
    """What a rank returns. The last rank fills the video fields and gathers every rank's stats."""

    rank: int
    world_size: int
    partition: list[tuple[int, int]]
    frames: int = 0  # pixel frames written
    ttff: float | None = None  # seconds from the start barrier to the first chunk's frames
    fps: float | None = None  # frames / seconds from the start barrier to the last chunk
    steady_fps: float | None = None  # frames after the first chunk / time between first and last chunk
    bubble: float | None = None  # 1 - sum(busy) / (ranks * wall)
    stats: list[dict] = field(default_factory=list)  # per rank: busy_s, wait_s, wall_s, passes, layers
    costs: dict | None = None  # measured costs the partition came from
    rebalances: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)  # (chunk, new partition)
    latents: list[torch.Tensor] | None = None  # keep_outputs: clean latents per chunk (last rank)
    video: np.ndarray | None = None  # keep_outputs: [F, H, W, 3] uint8 (last rank)


def plan_stream(pipe: StreamingPipeline, timeline: Timeline, total_frames: int) -> StreamPlan:
    """The pass sequence ``pipe.stream(timeline, num_frames=total_frames)`` runs (same chunk count,
    re-cache before the chunks where a switch changes the prompt in ``recache`` mode)."""
    n = pipe.chunks_for(total_frames) if total_frames > 0 else 0
    rc = []
    if pipe.config.switch.mode == "recache":
        switches, prompt = pipe._switch_chunks(timeline), timeline.events[0].prompt
        for c in range(n):
            if c in switches:
                if switches[c] != prompt:
                    rc.append(c)
                prompt = switches[c]
    return StreamPlan.build(n, len(pipe.sigmas), pipe.config.cache, rc, rolling=pipe.config.sampler.schedule == "rolling")


def strip_to_stage(pipe: StreamingPipeline, layers: range, first: bool, last: bool) -> None:
    """Drop what this rank does not run: other ranks' blocks, the patch and text embedding and text
    encoder (all but rank 0), the head and the VAE (all but the last rank)."""
    m = pipe.model
    for i in range(len(m.blocks)):
        if i not in layers:
            m.blocks[i] = None
    if not first:
        m.patch_embedding = None
        m.condition_embedder.text_embedder = None
        pipe.text_encoder = None
    if not last:
        m.norm_out = None
        m.proj_out = None
        m.scale_shift_table = None
        v = pipe.vae
        pipe.vae = types.SimpleNamespace(z_dim=v.z_dim, spatial=v.spatial, temporal=v.temporal)  # geometry only
    gc.collect()
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()


class _Rank:
    """One rank's state and loop (see the module doc)."""

    def __init__(self, pipe: StreamingPipeline, transport: Transport, plan: StreamPlan, partition: list[range],
                 timeline: Timeline, seed: int, total: int, out_path, keep: bool, on_work, rebalance=None):
        self.pipe, self.tr, self.plan = pipe, transport, plan
        self.rank, self.n = transport.rank, transport.world_size
        self.first, self.last = self.rank == 0, self.rank == self.n - 1
        self.partition = list(partition)
        self.layers = partition[self.rank]
        self.rebalance = dict(rebalance or {})
        self.rebalances: list[tuple[int, list[tuple[int, int]]]] = []
        self.timed = {"blocks": 0.0, "passes": 0, "embed": 0.0, "head": 0.0, "steps": 0, "decode": 0.0, "chunks": 0}
        self.sync = pipe.device.type == "cuda" and any(v == "measure" for v in self.rebalance.values())
        self.total, self.keep, self.on_work = total, keep, on_work
        self.shape = pipe.latent_shape()
        strip_to_stage(pipe, self.layers, self.first, self.last)
        m, cfg = pipe.model, pipe.config
        self.model, self.dev, self.dtype = m, pipe.device, pipe.dtype
        self.C, self.T = cfg.cache.chunk_frames, len(pipe.sigmas)
        self.max_latent = max_latent = None if cfg.cache.bounded else max(plan.num_chunks, 1) * self.C
        self.cache = m.new_cache(cfg.cache, 1, self.shape[3], self.shape[4], max_frames=max_latent,
                                 device=self.dev, dtype=self.dtype, layers=self.layers)
        prompt = timeline.events[0].prompt
        states = ctx = None
        if self.first:
            states = pipe._text(prompt)
            ctx = m.encode_context(states)
        decoder = pipe.vae.stream_decoder() if self.last else None
        pipe.state = StreamState(self.cache, decoder, prompt, states, ctx, seed)
        self.switches = pipe._switch_chunks(timeline)
        self.program = iter(Schedule(plan, self.n).program(self.rank))
        grid = m.token_grid(self.shape[3], self.shape[4])
        self.grid, self.frames = grid, self.C // m.config.patch_size[0]
        self.hidden = torch.empty(1, self.frames * grid.tokens, m.config.dim, device=self.dev, dtype=self.dtype)
        self.lat = torch.empty(self.shape, device=self.dev, dtype=self.dtype)
        self.hdr = torch.empty(HEADER, device=self.dev, dtype=torch.float64)
        self.ctx, self.ctx_id, self.ctx_sent = ctx, 0, None
        self.local_ring: deque = deque()  # one rank: the sampler output goes straight back
        self.xs: dict[int, torch.Tensor] = {}  # last rank: current latents of the chunks in flight
        self.joint = None  # rolling: this tick's JointCacheView on this rank's cache
        self.x0: torch.Tensor | None = None  # rank 0: clean latents of the chunk being committed
        self.writer = VideoWriter(out_path, cfg.video.fps) if (self.last and out_path is not None) else None
        self.made, self.busy, self.wait, self.passes = 0, 0.0, 0.0, 0
        self.chunk_times: list[float] = []
        self.latents: list[torch.Tensor] = []
        self.videos: list[np.ndarray] = []

    # -- the stream --------------------------------------------------------------------------
    @torch.no_grad()
    def run(self) -> None:
        pipe, plan = self.pipe, self.plan
        self.t0 = time.perf_counter()
        if plan.rolling:
            return self._run_rolling()
        for c in range(plan.num_chunks):
            if c in self.rebalance:
                self._rebalance(c, self.rebalance[c])
            st = pipe.state
            if self.first:  # StreamingPipeline.stream / next_chunk, with the re-cache run as passes below
                self._switch(c)
            if c in plan.refills:
                self._refill(c)
            if self.first:
                self.ctx = pipe._chunk_context()
            for s in range(self.T):
                self._pass(self._next(STEP, c, s))
            self._pass(self._next(COMMIT, c, self.T))
            if self.first:
                remember_chunk(self.cache, st.sink_chunks, st.recent_chunks, c * self.C, self.x0)
        if next(self.program, None) is not None:
            raise RuntimeError(f"rank {self.rank}: passes left in the schedule after the stream ended")

    def _switch(self, c: int) -> None:
        """Rank 0: the prompt logic before chunk ``c`` (rolling: when ``c`` enters), re-cache left to the passes."""
        pipe, st, plan = self.pipe, self.pipe.state, self.plan
        if c in self.switches and st.pending_prompt is None:
            st.pending_prompt = self.switches[c]
        will_recache = False
        if st.pending_prompt is not None:
            prompt, st.pending_prompt = st.pending_prompt, None
            will_recache = pipe._apply_switch(prompt, recache=False)
        if will_recache != (c in plan.refills):
            raise RuntimeError(f"rank 0: the prompt logic {'re-caches' if will_recache else 'does not re-cache'} "
                               f"before chunk {c}, the plan disagrees")

    def _refill(self, c: int) -> None:
        st = self.pipe.state
        if self.first:
            sink, recent = st.sink_chunks, st.recent_chunks
        else:  # placeholders: the kept latents live on rank 0, the other ranks get hidden states
            sink, recent = [], deque((f, None) for f in self.plan.refills[c])
        recache(self.cache, sink, recent, lambda lat, fs: self._pass(self._next(RECACHE, c, fs), lat))

    def _run_rolling(self) -> None:
        """The rolling schedule (``StreamingPipeline._tick``), one tick of ``plan.tick_passes()`` at a time."""
        pipe, plan, C = self.pipe, self.plan, self.C
        st = pipe.state
        for k, tick in enumerate(plan.tick_passes()):
            if k in self.rebalance:  # keyed by the entering chunk (= tick); nothing in flight lives in the cache
                self._rebalance(k, self.rebalance[k])
            for w in tick:
                if w.kind == COMMIT:  # the chunk that finished last tick, under last tick's context
                    self._pass(self._next(COMMIT, w.chunk, self.T))
                    if self.first:
                        remember_chunk(self.cache, st.sink_chunks, st.recent_chunks, w.chunk * C, self.x0)
            if k < plan.num_chunks:
                if self.first:
                    self._switch(k)
                if k in plan.refills:
                    self._refill(k)
                if self.first:
                    self.ctx = pipe._chunk_context()  # the tick's context (drain ticks keep the last one)
            fly = [w for w in tick if w.kind == STEP]
            if fly:
                self.joint = self.cache.joint_view(fly[0].frame_start, len(fly))
                for w in fly:
                    self._pass(self._next(STEP, w.chunk, w.step))
                self.joint = None
        if next(self.program, None) is not None:
            raise RuntimeError(f"rank {self.rank}: passes left in the schedule after the stream ended")

    def _next(self, kind: str, chunk: int, step_or_frame: int) -> Work:
        w = next(self.program, None)
        ok = w is not None and w.kind == kind and w.chunk == chunk and (
            w.frame_start == step_or_frame if kind == RECACHE else w.step == step_or_frame)
        if not ok:
            raise RuntimeError(f"rank {self.rank}: the stream needs {kind} {step_or_frame} of chunk {chunk}, "
                               f"the schedule says {w}")
        return w

    # -- one pass --------------------------------------------------------------------------------
    def _pass(self, w: Work, lat: torch.Tensor | None = None) -> None:
        t_start, wait0 = time.perf_counter(), self.wait
        m = self.model
        if self.first:
            x, t, ctx = self._first_input(w, lat)
            state = m.embed(x, t, pooled=ctx.pooled)
            if ctx is not self.ctx_sent:
                self.ctx_id, self.ctx_sent = self.ctx_id + 1, ctx
                tokens = ctx.tokens
            else:
                tokens = None
        else:
            hdr = self._recv(self.rank - 1, HOP, [self.hdr, self.hidden])
            self._check(hdr, w, "hop")
            t = torch.tensor(hdr[6], dtype=torch.float32, device=self.dev)
            ctx_id, n_text = int(hdr[5]), int(hdr[7])
            tokens = None
            if n_text:
                tokens = torch.empty(1, n_text, m.config.dim, device=self.dev, dtype=self.dtype)
                self._recv(self.rank - 1, HOP, [tokens])
                self.ctx, self.ctx_id = m.context_from_tokens(tokens), ctx_id
            elif ctx_id != self.ctx_id:
                raise RuntimeError(f"rank {self.rank}: pass {w} uses prompt context {ctx_id} it never received")
            ctx = self.ctx
            mod, temb = m.embed_timestep(t, 1, self.C, self.dtype, self.dev, ctx.pooled)
            state = TokenState(self.hidden, mod, temb, self.grid, self.frames)
        if self.first:
            self.timed["embed"] += self._clock() - t_start - (self.wait - wait0)
        t_blocks = self._clock()
        if self.joint is not None and w.kind == STEP:  # rolling: this chunk's rows of the tick's joint plan
            view = self.joint.chunk((w.frame_start - self.joint.frame_start) // self.C)
        else:
            view = self.cache.view(w.frame_start, self.C, write=w.writes)
        state = m.run_blocks(state, ctx, view, self.layers)
        if w.writes:
            self.cache.commit(view)
        self.timed["blocks"] += self._clock() - t_blocks
        self.timed["passes"] += 1
        header = self._header(w, self.ctx_id, float(t), 0 if tokens is None else tokens.shape[1])
        if not self.last:
            self.tr.send(self.rank + 1, HOP, [header, state.hidden])
            if tokens is not None:
                self.tr.send(self.rank + 1, HOP, [tokens])
        elif w.kind == STEP:
            t_head = self._clock()
            self._sample(w, state, t)
            self.timed["head"] += self._clock() - t_head - self.timed.pop("_decode_now", 0.0)
            self.timed["steps"] += 1
        self.passes += 1
        self.busy += (time.perf_counter() - t_start) - (self.wait - wait0)
        if self.on_work is not None:
            self.on_work(self.rank, w)

    def _first_input(self, w: Work, lat):
        pipe = self.pipe
        if w.kind == STEP:
            x = pipe._step_noise(w.chunk, 0) if w.step == 0 else self._ring_recv(w)
            t = timestep(torch.as_tensor(pipe.sigmas[w.step], dtype=torch.float32, device=self.dev))
            return x, t, self.ctx
        if w.kind == COMMIT:
            lat = self.x0 = self._ring_recv(w)
            ctx = self.ctx  # the chunk's own context (blend), as StreamingPipeline.next_chunk commits
        else:
            ctx = pipe.state.context  # re-cache under the new prompt
        sigma, noise = pipe._context_noise(lat.shape, w.frame_start)
        x, t = commit_input(lat, sigma, noise)
        return x, t, ctx

    def _sample(self, w: Work, state: TokenState, t: torch.Tensor) -> None:
        """Last rank: head, sampler step, latents back to rank 0; decode after the last step."""
        pipe, c, s = self.pipe, w.chunk, w.step
        x_in = pipe._step_noise(c, 0) if s == 0 else self.xs.pop(c)
        flow = self.model.output(self.model.head(state, (1, self.model.config.out_channels, *self.shape[2:])), x_in, t)

        def predict(x, t_sampler):
            if x is not x_in or not torch.equal(t_sampler, t):
                raise RuntimeError(f"rank {self.rank}: the ranks embedded timestep {float(t)} for chunk {c} step {s}, "
                                   f"the sampler asks for {float(t_sampler)}")
            return flow

        x0, x_next = chunk_step(predict, x_in, pipe.sigmas, s, lambda i: pipe._step_noise(c, i))
        final = s == self.T - 1
        out = x0 if final else x_next
        if self.n == 1:
            self.local_ring.append((w, out))
        else:
            self.tr.send(0, RING, [self._header(w, self.ctx_id, float(t), 0), out])
        if not final:
            self.xs[c] = x_next
        else:
            self._emit(c, x0)

    def _emit(self, c: int, x0: torch.Tensor) -> None:
        t_dec = self._clock()
        frames = to_uint8(self.pipe.state.decoder.decode(x0.to(torch.float32)))
        if self.made + len(frames) > self.total:
            frames = frames[: self.total - self.made]
        self.made += len(frames)
        if self.writer is not None:
            self.writer.append(frames)
        if self.keep:
            self.latents.append(x0.detach().cpu().clone())
            self.videos.append(frames)
        self.chunk_times.append(time.perf_counter() - self.t0)
        dt = self._clock() - t_dec
        self.timed["decode"] += dt
        self.timed["_decode_now"] = dt
        self.timed["chunks"] += 1

    def _clock(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.dev)
        return time.perf_counter()

    # -- re-balancing ----------------------------------------------------------------------------
    def _rebalance(self, chunk: int, spec) -> None:
        """Move blocks (weights and K/V cache) between ranks at a chunk boundary, to block counts
        ``spec`` or, with ``"measure"``, to the balance of what every rank measured so far."""
        L = len(self.model.blocks)
        if spec == "measure":
            t = self.timed
            mine = dict(block=t["blocks"] / max(t["passes"], 1) / len(self.layers), embed=t["embed"] / max(t["passes"], 1),
                        head=t["head"] / max(t["steps"], 1), decode=t["decode"] / max(t["chunks"], 1))
            self.tr.publish(f"rebalance{chunk}/{self.rank}", json.dumps(mine))
            got = [json.loads(v) for v in self.tr.collect(f"rebalance{chunk}")]
            block = [got[r]["block"] for r, p in enumerate(self.partition) for _ in p]
            costs = Costs(block, embed=got[0]["embed"], head=got[-1]["head"], decode=got[-1]["decode"])
            new = balance(costs, self.n, self.T)
        else:
            new = from_counts(spec, L)
        self.tr.liveness.set_state("busy")
        if new != self.partition:
            self._migrate(new)
        self.rebalances.append((chunk, [(p.start, p.stop) for p in new]))

    def _migrate(self, new: list[range]) -> None:
        m, old_cache = self.model, self.cache
        owner = lambda part, i: next(r for r, p in enumerate(part) if i in p)  # noqa: E731
        old_layers, new_layers = self.layers, new[self.rank]
        li = lambda c, i: i - c.first_layer  # noqa: E731
        for i in old_layers:  # blocks leaving this rank: weights, then the layer's K/V (sink and ring)
            if i not in new_layers:
                c = old_cache
                payload = list(m.blocks[i].state_dict().values()) + [c.k[li(c, i)], c.v[li(c, i)], c.sink_k[li(c, i)], c.sink_v[li(c, i)]]
                self.tr.send(owner(new, i), MIGRATE, payload)
        template = m.blocks[old_layers.start]
        cache = m.new_cache(self.pipe.config.cache, 1, self.shape[3], self.shape[4], max_frames=self.max_latent,
                            device=self.dev, dtype=self.dtype, layers=new_layers)
        cache.state = copy.deepcopy(old_cache.state)
        for i in new_layers:
            j = li(cache, i)
            if i in old_layers:
                for name in ("k", "v", "sink_k", "sink_v"):
                    getattr(cache, name)[j] = getattr(old_cache, name)[li(old_cache, i)]
                continue
            blk = copy.deepcopy(template)
            sd = blk.state_dict()
            bufs = [torch.empty_like(v) for v in sd.values()] + [torch.empty_like(cache.k[j]), torch.empty_like(cache.v[j]),
                                                                 torch.empty_like(cache.sink_k[j]), torch.empty_like(cache.sink_v[j])]
            self._recv(owner(self.partition, i), MIGRATE, bufs)
            blk.load_state_dict(dict(zip(sd.keys(), bufs[: len(sd)])))
            m.blocks[i] = blk
            cache.k[j], cache.v[j], cache.sink_k[j], cache.sink_v[j] = bufs[len(sd):]
        for i in old_layers:
            if i not in new_layers:
                m.blocks[i] = None
        self.tr.flush()
        self.cache = self.pipe.state.cache = cache
        self.layers, self.partition = new_layers, list(new)
        # cross-attention K/V for the blocks now held
        st = self.pipe.state
        if self.first:
            old, st.context = st.context, m.context_from_tokens(st.context.tokens)  # a new object: sent as a new context
            if self.ctx is not None:  # rolling: the context of the tick being committed lives across the move
                self.ctx = st.context if self.ctx is old else m.context_from_tokens(self.ctx.tokens)
        elif self.ctx is not None:
            self.ctx = m.context_from_tokens(self.ctx.tokens)

    # -- messages ------------------------------------------------------------------------------
    def _header(self, w: Work, ctx_id: int, t: float, n_text: int) -> torch.Tensor:
        v = [w.index, KINDS.index(w.kind), w.chunk, w.step, w.frame_start, ctx_id, t, n_text]
        return torch.tensor(v, dtype=torch.float64, device=self.dev)

    def _recv(self, src: int, tag: int, buffers: Sequence[torch.Tensor]) -> list[float]:
        t0 = time.perf_counter()
        self.tr.recv(src, tag, buffers)
        self.wait += time.perf_counter() - t0
        return buffers[0].tolist() if buffers[0] is self.hdr else []

    def _check(self, hdr: list[float], w: Work, what: str) -> None:
        got = (int(hdr[0]), KINDS[int(hdr[1])], int(hdr[2]), int(hdr[3]), int(hdr[4]))
        if got != (w.index, w.kind, w.chunk, w.step, w.frame_start):
            raise RuntimeError(f"rank {self.rank}: {what} message is pass {got}, the schedule expects {w}")

    def _ring_recv(self, w: Work) -> torch.Tensor:
        want = (STEP, w.chunk, w.step - 1 if w.kind == STEP else self.T - 1)
        if self.n == 1:
            src, x = self.local_ring.popleft()
            got = (src.kind, src.chunk, src.step)
        else:
            hdr = self._recv(self.n - 1, RING, [self.hdr, self.lat])
            got = (KINDS[int(hdr[1])], int(hdr[2]), int(hdr[3]))
            x = self.lat.clone()
        if got != want:
            raise RuntimeError(f"rank 0: ring message is the output of {got}, {w} needs {want}")
        return x

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def resolve_partition(partition, pipe: StreamingPipeline, transport: Transport, steps: int):
    """Block ranges per rank (and the measured costs, if measured): ``"measure"`` (rank 0 times the
    blocks, head and VAE; every rank balances the same numbers), ``"even"``, or block counts per rank."""
    L, n = len(pipe.model.blocks), transport.world_size
    if isinstance(partition, str):
        if partition == "even":
            return even(L, n), None
        if partition != "measure":
            raise ValueError(f"partition must be 'measure', 'even' or block counts per rank, got {partition!r}")
        if n == 1:
            return [range(L)], None
        if transport.rank == 0:
            transport.publish("costs/0", json.dumps(measure_costs(pipe).to_dict()))
        costs = Costs.from_dict(json.loads(transport.collect("costs", [0])[0]))
        return balance(costs, n, steps), costs.to_dict()
    counts = list(partition)
    if len(counts) != n:
        raise ValueError(f"partition {counts} has {len(counts)} entries for {n} ranks")
    return from_counts(counts, L), None


def run_rank(pipe: StreamingPipeline, transport: Transport, timeline: Timeline | str, *, total_frames: int,
             out_path=None, seed: int = 0, partition="measure", keep_outputs: bool = False,
             on_work: Callable[[int, Work], None] | None = None, rebalance=None) -> PPResult:
    """Run this rank's part of the stream over ``transport`` (see ``run_pipeline_parallel``)."""
    rank, n = transport.rank, transport.world_size
    timeline = timeline if isinstance(timeline, Timeline) else Timeline.single(timeline)
    runner = None
    try:
        if n > len(pipe.model.blocks):
            raise ValueError(f"{n} ranks for a model with {len(pipe.model.blocks)} blocks: each rank needs at least one")
        transport.barrier("setup")
        parts, costs = resolve_partition(partition, pipe, transport, len(pipe.sigmas))
        plan = plan_stream(pipe, timeline, total_frames)
        runner = _Rank(pipe, transport, plan, parts, timeline, seed, total_frames, out_path, keep_outputs, on_work, rebalance)
        transport.barrier("start")
        t_start = time.perf_counter()
        runner.run()
        runner.close()
        transport.flush()
        wall = time.perf_counter() - t_start
        mine = dict(rank=rank, layers=[runner.layers.start, runner.layers.stop], busy_s=runner.busy,
                    wait_s=runner.wait, wall_s=wall, passes=runner.passes,
                    param_bytes=sum(p.numel() * p.element_size() for p in pipe.model.parameters()),
                    cache_bytes=runner.cache.nbytes())
        transport.publish(f"stats/{rank}", json.dumps(mine))
        res = PPResult(rank, n, [(p.start, p.stop) for p in runner.partition], costs=costs, rebalances=runner.rebalances)
        if runner.last:
            res.stats = [json.loads(s) for s in transport.collect("stats")]
            res.frames = runner.made
            ct = runner.chunk_times
            if ct:
                res.ttff = ct[0]
                res.fps = runner.made / ct[-1]
                first_frames = min(runner.made, pipe.chunk_pixel_frames(0))
                res.steady_fps = (runner.made - first_frames) / (ct[-1] - ct[0]) if len(ct) > 1 else None
            wall_all = max(s["wall_s"] for s in res.stats)
            res.bubble = 1.0 - sum(s["busy_s"] for s in res.stats) / (n * wall_all) if wall_all > 0 else None
            if keep_outputs:
                res.latents = runner.latents
                res.video = np.concatenate(runner.videos) if runner.videos else np.zeros((0, 0, 0, 3), np.uint8)
        transport.barrier("end")
        transport.liveness.set_state("done")
        return res
    except PeerFailure:
        transport.liveness.set_state("aborted")
        raise
    except BaseException as e:
        transport.liveness.fail(f"pipeline-parallel run failed: rank {rank} raised {type(e).__name__}: {e}")
        raise
    finally:
        if runner is not None:
            runner.close()
        transport.close()


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there (torchrun sets ``LOCAL_RANK``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def run_pipeline_parallel(pipe_factory: Callable[[], StreamingPipeline], timeline: Timeline | str,
                          seconds: float | None = None, out_path=None, seed: int = 0, *, num_frames: int | None = None,
                          world_size: int | None = None, partition="measure", timeout: float = 120.0,
                          transport: Transport | None = None, keep_outputs: bool = False,
                          on_work: Callable[[int, Work], None] | None = None, rebalance=None) -> PPResult:
    """Generate one stream with the DiT blocks split over ranks; call it on every rank.

    Under ``torchrun --nproc_per_node=N`` (or any ``env://`` launch) the process group is created here
    (NCCL when the pipeline is on a GPU, gloo on the CPU) unless it exists. ``pipe_factory()`` builds
    this rank's pipeline (use ``local_device()`` for the device); the last rank writes ``out_path``.
    ``partition``: ``"measure"`` (balance measured per-block cost, head and VAE counted), ``"even"`` or
    block counts per rank. ``rebalance``: ``{chunk: "measure" | block counts}`` moves blocks (weights and
    K/V) between ranks before that chunk, to the balance of the stage times measured so far or to the
    given counts. A rank that dies, fails or sends nothing for ``timeout`` seconds makes every rank
    raise ``PeerFailure`` naming it; the mp4 written so far stays playable.
    """
    pipe = pipe_factory()
    total = num_frames if num_frames is not None else int(round(seconds * pipe.config.video.fps)) if seconds is not None else None
    if total is None:
        raise ValueError("pipeline-parallel generation needs seconds or num_frames (a finite stream)")
    created = False
    if transport is None:
        import torch.distributed as dist

        if pipe.device.type == "cuda":
            torch.cuda.set_device(pipe.device)  # NCCL peer-to-peer on this rank's GPU
        if not dist.is_initialized():
            backend = "nccl" if pipe.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=max(timeout, 60.0)))
            created = True
        transport = TorchDistributedTransport(timeout=timeout)
    if world_size is not None and world_size != transport.world_size:
        raise ValueError(f"asked for {world_size} pipeline stages but {transport.world_size} ranks are running "
                         f"(launch with torchrun --nproc_per_node={world_size})")
    ok = False
    try:
        res = run_rank(pipe, transport, timeline, total_frames=total, out_path=out_path, seed=seed,
                       partition=partition, keep_outputs=keep_outputs, on_work=on_work, rebalance=rebalance)
        ok = True
        return res
    finally:
        if created and ok:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Local launchers (tests, benchmarks, debugging)
# ---------------------------------------------------------------------------------------------


def run_threads(pipe_factory: Callable[[], StreamingPipeline], timeline, world_size: int, *, timeout: float = 30.0,
                **kw) -> list[PPResult | BaseException]:
    """Every rank as a thread of this process (``InProcessTransport``): results or exceptions per rank."""
    import threading

    hub = InProcessHub(world_size)
    out: list = [None] * world_size

    def main(r):
        try:
            out[r] = run_pipeline_parallel(pipe_factory, timeline, transport=InProcessTransport(hub, r, timeout=timeout), **kw)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            out[r] = e

    threads = [threading.Thread(target=main, args=(r,), name=f"pp-rank-{r}") for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_main(rank, world_size, port, threads, target, args, results):
    code = 0
    # a rank the launcher finds hung prints every thread's stack on SIGUSR1 before it is killed
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        torch.set_num_threads(threads)
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", port, world_size + 1, is_master=False, timeout=datetime.timedelta(seconds=60))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=300))
        # plain pickle: torch's queue reductions share tensors through this process, which exits now
        results.put((rank, "ok", pickle.dumps(target(rank, world_size, *args))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        code = 1
        results.put((rank, "error", (type(e).__name__, str(e), getattr(e, "rank", None))))
    finally:
        results.close()
        results.join_thread()  # flush the queue's feeder thread before leaving
        os._exit(code)  # no process-group teardown: it could wait on a dead peer


def launch_local(world_size: int, target: Callable, args: tuple = (), *, threads: int = 1, timeout: float = 300.0,
                 start_method: str = "fork", grace: float = 5.0) -> list[tuple[str, object]]:
    """Run ``target(rank, world_size, *args)`` in ``world_size`` local processes joined by a gloo
    process group (the rendezvous store lives in this process, so it survives any rank). Returns per
    rank ``("ok", result)``, ``("error", (type, message, culprit))`` or ``("died", exitcode)``. Like
    torchrun, ranks still running ``grace`` seconds after the first error are killed."""
    import multiprocessing as mp

    import torch.distributed as dist

    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, world_size + 1, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(r, world_size, port, threads, target, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    got: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < world_size and time.monotonic() < deadline:
        try:
            r, status, value = results.get(timeout=0.1)
            got[r] = (status, pickle.loads(value) if status == "ok" else value)
            if status == "error":
                deadline = min(deadline, time.monotonic() + grace)
        except Exception:  # noqa: BLE001 - queue.Empty
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    for r, p in enumerate(procs):
        p.join(timeout=max(0.0, deadline - time.monotonic()) if r not in got else 5.0)
        if p.is_alive():
            if r not in got and time.monotonic() >= deadline and not any(s == "error" for s, _ in got.values()):
                # a timeout with no error anywhere is a hang: show where this rank is stuck
                os.kill(p.pid, signal.SIGUSR1)
                p.join(timeout=1.0)
            p.kill()
            p.join()
        if r not in got:
            got[r] = ("died", p.exitcode)
    del store
    return [got[r] for r in range(world_size)]
