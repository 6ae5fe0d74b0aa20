"""Chunk-by-chunk generation through the rolling cache equals one full-sequence forward with the
equivalent block-causal mask (BlockCausalPlan), for every window / sink / position policy, at patch 2 and patch 1."""
import pytest
import torch

from streamgen.config import CacheConfig
from helpers import rel_err, tiny_model

C = 2  # latent frames per chunk
N_CHUNKS = 7
CASES = {
    "no_window": CacheConfig(chunk_frames=C, window_frames=-1),
    "window": CacheConfig(chunk_frames=C, window_frames=3 * C),
    "window_rebased": CacheConfig(chunk_frames=C, window_frames=3 * C, position_policy="rebased"),
    "anchor": CacheConfig(chunk_frames=C, window_frames=2 * C, sink_frames=C, sink_policy="anchor"),
    "anchor_rebased": CacheConfig(chunk_frames=C, window_frames=2 * C, sink_frames=C, sink_policy="anchor", position_policy="rebased"),
    "ema": CacheConfig(chunk_frames=C, window_frames=2 * C, sink_frames=C, sink_policy="ema", ema_decay=0.7),
    "ema_rebased": CacheConfig(chunk_frames=C, window_frames=2 * C, sink_frames=C, sink_policy="ema", ema_decay=0.7, position_policy="rebased"),
    "deep": CacheConfig(chunk_frames=C, window_frames=3 * C, sink_frames=2 * C, sink_policy="deep"),
    "deep_rebased": CacheConfig(chunk_frames=C, window_frames=3 * C, sink_frames=2 * C, sink_policy="deep", position_policy="rebased"),
}


def _stream(model, cfg, noisy, clean, t_noisy, t_ctx, text):
    """Self-Forcing order per chunk: a read-only denoising pass, then the clean write pass."""
    b, _, f, h, w = clean.shape
    cache = model.new_cache(cfg, b, h, w, max_frames=f)
    outs_noisy, outs_clean = [], []
    for c in range(f // C):
        sl = slice(c * C, (c + 1) * C)
        outs_noisy.append(model.forward_cached(noisy[:, :, sl], t_noisy[:, c], text, cache))
        outs_clean.append(model.forward_cached(clean[:, :, sl], t_ctx[:, sl], text, cache, write=True))
    return outs_noisy, torch.cat(outs_clean, dim=2), cache


@pytest.mark.parametrize("name", ["tiny_a", "tiny_p1"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_equals_full_sequence(case, name):
    cfg = CASES[case]
    model = tiny_model(name)
    g = torch.Generator().manual_seed(1)
    b, f, h, w = 2, N_CHUNKS * C, 4, 6
    clean = torch.randn(b, 4, f, h, w, generator=g)
    noisy = torch.randn(b, 4, f, h, w, generator=g)
    t_noisy = torch.rand(b, f // C, generator=g) * 1000
    # per-frame context timesteps, different for each frame: exercises [B, F] timesteps
    t_ctx = torch.rand(b, f, generator=g) * 100
    text = torch.randn(b, 5, 16, generator=g)
    with torch.no_grad():
        ctx = model.encode_context(text)
        outs_noisy, out_clean, _ = _stream(model, cfg, noisy, clean, t_noisy, t_ctx, ctx)
        full = model(clean, t_ctx, ctx, model.block_causal_plan(cfg, f, h, w))
        assert rel_err(out_clean, full) <= 1e-5
        for c in (0, 1, N_CHUNKS // 2, N_CHUNKS - 1):
            end = (c + 1) * C
            x = torch.cat([clean[:, :, : c * C], noisy[:, :, c * C : end]], dim=2)
            t = torch.cat([t_ctx[:, : c * C], t_noisy[:, c : c + 1].expand(b, C)], dim=1)
            ref = model(x, t, ctx, model.block_causal_plan(cfg, end, h, w))[:, :, c * C :]
            assert rel_err(outs_noisy[c], ref) <= 1e-5, f"chunk {c}"


def test_window_really_limits_context():
    """Sanity of the reference itself: the windowed plan differs from unbounded causal attention."""
    model = tiny_model("tiny_a")
    x = torch.randn(1, 4, 4 * C, 4, 4)
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([10.0]), text, model.block_causal_plan(CASES["no_window"], 4 * C, 4, 4))
        b = model(x, torch.tensor([10.0]), text, model.block_causal_plan(CASES["window"], 4 * C, 4, 4))
        full = model(x, torch.tensor([10.0]), text)
    assert rel_err(a[:, :, : 3 * C], b[:, :, : 3 * C]) <= 1e-6  # window not yet full
    assert rel_err(a[:, :, 3 * C :], b[:, :, 3 * C :]) > 1e-3
    assert rel_err(a, full) > 1e-3  # causal differs from bidirectional


@pytest.mark.parametrize("case", ["anchor", "ema", "deep_rebased"])
def test_sink_policies_differ(case):
    """Each sink policy changes late-chunk outputs relative to the plain window."""
    model = tiny_model("tiny_a")
    cfg = CASES[case]
    plain = CacheConfig(chunk_frames=C, window_frames=cfg.window_frames)
    x = torch.randn(1, 4, N_CHUNKS * C, 4, 4)
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([10.0]), text, model.block_causal_plan(cfg, N_CHUNKS * C, 4, 4))
        b = model(x, torch.tensor([10.0]), text, model.block_causal_plan(plain, N_CHUNKS * C, 4, 4))
    assert rel_err(a[:, :, -C:], b[:, :, -C:]) > 1e-3
