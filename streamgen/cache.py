"""Rolling KV cache, sink policies and position policies: everything block-causal attention needs.

Vocabulary (all in latent frames; tokens per frame come from the patch grid):

* chunk: ``C = chunk_frames`` frames denoised together; chunk ``c`` covers ``[c*C, (c+1)*C)``.
* window: a query in a chunk ending at frame ``e`` sees the ``W = window_frames`` frames
  ``[e - W, e)`` (its own chunk included) that are not sink frames.
* sink: the first ``S = sink_frames`` frames, always visible, kept by a ``SinkPolicy``
  (``anchor`` pins them, ``ema`` blends every evicted chunk into them, ``deep`` pins a large
  sink and re-aligns its RoPE phase to sit just before the window).
* position policy: ``absolute`` gives every frame its generation index as temporal RoPE position;
  ``rebased`` subtracts a per-chunk offset so the sink sits at ``[0, S)`` and the window right after
  it; positions stay bounded, so a stream of any length never leaves the trained range.

The pure functions below define visibility and positions once. ``RollingKVCache`` implements them
with constant memory for streaming; ``BlockCausalPlan`` implements the same attention on a full
sequence with an explicit mask (training, and the reference the streaming path is tested against).
Keys are stored without RoPE; rotation happens at read time from the positions of this chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import FrameMask, attention, frame_mask
from .config import CacheConfig
from .rope import apply_rope, rope_angles, rope_cos_sin

# ---------------------------------------------------------------------------------------------
# Pure geometry: which frames a chunk sees and at which temporal positions.
# ---------------------------------------------------------------------------------------------


def sink_valid_frames(cfg: CacheConfig, frame_start: int) -> int:
    """Sink frames already generated before a chunk starting at ``frame_start``."""
    return min(cfg.sink_frames, frame_start)


def window_start(cfg: CacheConfig, frame_start: int, num_frames: int) -> int:
    """First non-sink frame visible to a chunk ``[frame_start, frame_start + num_frames)``."""
    lo = min(cfg.sink_frames, frame_start)
    if not cfg.bounded:
        return lo
    return max(lo, frame_start + num_frames - cfg.window_frames)


def sink_realigned(cfg: CacheConfig) -> bool:
    """True when the sink's temporal phase is moved to sit just before the window."""
    return cfg.sink_policy == "deep" or cfg.position_policy == "rebased"


def position_offset(cfg: CacheConfig, frame_start: int, num_frames: int) -> int:
    """Subtracted from absolute positions. ``rebased``: the visible sink starts at position 0."""
    if cfg.position_policy == "absolute":
        return 0
    return window_start(cfg, frame_start, num_frames) - sink_valid_frames(cfg, frame_start)


def sink_positions(cfg: CacheConfig, frame_start: int, num_frames: int) -> list[int]:
    """Temporal positions of the visible sink frames, offset included."""
    s = sink_valid_frames(cfg, frame_start)
    base = window_start(cfg, frame_start, num_frames) - s if sink_realigned(cfg) else 0
    off = position_offset(cfg, frame_start, num_frames)
    return [base + i - off for i in range(s)]


def frame_positions(cfg: CacheConfig, frames: list[int], frame_start: int, num_frames: int) -> list[int]:
    """Temporal positions of window / query frames (given by absolute index) for this chunk."""
    off = position_offset(cfg, frame_start, num_frames)
    return [f - off for f in frames]


# ---------------------------------------------------------------------------------------------
# Sink policies: one small class each, one interface.
# ---------------------------------------------------------------------------------------------


class SinkPolicy:
    """What happens to the sink. Subclasses override only what differs."""

    name = "none"
    # Recompute the sink from its clean latents on a prompt re-cache (False: keep it as it is).
    recache_sink = True

    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg

    def on_evict(self, sink_k: torch.Tensor, sink_v: torch.Tensor, old_k: torch.Tensor, old_v: torch.Tensor) -> None:
        """Called with a chunk's K/V just before it leaves the window. In place. Default: drop it."""


class AnchorSink(SinkPolicy):
    """The first chunk(s) stay pinned (LongLive frame sink / StreamingLLM attention sink)."""

    name = "anchor"


