"""Attention kernels behind one function, chosen by name.

All backends take ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` (diffusers' layout) and an
optional mask (True = may attend): a boolean ``[Lq, Lk]`` tensor or a ``FrameMask``, and return
``[B, Lq, H, D]``. An unavailable backend raises BackendUnavailable; there is no silent fallback.

Every mask the engine builds is frame-aligned (block-causal windows, sinks, in-flight chunks), so
plans hold a ``FrameMask``: ``[query frames, key frames]`` booleans plus tokens per frame. Each
backend expands it once per plan (not once per layer) into what it needs: a dense token mask for
SDPA / xformers, a flex ``BlockMask`` for flex attention, whose mask_mod reads the frame table, so
it never needs the ``Lq x Lk`` token mask that real resolutions cannot afford.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch
import torch.nn.functional as F


class BackendUnavailable(RuntimeError):
    pass


@dataclass(eq=False)
class FrameMask:
    """Frame-level visibility: ``frames[i, j]`` = query frame ``i`` may attend to key frame ``j``;
    every frame is ``tokens`` consecutive tokens. Expansions are cached per device (one plan serves
    every layer of a forward)."""

    frames: torch.Tensor  # [Fq, Fk] bool
    tokens: int
    _dense: dict = field(default_factory=dict, repr=False)
    _block: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.frames.shape[0] * self.tokens, self.frames.shape[1] * self.tokens

    def dense(self, device) -> torch.Tensor:
        """The ``[Lq, Lk]`` token mask."""
        key = str(device)
        if key not in self._dense:
            t = self.tokens
            self._dense[key] = self.frames.repeat_interleave(t, 0).repeat_interleave(t, 1).to(device)
        return self._dense[key]

    def block_mask(self, device):
        """A flex-attention ``BlockMask`` whose mask_mod looks up the frame table."""
        key = str(device)
        if key not in self._block:
            from torch.nn.attention.flex_attention import create_block_mask

            table, t = self.frames.to(device), self.tokens

            def mask_mod(b, h, q_idx, kv_idx):
                return table[q_idx // t, kv_idx // t]

            lq, lk = self.shape
            self._block[key] = create_block_mask(mask_mod, None, None, lq, lk, device=device)
        return self._block[key]


Mask = Union[torch.Tensor, FrameMask, None]


def frame_mask(frames: torch.Tensor, tokens: int) -> FrameMask | None:
    """``None`` when every key is visible to every query (no masking needed), else a ``FrameMask``."""
    return None if bool(frames.all()) else FrameMask(frames, tokens)


def _dense(mask: Mask, device) -> torch.Tensor | None:
    if isinstance(mask, FrameMask):
        return mask.dense(device)
    return None if mask is None else mask.to(device)


def _sdpa(q, k, v, mask):
    mask = _dense(mask, q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _flex(q, k, v, mask):
    from torch.nn.attention.flex_attention import flex_attention

    if mask is not None and not isinstance(mask, FrameMask):
        mask = FrameMask(mask, 1)  # a token-level mask is a frame mask of one-token frames
    block_mask = None if mask is None else mask.block_mask(q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2)


_FLEX_COMPILED = None


def _compiled_flex():
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def _xformers(q, k, v, mask):
    try:
        import xformers.ops as xops
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise BackendUnavailable(
            "attention backend 'xformers' needs the xformers package (GPU only): "
            "pip install 'streamgen[xformers]', or set model.attention_backend=sdpa"
        ) from e
    bias = None
    mask = _dense(mask, q.device)
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = bias.expand(q.shape[0], q.shape[2], -1, -1)
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias)


BACKENDS: dict[str, Callable] = {"sdpa": _sdpa, "flex": _flex, "xformers": _xformers}


def check_backend(name: str) -> None:
    """Raise BackendUnavailable with the fix if ``name`` cannot run here."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    if name == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "attention backend 'xformers' needs the xformers package (GPU only): "
                "pip install 'streamgen[xformers]', or set model.attention_backend=sdpa"
            ) from None
    if name == "flex":
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError:
            raise BackendUnavailable("attention backend 'flex' needs torch >= 2.5; use sdpa") from None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask = None, backend: str = "sdpa"):
    """Scaled dot-product attention through the named backend. Shapes: see module doc."""
    return BACKENDS[backend](q, k, v, mask)
