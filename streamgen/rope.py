"""3D rotary position embedding (Wan layout) as pure functions of integer positions.

Wan splits each head's channels into a temporal part and two spatial parts and rotates channel
pairs ``(2i, 2i+1)``. Angles are computed from positions on the fly (no table), so a stream is
never limited by a precomputed table length; the cache decides which temporal position each key
gets (see ``streamgen.cache``). Angles are computed in float64 like diffusers, then cast.
"""
from __future__ import annotations

import functools

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (time, height, width), as in Wan: h = w = 2 * (head_dim // 6)."""
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    """``theta ** (-2i / dim)`` for i < dim / 2, float64. Shape ``[dim // 2]``."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))


@functools.lru_cache(maxsize=32)
def _spatial_angles(head_dim: int, theta: float, height: int, width: int) -> torch.Tensor:
    """Angles of the spatial channels for every (h, w) cell. Shape ``[height * width, (h_dim + w_dim) // 2]``."""
    _, h_dim, w_dim = rope_split(head_dim)
    ah = torch.outer(torch.arange(height, dtype=torch.float64), inverse_frequencies(h_dim, theta))
    aw = torch.outer(torch.arange(width, dtype=torch.float64), inverse_frequencies(w_dim, theta))
    grid = torch.cat(
        [ah[:, None, :].expand(height, width, -1), aw[None, :, :].expand(height, width, -1)], dim=-1
    )
    return grid.reshape(height * width, -1)


def rope_angles(
    frame_positions: torch.Tensor | list[float], height: int, width: int, head_dim: int, theta: float = 10000.0
) -> torch.Tensor:
    """Rotation angles for tokens laid out frame-major as ``(frame, h, w)``.

    Args:
        frame_positions: temporal position of each frame, shape ``[F]`` (any real numbers).
        height, width: patch grid size of one frame.
    Returns:
        float64 angles of shape ``[F * height * width, head_dim // 2]``.
    """
    t_dim, _, _ = rope_split(head_dim)
    pos = torch.as_tensor(frame_positions, dtype=torch.float64).reshape(-1)
    at = torch.outer(pos, inverse_frequencies(t_dim, theta))  # [F, t_dim/2]
    spatial = _spatial_angles(head_dim, theta, height, width)  # [HW, s/2]
    f, hw = pos.numel(), spatial.shape[0]
    if f == 0:
        return torch.zeros(0, head_dim // 2, dtype=torch.float64)
    return torch.cat([at[:, None, :].expand(f, hw, -1), spatial[None].expand(f, hw, -1)], dim=-1).reshape(f * hw, -1)


def rope_cos_sin(angles: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of ``angles`` ``[L, D/2]`` as ``[1, L, 1, D/2]`` tensors ready to broadcast over ``[B, L, H, D/2]``."""
    cos, sin = angles.cos(), angles.sin()
    return (
        cos.to(device=device, dtype=dtype)[None, :, None, :],
        sin.to(device=device, dtype=dtype)[None, :, None, :],
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x`` ``[B, L, H, D]`` by the given angles."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)