class EmaSink(SinkPolicy):
    """Sink initialised from the first chunk and updated with every evicted chunk (Reward Forcing)."""

    name = "ema"
    recache_sink = False  # its content is a blend of frames no longer stored: keep it

    def on_evict(self, sink_k, sink_v, old_k, old_v):
        a = self.cfg.ema_decay
        sink_k.mul_(a).add_(old_k, alpha=1.0 - a)
        sink_v.mul_(a).add_(old_v, alpha=1.0 - a)


class DeepSink(AnchorSink):
    """A large pinned sink whose RoPE phase is re-aligned to just before the window (Deep Forcing)."""

    name = "deep"


SINK_POLICY_CLASSES: dict[str, type[SinkPolicy]] = {
    c.name: c for c in (SinkPolicy, AnchorSink, EmaSink, DeepSink)
}


def make_sink_policy(cfg: CacheConfig) -> SinkPolicy:
    return SINK_POLICY_CLASSES[cfg.sink_policy](cfg)


# ---------------------------------------------------------------------------------------------
# Streaming: the rolling cache.
# ---------------------------------------------------------------------------------------------


@dataclass
class CacheState:
    """Host-side bookkeeping (plain ints: nothing here touches the device)."""

    next_frame: int = 0  # start frame of the next chunk to commit
    sink_filled: int = 0  # sink frames holding data
    slot_frame: list[int] = field(default_factory=list)  # frame index held by each ring frame slot, -1 = empty


@dataclass
class TokenGrid:
    """Patch grid of one latent frame."""

    height: int
    width: int

    @property
    def tokens(self) -> int:
        return self.height * self.width


class RollingKVCache:
    """Per-layer self-attention K/V of past chunks in constant memory.

    Storage per layer: a sink buffer of ``S`` frames and a ring of ``R`` frame slots, where
    ``R = W - C`` (the past frames a chunk can see) for a bounded window, or ``max_frames - S``
    for an unbounded one. Tensors are ``[num_layers, B, frames * tokens_per_frame, H, D]``.
    """

    def __init__(
        self,
        cfg: CacheConfig,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        grid: TokenGrid,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_frames: int | None = None,
        rope_theta: float = 10000.0,
        first_layer: int = 0,
    ):
        cfg.validate()
        self.cfg, self.grid = cfg, grid
        self.num_layers, self.head_dim, self.rope_theta = num_layers, head_dim, rope_theta
        self.first_layer = first_layer  # model layer stored at index 0 (a pipeline stage caches layers [first, first + num))
        self.policy = make_sink_policy(cfg)
        if cfg.bounded:
            ring = cfg.window_frames - cfg.chunk_frames
        else:
            if max_frames is None:
                raise ValueError("an unbounded window (cache.window_frames=-1) needs max_frames for the cache")
            ring = max(max_frames - cfg.sink_frames, 0)
        self.ring_frames = ring
        t = grid.tokens
        shape = (num_layers, batch_size, ring * t, num_heads, head_dim)
        sink_shape = (num_layers, batch_size, cfg.sink_frames * t, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.sink_k = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.sink_v = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.state = CacheState(slot_frame=[-1] * ring)

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def next_frame(self) -> int:
        return self.state.next_frame

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.k, self.v, self.sink_k, self.sink_v))

    def reset(self, keep_sink: bool = False) -> None:
        """Forget the window (and the sink unless ``keep_sink``). Host state only: no device work."""
        self.state.slot_frame = [-1] * self.ring_frames
        if not keep_sink:
            self.state.sink_filled = 0
        self.state.next_frame = 0

    def _slot(self, frame: int) -> int:
        return (frame - self.cfg.sink_frames) % self.ring_frames

    def visible_ring(self, lo: int, hi: int) -> tuple[torch.Tensor | slice, list[int]]:
        """Token index into the ring of the slots holding frames in ``[lo, hi)`` (in slot order: attention
        does not care about order), and those frames. A slice when they are a prefix (no gather)."""
        slots = [i for i, f in enumerate(self.state.slot_frame) if lo <= f < hi]
        frames = [self.state.slot_frame[i] for i in slots]
        t = self.grid.tokens
        if slots == list(range(len(slots))):
            return slice(0, len(slots) * t), frames
        tok = torch.tensor(slots)[:, None] * t + torch.arange(t)[None, :]
        return tok.reshape(-1).to(self.k.device), frames

    def view(self, frame_start: int | None = None, num_frames: int | None = None, write: bool = False) -> "CacheView":
        """Attention for one chunk (read the past; with ``write``, store this chunk's K/V)."""
        c = self.cfg
        start = self.state.next_frame if frame_start is None else frame_start
        n = c.chunk_frames if num_frames is None else num_frames
        if start % c.chunk_frames or n != c.chunk_frames:
            raise ValueError(f"chunks must be aligned: frame_start={start}, num_frames={n}, chunk_frames={c.chunk_frames}")
        return CacheView(self, start, n, write)

    def joint_view(self, frame_start: int, num_chunks: int) -> "JointCacheView":
        """Read-only attention for ``num_chunks`` in-flight chunks starting at ``frame_start`` (rolling schedule)."""
        return JointCacheView(self, frame_start, num_chunks)

    def commit(self, view: "CacheView") -> None:
        """Record on the host that ``view``'s chunk was written to every layer."""
        s = self.state
        for f in range(view.frame_start, view.frame_start + view.num_frames):
            if f < self.cfg.sink_frames:
                s.sink_filled = max(s.sink_filled, f + 1)
            else:
                s.slot_frame[self._slot(f)] = f
        s.next_frame = view.frame_start + view.num_frames


