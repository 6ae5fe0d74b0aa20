import dataclasses
import importlib.util

import pytest
import torch

from streamgen.attention import BackendUnavailable, FrameMask, attention, check_backend
from streamgen.config import CacheConfig
from streamgen.model import CausalWanModel
from helpers import TINY_CONFIGS, randomize_, rel_err


def _reference(q, k, v, mask):
    """Attention written out by hand (softmax of masked scores)."""
    s = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_backend_matches_reference(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 32, 2, 8, generator=g) for _ in range(3))
    mask = torch.rand(32, 32, generator=g) > 0.5
    mask[:, 0] = True  # every query sees at least one key
    assert rel_err(attention(q, k, v, mask, backend), _reference(q, k, v, mask)) <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_frame_mask_matches_reference(backend):
    """A frame-level mask (frames of 8 tokens; flex reads the frame table, never a token mask)."""
    g = torch.Generator().manual_seed(1)
    t = 8
    frames = torch.rand(4, 6, generator=g) > 0.5
    frames[:, 0] = True
    q, k, v = torch.randn(2, 4 * t, 2, 8, generator=g), torch.randn(2, 6 * t, 2, 8, generator=g), torch.randn(2, 6 * t, 2, 8, generator=g)
    dense = frames.repeat_interleave(t, 0).repeat_interleave(t, 1)
    assert rel_err(attention(q, k, v, FrameMask(frames, t), backend), _reference(q, k, v, dense)) <= 1e-5


def test_flex_block_mask_is_built_once_per_plan(monkeypatch):
    """One plan serves every layer: the BlockMask is built on the first layer only."""
    import torch.nn.attention.flex_attention as fa

    calls = []
    real = fa.create_block_mask
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cfg = TINY_CONFIGS["tiny_a"]
    model = randomize_(CausalWanModel(dataclasses.replace(cfg, attention_backend="flex"))).eval()
    plan = model.block_causal_plan(CacheConfig(chunk_frames=2, window_frames=4, sink_frames=2, sink_policy="anchor"), 6, 4, 4)
    with torch.no_grad():
        model(torch.randn(1, 4, 6, 4, 4), torch.tensor([3.0]), torch.randn(1, 5, 16), plan)
    assert cfg.num_layers > 1 and len(calls) == 1


def test_flex_model_equals_sdpa_model():
    cfg = TINY_CONFIGS["tiny_a"]
    a = randomize_(CausalWanModel(cfg)).eval()
    b = CausalWanModel(dataclasses.replace(cfg, attention_backend="flex")).eval()
    b.load_state_dict(a.state_dict())
    plan = a.block_causal_plan(CacheConfig(chunk_frames=2, window_frames=4, sink_frames=2, sink_policy="anchor"), 6, 4, 4)
    x, text = torch.randn(1, 4, 6, 4, 4), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert rel_err(b(x, torch.tensor([3.0]), text, plan), a(x, torch.tensor([3.0]), text, plan)) <= 1e-5


def test_unknown_backend_is_an_error():
    with pytest.raises(BackendUnavailable, match="choose one of"):
        check_backend("flash3")
    with pytest.raises(BackendUnavailable):
        CausalWanModel(dataclasses.replace(TINY_CONFIGS["tiny_a"], attention_backend="nope"))


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers installed")
def test_missing_xformers_is_a_clear_error_not_a_fallback():
    with pytest.raises(BackendUnavailable, match="pip install 'streamgen\\[xformers\\]'"):
        CausalWanModel(dataclasses.replace(TINY_CONFIGS["tiny_a"], attention_backend="xformers"))
