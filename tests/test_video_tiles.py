"""Eval samples tiled into one video: placement, padding, shape checks, and the mp4 round trip."""
import numpy as np
import pytest

from streamgen.video import read_video, tile_clips, write_tiled


def clips(n, f=3, h=8, w=6):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (f, h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_tiles_are_row_major_and_empty_tiles_black():
    cs = clips(5)
    t = tile_clips(cs, cols=2)
    assert t.shape == (3, 3 * 8, 2 * 6, 3)
    for i, c in enumerate(cs):
        r, k = divmod(i, 2)
        assert (t[:, r * 8:(r + 1) * 8, k * 6:(k + 1) * 6] == c).all()
    assert (t[:, 16:, 6:] == 0).all()  # the sixth tile is empty
    assert tile_clips(cs[:2], cols=4).shape == (3, 8, 12, 3)  # fewer clips than columns: one row, no padding


def test_bad_clips_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        tile_clips([])
    with pytest.raises(ValueError, match="one shape"):
        tile_clips(clips(1) + clips(1, f=4))


def test_written_video_reads_back(tmp_path):
    flat = [np.full((4, 16, 16, 3), v, np.uint8) for v in (30, 120, 200)]  # flat colours survive the codec
    got = read_video(write_tiled(tmp_path / "s.mp4", flat, fps=16, cols=3))
    assert got.shape == (4, 16, 48, 3)
    assert np.abs(got.astype(int) - tile_clips(flat, 3).astype(int)).mean() < 3