class CacheView:
    """The read/write plan of one chunk: computed once on the host, used by every layer."""

    def __init__(self, cache: RollingKVCache, frame_start: int, num_frames: int, write: bool):
        cfg, t = cache.cfg, cache.grid.tokens
        self.cache, self.frame_start, self.num_frames, self.write = cache, frame_start, num_frames, write
        ws = window_start(cfg, frame_start, num_frames)
        s_valid = sink_valid_frames(cfg, frame_start)
        if s_valid > cache.state.sink_filled:
            raise RuntimeError(
                f"chunk at frame {frame_start} needs {s_valid} sink frames but the cache holds "
                f"{cache.state.sink_filled}: generate (or re-cache) the sink chunks first"
            )
        self.sink_tokens = s_valid * t
        # Ring slots whose frame is visible, in slot order (attention does not care about order).
        self.ring_index, frames = cache.visible_ring(ws, frame_start)
        # Rotation angles of every key (sink, ring, current chunk) and of the queries.
        g, hd, th = cache.grid, cache.head_dim, cache.rope_theta
        query_frames = list(range(frame_start, frame_start + num_frames))
        key_pos = sink_positions(cfg, frame_start, num_frames) + frame_positions(cfg, frames, frame_start, num_frames)
        q_pos = frame_positions(cfg, query_frames, frame_start, num_frames)
        self.key_positions, self.query_positions = key_pos, q_pos
        dev = cache.k.device
        self.past_rope = rope_cos_sin(rope_angles(key_pos, g.height, g.width, hd, th), torch.float32, dev)
        self.query_rope = rope_cos_sin(rope_angles(q_pos, g.height, g.width, hd, th), torch.float32, dev)
        # Where this chunk goes when written.
        self.write_sink = frame_start < cfg.sink_frames
        if write and not self.write_sink:
            if cache.ring_frames == 0:
                raise RuntimeError("the cache has no ring slots (window_frames == chunk_frames): nothing to write")
            first = cache._slot(frame_start)
            occupied = cache.state.slot_frame[first : first + num_frames]
            if not cfg.bounded and any(f >= 0 for f in occupied):
                raise RuntimeError(
                    f"unbounded cache is full at frame {frame_start}: raise max_frames or set cache.window_frames"
                )
            self.evicts = any(f >= 0 for f in occupied)
            self.write_slice = slice(first * t, (first + num_frames) * t)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        """Self-attention of this chunk's tokens. ``q, k, v``: ``[B, L, H, D]`` without RoPE."""
        c = self.cache
        layer -= c.first_layer
        past_k = torch.cat([c.sink_k[layer, :, : self.sink_tokens], c.k[layer][:, self.ring_index]], dim=1)
        past_v = torch.cat([c.sink_v[layer, :, : self.sink_tokens], c.v[layer][:, self.ring_index]], dim=1)
        qr = apply_rope(q, *self.query_rope)
        keys = torch.cat([apply_rope(past_k, *self.past_rope), apply_rope(k, *self.query_rope)], dim=1)
        values = torch.cat([past_v, v], dim=1)
        out = attention(qr, keys, values, None, backend)
        if self.write:
            self._store(layer, k, v)
        return out

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        c, t = self.cache, self.cache.grid.tokens
        k, v = k.detach(), v.detach()  # the cache never carries gradient (Self-Forcing rollouts)
        if self.write_sink:
            sl = slice(self.frame_start * t, (self.frame_start + self.num_frames) * t)
            c.sink_k[layer, :, sl] = k
            c.sink_v[layer, :, sl] = v
            return
        if self.evicts:
            c.policy.on_evict(c.sink_k[layer], c.sink_v[layer], c.k[layer, :, self.write_slice], c.v[layer, :, self.write_slice])
        c.k[layer, :, self.write_slice] = k
        c.v[layer, :, self.write_slice] = v


