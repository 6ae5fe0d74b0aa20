"""A 'rebased' stream has no length limit and constant memory."""
import torch

from streamgen.config import CacheConfig
from helpers import tiny_model


def test_rebased_streams_10000_latent_frames():
    model = tiny_model("tiny_a")
    cfg = CacheConfig(chunk_frames=4, window_frames=12, sink_frames=4, sink_policy="anchor", position_policy="rebased")
    cache = model.new_cache(cfg, 1, 2, 2)  # one token per frame keeps 10k frames fast
    buffers = [t.data_ptr() for t in (cache.k, cache.v, cache.sink_k, cache.sink_v)]
    nbytes = cache.nbytes()
    text = model.encode_context(torch.randn(1, 3, 16))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 2, 2, generator=g)
    max_pos = 0
    with torch.no_grad():
        for i in range(10_000 // 4):
            view = cache.view(write=True)
            out = model(x, torch.tensor([0.0]), text, view)
            cache.commit(view)
            max_pos = max(max_pos, *view.key_positions, *view.query_positions)
            assert torch.isfinite(out).all()
    assert cache.next_frame == 10_000
    assert max_pos < cfg.sink_frames + cfg.window_frames  # positions never grow
    assert [t.data_ptr() for t in (cache.k, cache.v, cache.sink_k, cache.sink_v)] == buffers
    assert cache.nbytes() == nbytes
    # late chunks attend to exactly sink + window frames
    assert view.sink_tokens + cache.k.shape[2] == (cfg.sink_frames + cfg.window_frames - cfg.chunk_frames) * 1
