"""``model.patch_embed_rank``: a low-rank (bottleneck) patch embedding, warm-started from a full-rank one.

Checked another way: at full rank the factored model is the source model's function; below it, the
bottleneck model equals a stock full-rank model whose convolution holds the product ``up @ down``, and
that product is the best rank-r approximation (its error is the discarded singular values, Eckart-Young).
"""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from distill_helpers import TINY, randomized, tiny
from streamgen.config import ConfigError
from streamgen.distill import load_weights
from streamgen.model import CausalWanModel


def inputs(seed=0, channels=TINY.in_channels):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 3, 4, 4, generator=g)
    return x, torch.tensor([700.0, 250.0]), torch.randn(2, 5, 16, generator=g), torch.randn(2, channels, 3, 4, 4, generator=g)


def product_weight(model: CausalWanModel) -> torch.Tensor:
    """The bottleneck's composed map as a full-rank patch-convolution weight [D, C, pt, ph, pw]."""
    down, up = model.patch_embedding.down.weight, model.patch_embedding.up.weight
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


@pytest.mark.parametrize("self_conditioning", [False, True])
def test_full_rank_factorisation_keeps_the_function(tmp_path, self_conditioning):
    cfg = dataclasses.replace(TINY, prediction="x0", self_conditioning=self_conditioning)
    src = tiny(0, cfg)
    save_file(src.state_dict(), str(tmp_path / "src.safetensors"))
    full_rank = cfg.dim  # the embedding's rank is at most min(D, C * patch) = D here
    low = CausalWanModel(dataclasses.replace(cfg, patch_embed_rank=full_rank)).eval()
    load_weights(low, tmp_path / "src.safetensors")
    x, t, ctx, x0 = inputs()
    prev = x0 if self_conditioning else None
    torch.testing.assert_close(low(x, t, ctx, None, prev), src(x, t, ctx, None, prev), rtol=1e-4, atol=1e-5)
    assert isinstance(src.patch_embedding, torch.nn.Conv3d) and low.patch_embedding.down.weight.shape[0] == full_rank


def test_low_rank_is_the_best_approximation_and_runs_as_its_product(tmp_path):
    src = tiny(0, dataclasses.replace(TINY, self_conditioning=True))
    save_file(src.state_dict(), str(tmp_path / "src.safetensors"))
    r = 5
    low = CausalWanModel(dataclasses.replace(TINY, self_conditioning=True, patch_embed_rank=r)).eval()
    load_weights(low, tmp_path / "src.safetensors")
    w = src.patch_embedding.weight.detach().flatten(1)
    prod = product_weight(low).detach()
    assert torch.linalg.matrix_rank(prod.flatten(1)) == r
    sv = torch.linalg.svdvals(w)
    err = (w - prod.flatten(1)).pow(2).sum()
    torch.testing.assert_close(err, sv[r:].pow(2).sum(), rtol=1e-4, atol=1e-6)
    # the bottleneck forward equals a stock full-rank model holding the product weight
    stock = CausalWanModel(dataclasses.replace(TINY, self_conditioning=True)).eval()
    sd = {k: v for k, v in low.state_dict().items() if not k.startswith("patch_embedding.")}
    stock.load_state_dict({**sd, "patch_embedding.weight": prod, "patch_embedding.bias": low.patch_embedding.up.bias.detach()})
    x, t, ctx, x0 = inputs(1)
    torch.testing.assert_close(low(x, t, ctx, None, x0), stock(x, t, ctx, None, x0), rtol=1e-4, atol=1e-5)
    # and it is not the source's function any more
    assert (low(x, t, ctx, None, x0) - src(x, t, ctx, None, x0)).abs().max() > 1e-3


def test_low_rank_model_trains_and_round_trips_its_own_weights(tmp_path):
    cfg = dataclasses.replace(TINY, patch_embed_rank=3)
    model = randomized(CausalWanModel(cfg), seed=2).train()
    x, t, ctx, _ = inputs(2)
    model(x, t, ctx).pow(2).mean().backward()
    assert model.patch_embedding.down.weight.grad.abs().sum() > 0
    save_file(model.state_dict(), str(tmp_path / "low.safetensors"))
    again = CausalWanModel(cfg).eval()
    load_weights(again, tmp_path / "low.safetensors")
    model.eval()
    torch.testing.assert_close(again(x, t, ctx), model(x, t, ctx))


def test_bad_ranks_say_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="patch_embed_rank"):
        CausalWanModel(dataclasses.replace(TINY, patch_embed_rank=-1))
    save_file(tiny(0).state_dict(), str(tmp_path / "src.safetensors"))
    with pytest.raises(ValueError, match="patch_embed_rank=17 exceeds"):
        load_weights(CausalWanModel(dataclasses.replace(TINY, patch_embed_rank=17)), tmp_path / "src.safetensors")