class JointCacheView:
    """Read-only attention plan of ``num_chunks`` consecutive in-flight chunks in ONE forward (the
    ``rolling`` schedule). Computed once on the host per tick, used by every layer.

    Attention rule: in-flight chunk ``j`` (frames ``[s_j, s_j + C)``, ``s_j = frame_start + j C``) sees
    exactly the frames a single chunk at ``s_j`` sees (``CacheView``): its sink frames
    ``[0, sink_valid_frames(s_j))`` at ``sink_positions(s_j)`` and its window ``[window_start(s_j), s_j + C)``.
    A visible frame that is committed (``< frame_start``) is read from the cache (clean K/V, the sink
    buffer as the sink policy keeps it); a visible frame that is in flight (itself and earlier in-flight
    chunks inside its window, also in-flight sink frames during warm-up) uses this forward's current,
    noisy K/V. So the in-flight chunks are block-causal among themselves and the window bounds them
    too (exactly what ``BlockCausalPlan`` gives over ``[committed clean | in-flight]``).

    Keys: ``[sink copy per distinct sink phase | visible ring frames | in-flight frames]`` and a boolean
    mask over them (``None`` when everything is visible, e.g. one chunk). Positions are those of the
    oldest chunk (``position_offset(frame_start)``); RoPE is relative, so the other chunks' scores equal
    their own offsets' (sink copies carry each chunk's own sink phase, shifted into that frame).
    With ``num_chunks == 1`` the keys, positions and arithmetic are those of ``CacheView`` (bit for bit).

    Limits: the sink is the stored one; an ``ema`` sink only blends committed chunks (when an in-flight
    chunk is already out of a later in-flight chunk's window it is not blended in, unlike
    ``BlockCausalPlan.sink_copies``). The mask is a ``FrameMask`` (frame-level table; the flex backend
    never expands it to tokens).
    """

    write = False

    def __init__(self, cache: RollingKVCache, frame_start: int, num_chunks: int):
        cfg, t, C = cache.cfg, cache.grid.tokens, cache.cfg.chunk_frames
        if frame_start % C or num_chunks < 1:
            raise ValueError(f"joint window must start on a chunk and hold >= 1 chunk: frame_start={frame_start}, num_chunks={num_chunks}")
        self.cache, self.frame_start, self.num_chunks = cache, frame_start, num_chunks
        self.num_frames = num_chunks * C
        starts = [frame_start + j * C for j in range(num_chunks)]
        ws = [window_start(cfg, s, C) for s in starts]
        off0 = position_offset(cfg, frame_start, C)
        self.sink_committed = sink_valid_frames(cfg, frame_start)
        if self.sink_committed > cache.state.sink_filled:
            raise RuntimeError(
                f"joint window at frame {frame_start} needs {self.sink_committed} sink frames but the cache holds "
                f"{cache.state.sink_filled}: commit (or re-cache) the sink chunks first"
            )
        # One sink copy per distinct sink phase (absolute + anchor: a single copy shared by all chunks).
        copies: dict[tuple[int, ...], int] = {}
        chunk_copy = []
        for s in starts:
            pos = tuple(p + position_offset(cfg, s, C) - off0 for p in sink_positions(cfg, s, C))
            chunk_copy.append(copies.setdefault(pos, len(copies)))
        self.sink_copies = [len(p) for p in copies]  # frames per copy: committed first, then in flight
        # Committed ring frames visible to some chunk: [window_start(oldest), frame_start).
        self.ring_index, frames = cache.visible_ring(ws[0], frame_start)
        q_frames = list(range(frame_start, starts[-1] + C))
        key_pos = [p for pos in copies for p in pos] + [f - off0 for f in frames]
        q_pos = [f - off0 for f in q_frames]
        self.key_positions, self.query_positions = key_pos, q_pos
        g, hd, th, dev = cache.grid, cache.head_dim, cache.rope_theta, cache.k.device
        self.past_rope = rope_cos_sin(rope_angles(key_pos, g.height, g.width, hd, th), torch.float32, dev)
        self.query_rope = rope_cos_sin(rope_angles(q_pos, g.height, g.width, hd, th), torch.float32, dev)
        # Frame-level visibility [query frame, key frame], expanded to tokens.
        copy_base = [sum(self.sink_copies[:i]) for i in range(len(self.sink_copies))]
        ring_base = sum(self.sink_copies)
        fly_base = ring_base + len(frames)
        mask = torch.zeros(len(q_frames), fly_base + len(q_frames), dtype=torch.bool)
        for j, s in enumerate(starts):
            rows = slice(j * C, (j + 1) * C)
            b = copy_base[chunk_copy[j]]
            mask[rows, b : b + self.sink_copies[chunk_copy[j]]] = True
            for i, f in enumerate(frames):
                if f >= ws[j]:
                    mask[rows, ring_base + i] = True
            lo = max(ws[j], frame_start)
            mask[rows, fly_base + lo - frame_start : fly_base + s + C - frame_start] = True
        self.frame_mask = mask
        self.mask = frame_mask(mask, t)
        self.chunk_copy, self.copy_base, self.ring_base, self.fly_base = chunk_copy, copy_base, ring_base, fly_base
        self._scratch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def chunk(self, j: int) -> "JointChunkView":
        """The rows of in-flight chunk ``j`` as a separate forward (pipeline-parallel micro-batch): the same
        keys, positions and visibility, with the in-flight K/V of chunks ``< j`` read from a per-layer
        scratch that the micro-batches of chunks ``0 .. j - 1`` filled (run them first, in order)."""
        return JointChunkView(self, j)

    def scratch(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This tick's in-flight K/V of ``layer`` (cache-local index), ``[B, num_frames * tokens, H, D]``."""
        if layer not in self._scratch:
            shape = (like.shape[0], self.num_frames * self.cache.grid.tokens, *like.shape[2:])
            self._scratch[layer] = (like.new_empty(shape), like.new_empty(shape))
        return self._scratch[layer]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        """Self-attention of all in-flight tokens. ``q, k, v``: ``[B, num_frames * T, H, D]`` without RoPE."""
        c, t, sc = self.cache, self.cache.grid.tokens, self.sink_committed
        layer -= c.first_layer
        pk, pv = [], []
        for n in self.sink_copies:  # committed sink frames from the cache, in-flight ones from this forward
            pk += [c.sink_k[layer, :, : sc * t], k[:, : (n - sc) * t]]
            pv += [c.sink_v[layer, :, : sc * t], v[:, : (n - sc) * t]]
        past_k = torch.cat(pk + [c.k[layer][:, self.ring_index]], dim=1)
        past_v = torch.cat(pv + [c.v[layer][:, self.ring_index]], dim=1)
        qr = apply_rope(q, *self.query_rope)
        keys = torch.cat([apply_rope(past_k, *self.past_rope), apply_rope(k, *self.query_rope)], dim=1)
        values = torch.cat([past_v, v], dim=1)
        return attention(qr, keys, values, self.mask, backend)


class JointChunkView:
    """One in-flight chunk's rows of a ``JointCacheView`` (see ``JointCacheView.chunk``). Keys:
    ``[chunk j's sink copy | visible committed ring | in-flight frames of chunks 0 .. j]``, the frame mask's
    rows of chunk ``j`` on those columns (the columns it drops are invisible to chunk ``j``: other chunks'
    sink copies and newer in-flight chunks), the joint view's positions. Equals the joint forward's rows up
    to rounding (masked keys dropped instead of masked)."""

    write = False

    def __init__(self, joint: JointCacheView, j: int):
        if not 0 <= j < joint.num_chunks:
            raise ValueError(f"chunk {j} of a joint window of {joint.num_chunks}")
        cache, C, t = joint.cache, joint.cache.cfg.chunk_frames, joint.cache.grid.tokens
        self.joint, self.j, self.cache = joint, j, cache
        cj = joint.chunk_copy[j]
        self.copy_frames = joint.sink_copies[cj]
        if self.copy_frames - joint.sink_committed > j * C:
            raise AssertionError("a chunk's in-flight sink frames are older in-flight chunks")  # sink frames < s_j
        past = list(range(joint.copy_base[cj], joint.copy_base[cj] + self.copy_frames)) + list(range(joint.ring_base, joint.fly_base))
        cols = past + list(range(joint.fly_base, joint.fly_base + (j + 1) * C))
        self.mask = frame_mask(joint.frame_mask[j * C : (j + 1) * C][:, cols], t)
        dev = cache.k.device
        g, hd, th = cache.grid, cache.head_dim, cache.rope_theta
        kp, qp = joint.key_positions, joint.query_positions
        self.past_rope = rope_cos_sin(rope_angles([kp[i] for i in past], g.height, g.width, hd, th), torch.float32, dev)
        self.fly_rope = rope_cos_sin(rope_angles(qp[: (j + 1) * C], g.height, g.width, hd, th), torch.float32, dev)
        self.query_rope = tuple(x[:, j * C * t :] for x in self.fly_rope)
        self.frame_start, self.num_frames = joint.frame_start + j * C, C

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        """Self-attention of chunk ``j``'s tokens; stores its K/V in the tick's scratch for newer chunks."""
        jv, c, t, sc = self.joint, self.cache, self.cache.grid.tokens, self.joint.sink_committed
        layer -= c.first_layer
        C = c.cfg.chunk_frames
        sk, sv = jv.scratch(layer, k)
        lo, hi = self.j * C * t, (self.j + 1) * C * t
        sk[:, lo:hi] = k.detach()
        sv[:, lo:hi] = v.detach()
        fly_k, fly_v = torch.cat([sk[:, :lo], k], dim=1), torch.cat([sv[:, :lo], v], dim=1)  # own K/V as given
        n_fly_sink = (self.copy_frames - sc) * t
        past_k = torch.cat([c.sink_k[layer, :, : sc * t], fly_k[:, :n_fly_sink], c.k[layer][:, jv.ring_index]], dim=1)
        past_v = torch.cat([c.sink_v[layer, :, : sc * t], fly_v[:, :n_fly_sink], c.v[layer][:, jv.ring_index]], dim=1)
        qr = apply_rope(q, *self.query_rope)
        keys = torch.cat([apply_rope(past_k, *self.past_rope), apply_rope(fly_k, *self.fly_rope)], dim=1)
        values = torch.cat([past_v, fly_v], dim=1)
        return attention(qr, keys, values, self.mask, backend)


# ---------------------------------------------------------------------------------------------
# Full sequence: the same attention with an explicit mask (training; reference for tests).
# ---------------------------------------------------------------------------------------------


class BlockCausalPlan:
    """Block-causal attention over a whole sequence of ``num_frames`` frames starting at ``frame_start``.

    Keys are every frame at its absolute position plus, when there is a sink, one copy of the sink
    per query chunk (its content per the sink policy, its positions per the position policy); a
    boolean mask lets chunk ``c`` see its window and its own sink copy. RoPE is relative, so
    absolute positions here give the same scores as the per-chunk offsets of ``rebased``.
    """

    def __init__(self, cfg: CacheConfig, num_frames: int, grid: TokenGrid, head_dim: int, rope_theta: float = 10000.0, frame_start: int = 0):
        cfg.validate()
        C = cfg.chunk_frames
        if num_frames % C or frame_start % C:
            raise ValueError(f"num_frames={num_frames} and frame_start={frame_start} must be multiples of chunk_frames={C}")
        self.cfg, self.grid, self.num_frames, self.frame_start = cfg, grid, num_frames, frame_start
        self.policy = make_sink_policy(cfg)
        t = grid.tokens
        n_chunks = num_frames // C
        starts = [frame_start + i * C for i in range(n_chunks)]
        self.chunks = [(s, window_start(cfg, s, C), sink_valid_frames(cfg, s)) for s in starts]
        frames = list(range(frame_start, frame_start + num_frames))
        angles = [rope_angles(frames, grid.height, grid.width, head_dim, rope_theta)]
        S = cfg.sink_frames
        # Frame mask over [all frames | sink copy of chunk 0 | sink copy of chunk 1 | ...].
        mask = torch.zeros(num_frames, num_frames + n_chunks * S, dtype=torch.bool)
        for i, (s, ws, sv) in enumerate(self.chunks):
            rows = slice(s - frame_start, s - frame_start + C)
            lo = max(ws, frame_start)
            mask[rows, lo - frame_start : s + C - frame_start] = True
            if S:
                base = num_frames + i * S
                mask[rows, base : base + sv] = True
                pos = sink_positions(cfg, s, C)
                off = position_offset(cfg, s, C)
                # Back to absolute coordinates (queries and window keys use absolute positions).
                pos = [p + off for p in pos] + [0] * (S - sv)
                angles.append(rope_angles(pos, grid.height, grid.width, head_dim, rope_theta))
        self.mask = FrameMask(mask, t)
        self.key_angles = torch.cat(angles, dim=0)
        self.query_angles = angles[0]

    def sink_copies(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-chunk sink K/V ``[B, n_chunks * S * T, H, D]`` from the sequence's own K/V.

        Frames ``< frame_start`` are not in this sequence, so the sink needs ``frame_start == 0``.
        Evictions follow the closed form: chunk ``j`` (a non-sink chunk) has left the window of
        chunk ``c`` once ``(j + 1) * C <= window_start(c)``.
        """
        cfg, t, C, S = self.cfg, self.grid.tokens, self.cfg.chunk_frames, self.cfg.sink_frames
        if self.frame_start:
            raise ValueError("a full-sequence pass with a sink must start at frame 0")
        # A sequence shorter than the sink leaves the rest of the sink empty (masked out).
        pad = (0, 0, 0, 0, 0, max(S * t - k.shape[1], 0))
        sink_k, sink_v = F.pad(k[:, : S * t], pad), F.pad(v[:, : S * t], pad)
        evicted = S // C  # next non-sink chunk to evict
        ks, vs = [], []
        for s, ws, sv in self.chunks:
            while (evicted + 1) * C <= ws:
                sl = slice(evicted * C * t, (evicted + 1) * C * t)
                self.policy.on_evict(sink_k, sink_v, k[:, sl], v[:, sl])
                evicted += 1
            ks.append(sink_k.clone())
            vs.append(sink_v.clone())
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        """Masked self-attention of the whole sequence. ``q, k, v``: ``[B, F*T, H, D]`` without RoPE."""
        if self.cfg.sink_frames:
            sk, sv = self.sink_copies(k, v)
            k, v = torch.cat([k, sk], dim=1), torch.cat([v, sv], dim=1)
        dev = q.device
        qr = apply_rope(q, *rope_cos_sin(self.query_angles, torch.float32, dev))
        kr = apply_rope(k, *rope_cos_sin(self.key_angles, torch.float32, dev))
        return attention(qr, kr, v, self.mask, backend)


class FullAttention:
    """Bidirectional attention over the whole sequence (the teacher; parity with diffusers)."""

    def __init__(self, num_frames: int, grid: TokenGrid, head_dim: int, rope_theta: float = 10000.0, frame_start: int = 0):
        frames = list(range(frame_start, frame_start + num_frames))
        self.angles = rope_angles(frames, grid.height, grid.width, head_dim, rope_theta)

    def attend(self, layer: int, q, k, v, backend: str = "sdpa"):
        cos, sin = rope_cos_sin(self.angles, torch.float32, q.device)
        return attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, None, backend)
