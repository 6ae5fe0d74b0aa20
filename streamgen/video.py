"""MP4 output written as frames arrive, readable even if the writer is killed.

Frames go to ffmpeg (imageio-ffmpeg) as fragmented MP4 with a key frame every second, so a file
cut off by Ctrl-C, a crash or SIGKILL still plays up to its last complete fragment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[B=1, 3, F, H, W]`` in [-1, 1] -> ``[F, H, W, 3]`` uint8."""
    x = frames[0].permute(1, 2, 3, 0).float().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


class VideoWriter:
    def __init__(self, path: str | Path, fps: int, quality: int = 8):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._w = imageio.get_writer(
            str(self.path), fps=fps, codec="libx264", quality=quality, macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-g", str(fps), "-flush_packets", "1"],
        )

    def append(self, frames: np.ndarray) -> None:
        """``frames``: ``[n, H, W, 3]`` uint8."""
        for f in frames:
            self._w.append_data(f)
        self.frames += len(frames)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file, ``[F, H, W, 3]`` uint8."""
    import imageio.v2 as imageio

    r = imageio.get_reader(str(path), format="FFMPEG")
    try:
        frames = []
        try:
            for f in r:
                frames.append(f)
        except (RuntimeError, OSError, IndexError):
            pass  # a truncated file ends early: keep what decoded
        return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    finally:
        r.close()


def tile_clips(clips: list[np.ndarray], cols: int = 4) -> np.ndarray:
    """Clips ``[F, H, W, 3]`` of one size side by side: ``[F, rows * H, cols * W, 3]``, row-major, empty
    tiles black (an eval's samples as one video)."""
    if not clips:
        raise ValueError("tile_clips needs at least one clip")
    shape = clips[0].shape
    if any(c.shape != shape for c in clips):
        raise ValueError(f"tile_clips needs clips of one shape, got {sorted({c.shape for c in clips})}")
    f, h, w, ch = shape
    cols = min(cols, len(clips))
    rows = -(-len(clips) // cols)
    out = np.zeros((f, rows * h, cols * w, ch), clips[0].dtype)
    for i, c in enumerate(clips):
        r, k = divmod(i, cols)
        out[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = c
    return out


def write_tiled(path: str | Path, clips: list[np.ndarray], fps: int, cols: int = 4) -> Path:
    """Write ``clips`` tiled (``tile_clips``) as one mp4; returns its path."""
    with VideoWriter(path, fps) as w:
        w.append(tile_clips(clips, cols))
    return Path(path)
