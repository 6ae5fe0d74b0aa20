"""``distill.path_correction_input``: training inputs built from the model's own estimate at a higher noise level.

Checked another way: with an exact estimate the input is the plain noised clip; with any other estimate it is
the DDIM step written out by hand, and the flow loss on it is the x0 error weighted as usual.
"""
import pytest
import torch

from streamgen.config import ConfigError, TeacherRunConfig, load_config
from streamgen.distill import coarse_latents, flow_matching_loss, path_correction_input, path_source_levels, substituted_input
from streamgen.sampler import add_noise, flow_loss_weight


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    return x0, noise, torch.tensor([0.2, 0.5, 0.8]), torch.tensor([0.8, 0.85, 0.9])


def test_an_exact_estimate_gives_the_plain_noised_input():
    x0, noise, sigma, s_from = data()
    x, noise_eff = path_correction_input(x0, noise, sigma, s_from, lambda x, s: x0)
    torch.testing.assert_close(x, add_noise(x0, noise, sigma.view(-1, 1, 1, 1, 1)))
    torch.testing.assert_close(noise_eff, noise, rtol=1e-5, atol=1e-5)


def test_input_is_the_ddim_step_and_the_loss_is_the_x0_error():
    x0, noise, sigma, s_from = data(1)
    seen = {}

    def estimate(x, s):  # a wrong, smooth estimate of its input
        seen["x"], seen["s"] = x, s
        return 0.5 * x + 0.1

    x, noise_eff = path_correction_input(x0, noise, sigma, s_from, estimate)
    sf, s = s_from.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1, 1)
    x_from = (1 - sf) * x0 + sf * noise
    torch.testing.assert_close(seen["x"], x_from)
    torch.testing.assert_close(x, (1 - s) * (0.5 * x_from + 0.1) + s * noise)
    x0_pred = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    pred_flow = (x - x0_pred) / s  # what an x0 head returns as its flow
    per_sample = (((x0_pred - x0) / s) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(flow_matching_loss(pred_flow, x0, noise_eff, sigma, 0.3),
                               (flow_loss_weight(sigma, 0.3) * per_sample).mean(), rtol=1e-4, atol=1e-6)


def test_config_range_is_checked():
    with pytest.raises(ConfigError, match="path_sigma_range"):
        load_config(["configs/teacher_toy.yaml"], ["train.path_sigma_range=[0.9, 0.5]"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="path_correction"):
        load_config(["configs/teacher_toy.yaml"], ["train.path_correction=1.5"], schema=TeacherRunConfig)
    with pytest.raises(ConfigError, match="path_from_min"):
        load_config(["configs/teacher_toy.yaml"], ["train.path_from_min=0.95"], schema=TeacherRunConfig)


def test_source_levels_start_at_sigma_or_the_floor():
    sigma = torch.rand(4000, generator=torch.Generator().manual_seed(3)) * 0.9
    u = torch.rand(4000, generator=torch.Generator().manual_seed(4))
    free, floored = path_source_levels(sigma, u, 0.95), path_source_levels(sigma, u, 0.95, floor=0.85)
    assert (free >= sigma).all() and (free <= 0.95).all()
    assert (floored >= torch.maximum(sigma, torch.tensor(0.85))).all() and (floored <= 0.95).all()
    assert (u == 0).logical_or(floored > free - 1e-6).all()  # the floor only moves levels up
    # uniform above the start: the mean sits halfway between max(sigma, floor) and hi
    low = sigma < 0.5
    assert abs(float(floored[low].mean()) - 0.9) < 0.005 and abs(float((free[low] - sigma[low]).mean() / (0.95 - sigma[low]).mean()) - 0.5) < 0.03


def test_coarse_input_keeps_the_leading_channels_and_the_x0_target():
    x0, noise, sigma, _ = data(5)
    coarse = coarse_latents(x0, 2)
    torch.testing.assert_close(coarse[:, :2], x0[:, :2])
    assert (coarse[:, 2:] == 0).all()
    x, noise_eff = substituted_input(x0, coarse, noise, sigma)
    s = sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x, (1 - s) * coarse + s * noise)  # noised from the coarse clip, same noise
    torch.testing.assert_close(x[:, :2], add_noise(x0, noise, s)[:, :2])  # where nothing was dropped: the plain input
    torch.testing.assert_close((1 - s) * x0 + s * noise_eff, x)  # the flow loss's x0 target is the full clip


def test_coarse_latents_of_a_pca_vae_keep_the_object_and_its_colour_not_its_outline():
    """Decoded from its first 3 PCA channels a rendered still keeps its object's place and colour (the 8x8-pixel
    patch means) and loses the outline."""
    import numpy as np
    from streamgen.data import toy_batch
    from streamgen.toyworld.detector import detect_frames
    from streamgen.vae import load_vae
    from streamgen.video import to_uint8

    vae = load_vae("assets/vae")  # the shipped PCA VAE: its real channel order
    batch = toy_batch(vae, 8, 1, 7, 0)
    full = [to_uint8(vae.decode(batch.latents[i : i + 1]))[0] for i in range(8)]
    coarse = [to_uint8(vae.decode(coarse_latents(batch.latents[i : i + 1], 3)))[0] for i in range(8)]
    d_full, d_coarse = detect_frames(np.stack(full)), detect_frames(np.stack(coarse))
    assert d_full.present.all() and d_coarse.present.mean() >= 0.75
    assert (d_coarse.colour == d_full.colour)[d_coarse.present].mean() >= 0.75
    assert np.abs(d_coarse.cx - d_full.cx)[d_coarse.present].max() < 4  # px: the object stays where it was
    edge = lambda f: np.abs(np.diff(f.astype(np.float32), axis=0)).mean()
    assert np.mean([edge(c) for c in coarse]) < 0.8 * np.mean([edge(f) for f in full])  # blurred outline
