"""Attention kernels behind one function, chosen by name.

All backends take ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` (diffusers' layout) and an
optional boolean ``mask`` ``[Lq, Lk]`` (True = may attend), and return ``[B, Lq, H, D]``.
An unavailable backend raises BackendUnavailable; there is no silent fallback.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


class BackendUnavailable(RuntimeError):
    pass


def _sdpa(q, k, v, mask):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _flex(q, k, v, mask):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = None
    if mask is not None:
        dense = mask.to(q.device)

        def mask_mod(b, h, q_idx, kv_idx):
            return dense[q_idx, kv_idx]

        block_mask = create_block_mask(mask_mod, None, None, q.shape[1], k.shape[1], device=q.device)
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
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask.to(q.device), float("-inf"))
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, backend: str = "sdpa"):
    """Scaled dot-product attention through the named backend. Shapes: see module doc."""
    return BACKENDS[backend](q, k, v, mask)
