import torch

from streamgen.text import MiniLMEncoder


def test_minilm_offline_embeddings_and_cache(minilm):
    a = "a red circle moving right on a black background"
    b = "a crimson ball drifting to the left over a dark backdrop"
    e = minilm.encode([a, b, ""])
    assert e.shape == (3, minilm.max_length, 384)
    assert (e[2, 3:] == 0).all()  # padding zeroed, as in Wan
    assert not torch.allclose(e[0], e[1])
    # uncached computation agrees with the cache
    assert torch.allclose(minilm._encode([b])[0], e[1])
    # a tiny cache under pressure still returns every prompt of the batch (LRU eviction)
    minilm.cache_size = 2
    try:
        batch = [f"prompt {i}" for i in range(5)] + [a]
        out = minilm.encode(batch)
        assert out.shape[0] == 6 and torch.allclose(out[-1], e[0]) and len(minilm._cache) == 2
    finally:
        minilm.cache_size = 256
