"""``model.self_conditioning``: the input carries the previous x0 estimate beside the noisy latents.

Checked another way: warm starts between plain and self-conditioned models keep the function (the
extra input weights are zero / dropped); ``sample_full`` and ``ode_trajectory`` feed each step the
previous step's guided x0, as an explicit loop over the model does.
"""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from distill_helpers import TINY, randomized, tiny
from streamgen import distill as D
from streamgen.distill import load_weights
from streamgen.model import CausalWanModel
from streamgen.rollout import sample_full
from streamgen.sampler import cfg_combine, teacher_sigmas, timestep, x0_from_flow

SC = dataclasses.replace(TINY, self_conditioning=True)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    t = torch.tensor([700.0, 250.0])
    return x, t, torch.randn(2, 5, 16, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)


@pytest.mark.parametrize("prediction", ["flow", "x0"])
def test_warm_start_between_plain_and_self_conditioned_models_keeps_the_function(tmp_path, prediction):
    plain = tiny(0, dataclasses.replace(TINY, prediction=prediction))
    save_file(plain.state_dict(), str(tmp_path / "plain.safetensors"))
    sc = CausalWanModel(dataclasses.replace(SC, prediction=prediction)).eval()
    load_weights(sc, tmp_path / "plain.safetensors")
    x, t, ctx, x0 = inputs()
    ref = plain(x, t, ctx)
    torch.testing.assert_close(sc(x, t, ctx), ref)
    torch.testing.assert_close(sc(x, t, ctx, None, x0), ref)  # the new input starts with zero weight
    assert sc.patch_embedding.weight.shape[1] == 2 * TINY.in_channels
    # back: a trained self-conditioned model into a plain one is its function without an estimate
    trained = randomized(CausalWanModel(dataclasses.replace(SC, prediction=prediction)), seed=1).eval()
    save_file(trained.state_dict(), str(tmp_path / "sc.safetensors"))
    back = CausalWanModel(dataclasses.replace(TINY, prediction=prediction)).eval()
    load_weights(back, tmp_path / "sc.safetensors")
    torch.testing.assert_close(back(x, t, ctx), trained(x, t, ctx))
    assert (trained(x, t, ctx, None, x0) - trained(x, t, ctx)).abs().max() > 1e-3  # the estimate matters
    with pytest.raises(ValueError, match="self_conditioning"):
        back(x, t, ctx, None, x0)


def test_sample_full_feeds_each_step_the_previous_guided_x0():
    model = randomized(CausalWanModel(SC), seed=2).eval()
    x, _, ctx_states, _ = inputs(3)
    ctx, unc = model.encode_context(ctx_states), model.encode_context(torch.zeros_like(ctx_states))
    sig = teacher_sigmas(6, 3.0)
    ref, prev = x, None
    with torch.no_grad():
        for i in range(len(sig) - 1):
            t = torch.full((2,), float(timestep(sig[i])))
            flow = cfg_combine(model(ref, t, ctx, None, prev), model(ref, t, unc, None, prev), 2.0)
            prev = x0_from_flow(ref, flow, sig[i])
            ref = ref + (sig[i + 1] - sig[i]) * flow
    got = sample_full(model, ctx, unc, x, sig, 2.0)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)  # timesteps from float vs tensor sigma
    plain = dataclasses.replace(SC, self_conditioning=False)
    no_sc = CausalWanModel(plain).eval()
    no_sc.load_state_dict(D.match_self_conditioning(model.state_dict(), no_sc))
    assert (sample_full(no_sc, ctx, unc, x, sig, 2.0) - got).abs().max() > 1e-2
    # the ODE-pair trajectory is the same sampling
    grid, keep = D.ode_grid([0.9, 0.5], 6, 3.0)
    traj = D.ode_trajectory(model, ctx, unc, x, grid, keep, 2.0)
    torch.testing.assert_close(traj[:, -1], sample_full(model, ctx, unc, x, grid, 2.0), rtol=1e-5, atol=1e-6)


def test_autoguidance_follows_an_explicit_loop_and_vanishes_against_itself():
    """``sample_full(guide=..., guide_scale=s)`` adds (s - 1) * (model - guide) to the CFG flow, with the guide
    (a weaker, shallower model: its own text projection, the same x0 estimate) called at every step."""
    model = randomized(CausalWanModel(SC), seed=2).eval()
    weak = randomized(CausalWanModel(dataclasses.replace(SC, num_layers=1)), seed=5).eval()
    x, _, ctx_states, _ = inputs(3)
    ctx, unc = model.encode_context(ctx_states), model.encode_context(torch.zeros_like(ctx_states))
    wctx = weak.encode_context(ctx_states)
    sig = teacher_sigmas(6, 3.0)
    ref, prev = x, None
    with torch.no_grad():
        for i in range(len(sig) - 1):
            t = torch.full((2,), float(timestep(sig[i])))
            cond = model(ref, t, ctx, None, prev)
            flow = cfg_combine(cond, model(ref, t, unc, None, prev), 2.0) + 1.5 * (cond - weak(ref, t, wctx, None, prev))
            prev = x0_from_flow(ref, flow, sig[i])
            ref = ref + (sig[i + 1] - sig[i]) * flow
        got = sample_full(model, ctx, unc, x, sig, 2.0, guide=lambda a, t, p: weak(a, t, wctx, None, p), guide_scale=2.5)
        plain = sample_full(model, ctx, unc, x, sig, 2.0)
        itself = sample_full(model, ctx, unc, x, sig, 2.0, guide=lambda a, t, p: model(a, t, ctx, None, p), guide_scale=3.0)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)
    assert (got - plain).abs().max() > 1e-2
    torch.testing.assert_close(itself, plain, rtol=1e-5, atol=1e-6)
