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


def test_umt5_encoder_loads_a_local_wan_directory(tmp_path, minilm):
    """The real-Wan path: a (tiny, random) UMT5 encoder and a tokenizer in a diffusers-style folder."""
    from transformers import UMT5Config, UMT5EncoderModel

    from streamgen.text import load_text_encoder

    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=minilm.tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = UMT5EncoderModel(cfg).eval()
    model.save_pretrained(tmp_path / "text_encoder")
    minilm.tokenizer.save_pretrained(tmp_path / "tokenizer")
    enc = load_text_encoder("umt5", str(tmp_path), max_length=16)
    assert enc.dim == 32
    out = enc.encode(["a red circle", "a blue square moving up"])
    tok = minilm.tokenizer(["a red circle"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    ref = ref * tok["attention_mask"][..., None]
    assert out.shape == (2, 16, 32) and torch.allclose(out[0], ref[0], atol=1e-5)


def test_umt5_needs_a_wan_directory(tmp_path):
    import pytest

    from streamgen.text import load_text_encoder

    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_text_encoder("umt5", str(tmp_path))
    with pytest.raises(ValueError, match="minilm"):
        load_text_encoder("clip")
