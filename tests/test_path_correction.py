"""``distill.path_correction_input``: training inputs built from the model's own estimate at a higher noise level.

Checked another way: with an exact estimate the input is the plain noised clip; with any other estimate it is
the DDIM step written out by hand, and the flow loss on it is the x0 error weighted as usual.
"""
import pytest
import torch

from streamgen.config import ConfigError, TeacherRunConfig, load_config
from streamgen.distill import flow_matching_loss, path_correction_input, path_source_levels
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
