"""``model.pooled_text``: the pooled text vector in the adaLN modulation. A warm start from a model without it
keeps that model's function; trained, it makes the output depend on the prompt through the modulation."""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from helpers import randomize_, rel_err
from streamgen.config import ModelConfig
from streamgen.distill import load_weights
from streamgen.model import CausalWanModel

CFG = ModelConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
                  freq_dim=16, ffn_dim=32, num_layers=2)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 2, 8, 8, generator=g), torch.tensor([700.0, 300.0]),
            torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g))


@torch.no_grad()
def test_warm_start_from_a_plain_model_keeps_its_function(tmp_path):
    plain = randomize_(CausalWanModel(CFG), std=0.2, seed=1).eval()
    save_file(plain.state_dict(), str(tmp_path / "w.safetensors"))
    pooled = CausalWanModel(dataclasses.replace(CFG, pooled_text=True)).eval()
    load_weights(pooled, tmp_path / "w.safetensors")
    assert pooled.text_pool.weight.abs().sum() == 0
    x, t, text, _ = _inputs()
    torch.testing.assert_close(pooled(x, t, text), plain(x, t, text))


@torch.no_grad()
def test_the_pooled_prompt_modulates_every_token():
    model = randomize_(CausalWanModel(dataclasses.replace(CFG, pooled_text=True)), std=0.2, seed=1).eval()
    x, t, text, other = _inputs()
    ctx = model.encode_context(text)
    torch.testing.assert_close(ctx.pooled, model.text_pool(ctx.tokens.mean(1)))
    out = model(x, t, ctx)
    # the same tokens for cross-attention, another prompt's pooled vector: the output moves
    swapped = dataclasses.replace(ctx, pooled=model.encode_context(other).pooled)
    assert rel_err(model(x, t, swapped), out) > 1e-2
    # and it enters through the timestep embedding: a pooled vector of zero is the plain model
    zero = dataclasses.replace(ctx, pooled=torch.zeros_like(ctx.pooled))
    plain = CausalWanModel(CFG).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("text_pool")})
    torch.testing.assert_close(model(x, t, zero), plain(x, t, plain.encode_context(text)))


def test_embed_without_the_pooled_vector_is_refused():
    model = CausalWanModel(dataclasses.replace(CFG, pooled_text=True))
    with pytest.raises(ValueError, match="pooled"):
        model.embed(torch.zeros(1, 4, 2, 8, 8), torch.tensor(500.0))
