import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from streamgen.sampler import (add_noise, denoise_step, few_step_sigmas, flow_from_x0, flow_loss_weight, flow_target,
                              seeded_noise, shift_sigma, teacher_sigmas, x0_from_flow)


@pytest.mark.parametrize("n,shift", [(10, 5.0), (30, 3.0), (5, 1.0)])
def test_teacher_grid_matches_diffusers(n, shift):
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(n)
    assert torch.allclose(torch.tensor(teacher_sigmas(n, shift), dtype=torch.float64), s.sigmas.double(), atol=1e-6)


def test_euler_step_matches_diffusers_step():
    s = FlowMatchEulerDiscreteScheduler(shift=5.0)
    s.set_timesteps(8)
    x = torch.randn(1, 4, 2, 3, 3)
    flows = [torch.randn_like(x) for _ in range(8)]
    ours, theirs = x.clone(), x.clone()
    sig = teacher_sigmas(8, 5.0)
    for i, t in enumerate(s.timesteps):
        theirs = s.step(flows[i], t, theirs).prev_sample
        _, ours = denoise_step(lambda a, b: flows[i], ours, sig[i], sig[i + 1], euler=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_warped_steps_are_on_the_shifted_grid():
    # Self-Forcing: warped steps equal the shifted training grid at those indices
    sig = few_step_sigmas([1000, 750, 500, 250], 5.0, warp=True)
    assert sig[0] == 1.0
    assert sig[1] == pytest.approx(5 * 0.75 / (1 + 4 * 0.75))
    assert few_step_sigmas([1000, 500], 5.0, warp=False) == [1.0, 0.5]
    with pytest.raises(ValueError, match="decreasing"):
        few_step_sigmas([250, 500], 5.0, warp=True)


def test_few_step_recovers_x0_for_an_exact_predictor():
    """With the true flow, x0 comes back exactly and re-noising lands on the next noise level."""
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    sigma, nxt = 0.9, 0.6
    xt = add_noise(x0, noise, sigma)
    fresh = torch.randn_like(x0)
    est, x_next = denoise_step(lambda x, t: noise - x0, xt, sigma, nxt, fresh)
    assert torch.allclose(est, x0, atol=1e-5)
    assert torch.allclose(x_next, add_noise(x0, fresh, nxt), atol=1e-5)
    assert torch.allclose(x0_from_flow(xt, noise - x0, sigma), x0, atol=1e-5)


def test_per_frame_sigma_passes_per_frame_timesteps():
    seen = {}

    def predict(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    x = torch.randn(2, 4, 3, 2, 2)
    sig = torch.tensor([0.2, 0.5, 0.9]).view(1, 1, 3, 1, 1).expand(2, 1, 3, 1, 1)
    denoise_step(predict, x, sig, None)
    assert seen["t"].shape == (2, 3) and torch.allclose(seen["t"][0], torch.tensor([200.0, 500.0, 900.0]))


def test_seeded_noise_depends_only_on_key():
    a = seeded_noise((3, 4), 7, 1, 2)
    assert torch.equal(a, seeded_noise((3, 4), 7, 1, 2))
    assert not torch.equal(a, seeded_noise((3, 4), 7, 2, 1))
    assert shift_sigma(1.0, 5.0) == 1.0


def test_flow_from_x0_inverts_x0_from_flow():
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    for sigma in (1.0, 0.5, 0.05):
        xt = add_noise(x0, noise, sigma)
        flow = flow_from_x0(xt, x0, sigma)
        assert torch.allclose(flow, flow_target(x0, noise), atol=1e-4)  # the exact flow
        assert torch.allclose(x0_from_flow(xt, flow, sigma), x0, atol=1e-5)
    xt = add_noise(x0, noise, 0.01)  # below the clip: finite, and a partial step towards x0
    back = x0_from_flow(xt, flow_from_x0(xt, x0, 0.01), 0.01)
    assert torch.allclose(back, xt + 0.2 * (x0 - xt), atol=1e-5)
    assert torch.isfinite(flow_from_x0(x0, x0 + 1, 0.0)).all()


def test_flow_loss_weight_is_the_x0_error_over_the_floored_sigma():
    """Weighted flow MSE of an x0 prediction == x0 MSE / max(sigma, floor)^2 (for sigma above the x0 clip)."""
    x0, noise, x0_hat = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    sigma = torch.tensor([0.06, 0.2, 0.9])
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = add_noise(x0, noise, s)
    flow_mse = (flow_from_x0(xt, x0_hat, s) - flow_target(x0, noise)).square().flatten(1).mean(1)
    x0_mse = (x0_hat - x0).square().flatten(1).mean(1)
    w = flow_loss_weight(sigma, 0.3)
    assert torch.allclose(w * flow_mse, x0_mse / sigma.clamp_min(0.3).square(), rtol=1e-4)
    assert torch.equal(flow_loss_weight(sigma, 0.0), torch.ones(3))


def test_foreground_weight_marks_the_rendered_object_patches():
    """The latent-space foreground (distance to the frame's median latent) is the set of 8x8 (x4 frames)
    patches in which the renderer drew object pixels; weights are 1 + boost there, 1 elsewhere, mean 1."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.sampler import foreground_weight
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import sample_spec
    from streamgen.vae import load_vae

    vae = load_vae("assets/vae")
    rng = np.random.default_rng(3)
    specs = [sample_spec(rng, "train") for _ in range(6)]
    frames = render_batch(specs, 13)  # [N, 13, 128, 128, 3]
    x0 = vae.encode(frames_to_tensor(frames))
    w = foreground_weight(x0, boost=9.0)
    assert w.shape == (6, 1, 4, 16, 16)
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(6))
    # reference from pixels: a patch is foreground if any of its pixels differs from the background colour
    bg = np.array([frames[i, 0, 0, 0] for i in range(6)])[:, None, None, None]
    obj = torch.from_numpy((frames != bg).any(-1))  # [N, 13, 128, 128]
    groups = [obj[:, :1]] + [obj[:, 1 + 4 * k : 5 + 4 * k] for k in range(3)]
    ref = torch.stack([g.any(1).reshape(6, 16, 8, 16, 8).any(4).any(2) for g in groups], dim=1)  # [N, 4, 16, 16]
    fg = w[:, 0] > w[:, 0].amin(dim=(1, 2, 3), keepdim=True) * 1.5
    assert 0.01 < ref.float().mean() < 0.2
    assert torch.equal(fg, ref)
    ratio = w[:, 0][fg] / w[:, 0].amin(dim=(1, 2, 3), keepdim=True).expand_as(fg)[fg]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 10.0))
    assert torch.equal(foreground_weight(x0, 0.0), torch.ones_like(x0[:, :1]))
    # dilated: the pixel reference grown by one patch in each direction (3x3 neighbourhood, clipped at the border)
    wd = foreground_weight(x0, boost=4.0, dilate=1)[:, 0]
    grown = torch.zeros_like(ref)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = torch.zeros_like(ref)
            shifted[..., max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)] = \
                ref[..., max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)]
            grown |= shifted
    assert grown.float().mean() > 2 * ref.float().mean()
    assert torch.equal(wd > wd.amin(dim=(1, 2, 3), keepdim=True) * 1.5, grown)


def test_flow_matching_loss_weight_is_a_per_position_factor():
    from streamgen.distill import flow_matching_loss
    from streamgen.sampler import flow_target

    g = torch.Generator().manual_seed(0)
    pred, x0, noise = (torch.randn(2, 3, 2, 4, 4, generator=g) for _ in range(3))
    sigma = torch.tensor([0.5, 0.9])
    w = torch.rand(2, 1, 2, 4, 4, generator=g)
    ref = ((pred - flow_target(x0, noise)) ** 2 * w).flatten(1).mean(1).mean()
    torch.testing.assert_close(flow_matching_loss(pred, x0, noise, sigma, weight=w), ref)
    assert not torch.allclose(flow_matching_loss(pred, x0, noise, sigma), ref)


def test_object_crop_holds_the_whole_object_and_centres_it():
    """Crops are windows of the latents (found again by search in the full frame) that hold every patch in which
    the renderer drew object pixels, centred on the object within the jitter, clamped at the canvas border."""
    import numpy as np

    from streamgen.data import frames_to_tensor, object_crop
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import ClipSpec
    from streamgen.vae import load_vae

    vae = load_vae("assets/vae")
    specs = [ClipSpec("circle", "red", "black", "still", size=32, x=64, y=64),
             ClipSpec("square", "white", "blue", "still", size=24, x=20, y=100),
             ClipSpec("star", "yellow", "gray", "pulsing", size=28, x=90, y=30),
             ClipSpec("triangle", "green", "white", "moving right", "slowly", size=20, x=40, y=70)]
    frames = render_batch(specs, 13)
    full = vae.encode(frames_to_tensor(frames))  # [4, 64, 4, 16, 16]
    size, jitter = 8, 1
    crops = object_crop(full, size, torch.Generator().manual_seed(0), jitter=jitter)
    assert crops.shape == (4, 64, 4, size, size)
    bg = frames[:, :1, :1, :1]
    obj = (frames != bg).any(-1).any(1).reshape(4, 16, 8, 16, 8).any(4).any(2)  # [4, 16, 16] patches drawn on
    for i in range(4):
        hits = [(y, x) for y in range(16 - size + 1) for x in range(16 - size + 1)
                if torch.equal(full[i, :, :, y:y + size, x:x + size], crops[i])]
        assert len(hits) == 1
        y0, x0 = hits[0]
        ys, xs = np.nonzero(obj[i])
        assert ys.min() >= y0 and ys.max() < y0 + size and xs.min() >= x0 and xs.max() < x0 + size, (i, hits, ys, xs)
        cy, cx = ys.mean(), xs.mean()  # patch-level centre (the clamp at a border may move the window further)
        for c, o in ((cy, y0), (cx, x0)):
            want = min(max(c - (size - 1) / 2, 0), 16 - size)
            assert abs(o - want) <= jitter + 1.0, (i, c, o)
    with pytest.raises(ValueError, match="crop size"):
        object_crop(full, 17, torch.Generator())


def test_channel_weight_scales_the_flow_loss_on_the_track_channels_only():
    """``train.track_loss_weight``: an error confined to the last (track) channels costs ``weight`` times what the
    same error costs on other channels, and a uniform error costs what it costs unweighted (mean weight 1)."""
    from streamgen.distill import flow_matching_loss
    from streamgen.sampler import channel_weight
    from streamgen.vae import load_vae

    vae = load_vae("assets/vae_pred")
    c, k = vae.z_dim, vae.track_channels
    w = channel_weight(c, k, 8.0)
    assert w.shape == (1, c, 1, 1, 1)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    x0, noise, sigma = torch.zeros(2, c, 4, 16, 16), torch.zeros(2, c, 4, 16, 16), torch.full((2,), 0.5)
    on_track, off_track = torch.zeros_like(x0), torch.zeros_like(x0)
    on_track[:, c - k:], off_track[:, :k] = 1.0, 1.0  # the same error in k channels at either end
    loss = lambda pred, weight=None: flow_matching_loss(pred, x0, noise, sigma, weight=weight).item()  # noqa: E731
    assert loss(on_track, w) / loss(off_track, w) == pytest.approx(8.0)
    assert loss(torch.ones_like(x0), w) == pytest.approx(loss(torch.ones_like(x0)))
    torch.testing.assert_close(channel_weight(c, 0, 8.0), torch.ones(1, c, 1, 1, 1))
    with pytest.raises(ValueError, match="last"):
        channel_weight(c, c + 1, 8.0)
