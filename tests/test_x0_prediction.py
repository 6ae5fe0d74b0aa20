"""``model.prediction: x0``: the head predicts clean latents and the model returns the flow they imply.

Checked against the pieces computed another way: the x0 a sampler reads back from the flow is the
head's output; per-frame timesteps (clean context frames next to noisy ones); pipeline-parallel
ranks (the head and the conversion on the last rank) equal one process; warm starts.
"""
import dataclasses
import functools

import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_CONFIGS, randomize_, rel_err
from pp_helpers import NUM_FRAMES, reference, switch_timeline, tiny_pp_pipeline
from streamgen.config import ConfigError
from streamgen.model import CausalWanModel
from streamgen.parallel.runtime import run_threads
from streamgen.sampler import X0_SIGMA_MIN, timestep, x0_from_flow
from streamgen.trainer import warm_start

CFG = dataclasses.replace(TINY_CONFIGS["tiny_a"], prediction="x0")


def test_unknown_prediction_is_a_config_error():
    with pytest.raises(ConfigError, match="model.prediction"):
        CausalWanModel(dataclasses.replace(CFG, prediction="eps"))


@torch.no_grad()
def test_x0_read_back_from_the_flow_is_the_head_output():
    m = randomize_(CausalWanModel(CFG), seed=1).eval()
    x, ctx = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 5, CFG.text_dim)
    for sigma in (1.0, 0.6, X0_SIGMA_MIN):
        t = torch.full((2,), float(timestep(sigma)))
        state = m.run_blocks(m.embed(x, t), m.encode_context(ctx), m.full_attention(2, 4, 4))
        head = m.head(state, tuple(x.shape))
        assert torch.allclose(x0_from_flow(x, m(x, t, ctx), sigma), head, atol=1e-5)
    plain = randomize_(CausalWanModel(TINY_CONFIGS["tiny_a"]), seed=1).eval()
    assert torch.allclose(plain(x, t, ctx), head, atol=1e-6)  # same weights, the flow head returns it as is


@torch.no_grad()
def test_per_frame_timesteps_match_per_frame_calls():
    m = randomize_(CausalWanModel(CFG), seed=2).eval()
    x, raw = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)
    t = torch.tensor([[900.0, 0.0], [300.0, 1000.0]])  # a clean context frame included
    out = m.output(raw, x, t)
    assert torch.isfinite(out).all()
    for b in range(2):
        for f in range(2):
            one = m.output(raw[b:b + 1, :, f:f + 1], x[b:b + 1, :, f:f + 1], t[b:b + 1, f])
            assert torch.allclose(out[b:b + 1, :, f:f + 1], one, atol=1e-6)


def test_warm_start_loads_the_body_and_resets_the_head(tmp_path):
    src = randomize_(CausalWanModel(TINY_CONFIGS["tiny_a"]), seed=5)
    save_file(src.state_dict(), str(tmp_path / "transformer.safetensors"))
    dst = CausalWanModel(CFG)
    assert warm_start(dst, str(tmp_path), reset_head=True) == tmp_path / "transformer.safetensors"
    assert torch.equal(dst.blocks[1].ffn.net[2].weight, src.blocks[1].ffn.net[2].weight)
    assert not dst.proj_out.weight.any() and not dst.proj_out.bias.any()
    with pytest.raises(ValueError, match="train.init_from"):
        warm_start(CausalWanModel(TINY_CONFIGS["tiny_b"]), str(tmp_path))


@pytest.mark.parametrize("n", [2, 3])
def test_pipeline_parallel_equals_single_process(n):
    """The last rank converts the head's x0 with the chunk's input latents and timestep."""
    torch.set_num_threads(1)
    factory = functools.partial(tiny_pp_pipeline, prediction="x0")
    ref_lat, _ = reference(factory(), switch_timeline(), 3)
    plain, _ = reference(tiny_pp_pipeline(), switch_timeline(), 3)
    assert rel_err(ref_lat[-1], plain[-1]) > 0.05  # the parameterisation changes the video
    res = run_threads(factory, switch_timeline(), n, num_frames=NUM_FRAMES, seed=3, keep_outputs=True)
    assert all(not isinstance(r, BaseException) for r in res), res
    for c, (a, b) in enumerate(zip(res[-1].latents, ref_lat)):
        assert rel_err(a, b) <= 1e-5, f"chunk {c}"
