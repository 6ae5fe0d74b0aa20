"""The pure visibility / position functions, checked against hand-derived values and RoPE identities."""
import pytest
import torch

from streamgen.cache import frame_positions, position_offset, sink_positions, sink_valid_frames, window_start
from streamgen.config import CacheConfig, ConfigError
from helpers import rel_err, tiny_model


def test_window_and_sink_by_hand():
    cfg = CacheConfig(chunk_frames=3, window_frames=9, sink_frames=3, sink_policy="anchor")
    # chunk [0,3): nothing before it
    assert (sink_valid_frames(cfg, 0), window_start(cfg, 0, 3)) == (0, 0)
    # chunk [3,6): sink [0,3), window from 3
    assert (sink_valid_frames(cfg, 3), window_start(cfg, 3, 3)) == (3, 3)
    # chunk [30,33): window [24,33), sink [0,3)
    assert (sink_valid_frames(cfg, 30), window_start(cfg, 30, 3)) == (3, 24)
    assert sink_positions(cfg, 30, 3) == [0, 1, 2]  # anchor + absolute: sink keeps its place
    assert frame_positions(cfg, [24, 32], 30, 3) == [24, 32]


def test_deep_sink_sits_before_window():
    cfg = CacheConfig(chunk_frames=3, window_frames=9, sink_frames=6, sink_policy="deep")
    assert window_start(cfg, 30, 3) == 24
    assert sink_positions(cfg, 30, 3) == [18, 19, 20, 21, 22, 23]
    assert position_offset(cfg, 30, 3) == 0


def test_rebased_positions_are_bounded():
    cfg = CacheConfig(chunk_frames=3, window_frames=9, sink_frames=3, sink_policy="anchor", position_policy="rebased")
    for start in range(0, 30000, 3):
        ws = window_start(cfg, start, 3)
        pos = sink_positions(cfg, start, 3) + frame_positions(cfg, list(range(ws, start + 3)), start, 3)
        assert pos == list(range(len(pos)))  # sink then window, contiguous from 0
        assert max(pos) < cfg.sink_frames + cfg.window_frames


def test_rebased_equals_absolute_without_sink():
    """RoPE is relative: shifting every position by the same offset leaves attention unchanged."""
    model = tiny_model("tiny_a")
    x, text = torch.randn(1, 4, 12, 4, 4), torch.randn(1, 5, 16)
    outs = []
    for pol in ("absolute", "rebased"):
        cfg = CacheConfig(chunk_frames=2, window_frames=4, position_policy=pol)
        cache = model.new_cache(cfg, 1, 4, 4)
        with torch.no_grad():
            outs.append(torch.cat([model.forward_cached(x[:, :, i : i + 2], torch.tensor([5.0]), text, cache, write=True)
                                   for i in range(0, 12, 2)], dim=2))
    assert rel_err(outs[1], outs[0]) <= 1e-5


def test_anchor_rebased_equals_deep_with_same_sink():
    """Both put the sink just before the window; under 'rebased' they are the same attention."""
    model = tiny_model("tiny_a")
    x, text = torch.randn(1, 4, 12, 4, 4), torch.randn(1, 5, 16)
    outs = []
    for pol in ("anchor", "deep"):
        cfg = CacheConfig(chunk_frames=2, window_frames=4, sink_frames=2, sink_policy=pol, position_policy="absolute" if pol == "deep" else "rebased")
        with torch.no_grad():
            outs.append(model(x, torch.tensor([5.0]), text, model.block_causal_plan(cfg, 12, 4, 4)))
    assert rel_err(outs[1], outs[0]) <= 1e-5


@pytest.mark.parametrize("kw,msg", [
    (dict(window_frames=4, chunk_frames=3), "multiple of chunk_frames"),
    (dict(sink_frames=3, sink_policy="none"), "takes sink_frames=0"),
    (dict(sink_policy="anchor"), "needs sink_frames"),
    (dict(sink_frames=6, sink_policy="ema"), "must equal chunk_frames"),
    (dict(sink_policy="bogus"), "sink_policy must be one of"),
    (dict(position_policy="relative"), "position_policy must be one of"),
])
def test_invalid_cache_configs(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        CacheConfig(**kw).validate()
