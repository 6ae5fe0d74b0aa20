"""``model.precondition: linear``: the head predicts a residual on the per-channel linear flow estimate.

Checked against what it replaces: with a zero head, x0 predictions are never worse than the data
mean (the direct flow head copies the noise and is); per-frame timesteps; weights and latent
statistics round-trip; pipeline-parallel ranks (head on the last rank) equal one process; warm starts.
"""
import dataclasses
import functools

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import TINY_CONFIGS, randomize_, rel_err
from pp_helpers import NUM_FRAMES, reference, switch_timeline, tiny_pp_pipeline
from streamgen.config import ConfigError
from streamgen.model import CausalWanModel
from streamgen.parallel.runtime import run_threads
from streamgen.sampler import add_noise, timestep, x0_from_flow
from streamgen.trainer import init_adaln_zero, warm_start

CFG = dataclasses.replace(TINY_CONFIGS["tiny_a"], precondition="linear")


def latents(n=64, seed=0):
    """Channels with very different scales and offsets, like PCA latents."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([4.0, 1.0, 0.3, 0.05]).view(1, 4, 1, 1, 1)
    offset = torch.tensor([1.0, -2.0, 0.0, 0.5]).view(1, 4, 1, 1, 1)
    return offset + scale * torch.randn(n, 4, 2, 4, 4, generator=g)


def test_unknown_precondition_is_a_config_error():
    with pytest.raises(ConfigError, match="model.precondition"):
        CausalWanModel(dataclasses.replace(CFG, precondition="edm"))


@torch.no_grad()
def test_zero_head_x0_error_is_bounded_by_the_data_variance():
    x0 = latents()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(x0.shape[0], 5, CFG.text_dim)
    var = x0.var(dim=(0, 2, 3, 4))
    for precondition in ("linear", "none"):
        m = CausalWanModel(dataclasses.replace(CFG, precondition=precondition)).eval()
        init_adaln_zero(m)  # zero head
        if precondition == "linear":
            m.set_latent_stats(x0)
            assert torch.allclose(m.latent_mean, x0.mean(dim=(0, 2, 3, 4))) and torch.allclose(m.latent_std, var.sqrt())
        for sigma in (0.3, 0.98):
            xt = add_noise(x0, noise, sigma)
            err = (x0_from_flow(xt, m(xt, torch.full((x0.shape[0],), timestep(sigma)), ctx), sigma) - x0).pow(2).mean(dim=(0, 2, 3, 4))
            if precondition == "linear":
                assert (err <= var * 1.02).all(), (sigma, err, var)
            else:  # x0 = x_t: the smallest channel drowns in noise
                assert err[3] > 5 * var[3], (sigma, err, var)


@torch.no_grad()
def test_per_frame_timesteps_match_per_frame_calls():
    m = randomize_(CausalWanModel(CFG), seed=2).eval()
    m.set_latent_stats(latents())
    x, raw = latents(2, 3), torch.randn(2, 4, 2, 4, 4)
    t = torch.tensor([[900.0, 100.0], [0.0, 1000.0]])
    out = m.output(raw, x, t)
    for b in range(2):
        for f in range(2):
            one = m.output(raw[b:b + 1, :, f:f + 1], x[b:b + 1, :, f:f + 1], t[b:b + 1, f])
            assert torch.allclose(out[b:b + 1, :, f:f + 1], one, atol=1e-6)
    assert not torch.allclose(out[:, :, 0], m.output(raw, x, t[:, 1])[:, :, 0])


def test_latent_stats_round_trip_with_the_weights(tmp_path):
    m = randomize_(CausalWanModel(CFG), seed=4)
    m.set_latent_stats(latents())
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    m2 = CausalWanModel(CFG)
    m2.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    assert torch.equal(m2.latent_std, m.latent_std) and torch.equal(m2.latent_mean, m.latent_mean)


def test_warm_start_keeps_stats_and_resets_the_head(tmp_path):
    src = randomize_(CausalWanModel(TINY_CONFIGS["tiny_a"]), seed=5)
    save_file(src.state_dict(), str(tmp_path / "transformer.safetensors"))
    dst = CausalWanModel(CFG)
    dst.set_latent_stats(latents())
    std = dst.latent_std.clone()
    missing = warm_start(dst, str(tmp_path), reset_head=True)
    assert missing == ["latent_mean", "latent_std"] and torch.equal(dst.latent_std, std)
    assert torch.equal(dst.blocks[1].ffn.net[2].weight, src.blocks[1].ffn.net[2].weight)
    assert not dst.proj_out.weight.any() and not dst.proj_out.bias.any()
    other = CausalWanModel(TINY_CONFIGS["tiny_b"])
    with pytest.raises(ValueError, match="train.init_from"):
        warm_start(other, str(tmp_path))


@pytest.mark.parametrize("n", [2, 3])
def test_pipeline_parallel_equals_single_process(n):
    """The last rank applies the preconditioning with the chunk's input latents and timestep."""
    torch.set_num_threads(1)
    factory = functools.partial(tiny_pp_pipeline, precondition="linear")
    ref_lat, _ = reference(factory(), switch_timeline(), 3)
    plain, _ = reference(tiny_pp_pipeline(), switch_timeline(), 3)
    assert rel_err(ref_lat[-1], plain[-1]) > 0.05  # the skip path changes the video
    res = run_threads(factory, switch_timeline(), n, num_frames=NUM_FRAMES, seed=3, keep_outputs=True)
    assert all(not isinstance(r, BaseException) for r in res), res
    for c, (a, b) in enumerate(zip(res[-1].latents, ref_lat)):
        assert rel_err(a, b) <= 1e-5, f"chunk {c}"
