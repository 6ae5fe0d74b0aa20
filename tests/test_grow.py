"""Warm start into a deeper model (``train.init_grow``): the grown model computes what the source did."""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_CONFIGS, randomize_
from streamgen.model import CausalWanModel
from streamgen.trainer import grown_block_positions, warm_start


def test_block_positions_keep_order_and_spread():
    assert grown_block_positions(6, 10) == [0, 1, 3, 5, 6, 8]
    assert grown_block_positions(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        grown_block_positions(4, 3)


def test_grown_model_equals_source_and_new_blocks_learn(tmp_path):
    torch.manual_seed(0)
    small = TINY_CONFIGS["tiny_a"]
    src = randomize_(CausalWanModel(small), seed=3).eval()
    save_file(src.state_dict(), str(tmp_path / "transformer.safetensors"))
    big = CausalWanModel(dataclasses.replace(small, num_layers=small.num_layers + 3))
    randomize_(big, seed=4)  # new blocks must not keep random outputs
    warm_start(big, str(tmp_path), grow=True)
    big.eval()
    c = small
    x = torch.randn(2, c.in_channels, 3, 8, 8)
    t = torch.tensor([700.0, 250.0])
    text = torch.randn(2, 5, c.text_dim)
    with torch.no_grad():
        ref, out = src(x, t, text), big(x, t, text)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    # the new blocks are live: their zeroed projections get gradients
    big.train()
    big(x, t, text).pow(2).mean().backward()
    new = [i for i in range(len(big.blocks)) if i not in grown_block_positions(small.num_layers, len(big.blocks))]
    assert all(big.blocks[i].ffn.net[2].weight.grad.abs().sum() > 0 for i in new)
    # growing and resetting the head combine (a grown model with a new output parameterisation)
    warm_start(big, str(tmp_path), reset_head=True, grow=True)
    assert not big.proj_out.weight.any() and not big.proj_out.bias.any()


def test_grow_rejects_a_source_of_another_width(tmp_path):
    save_file(CausalWanModel(TINY_CONFIGS["tiny_b"]).state_dict(), str(tmp_path / "transformer.safetensors"))
    a = TINY_CONFIGS["tiny_a"]
    with pytest.raises(ValueError, match="train.init_grow"):
        warm_start(CausalWanModel(dataclasses.replace(a, num_layers=a.num_layers + 1)), str(tmp_path), grow=True)
