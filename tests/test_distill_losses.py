"""DMD generator loss, critic loss and reward weights against hand computations."""
import numpy as np
import pytest
import torch

import streamgen.distill as D
from streamgen.sampler import shift_sigma
from distill_helpers import tiny

B, C, F, H, W = 2, 4, 3, 4, 4


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, F, H, W, generator=g)
    noise = torch.randn(B, C, F, H, W, generator=g)
    sigma = torch.tensor([0.35, 0.8])
    states = torch.randn(B, 5, 16, generator=g)
    empty = torch.randn(B, 5, 16, generator=g)
    return x, noise, sigma, states, empty


def _by_hand(teacher, critic, x, noise, sigma, states, empty, scale, mask, weights):
    """Independent computation of d loss / d x from the issue's formula."""
    with torch.no_grad():
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x + s * noise
        t = 1000 * sigma
        cond, unc = teacher(xt, t, states), teacher(xt, t, empty)
        x0_real = xt - s * (unc + scale * (cond - unc))
        x0_fake = xt - s * critic(xt, t, states)
        m = mask.view(1, 1, -1, 1, 1).float()
        n = int(mask.sum()) * C * H * W
        norm = ((x - x0_real).abs() * m).flatten(1).sum(1) / n
        direction = (x0_fake - x0_real) / norm.view(-1, 1, 1, 1, 1)
        return weights.view(-1, 1, 1, 1, 1) * direction * m / (B * n), direction


@pytest.mark.parametrize("mask", [[True, True, True], [False, True, True]])
def test_dmd_gradient_is_the_normalised_score_difference(mask):
    teacher, critic = tiny(1), tiny(2)
    x, noise, sigma, states, empty = _inputs()
    mask = torch.tensor(mask)
    weights = torch.tensor([0.5, 1.5])
    x = x.requires_grad_(True)
    terms = D.dmd_direction(teacher, critic, x, noise, sigma, teacher.encode_context(states),
                            teacher.encode_context(empty), 4.0, critic.encode_context(states), None, 1.0, mask)
    loss = D.dmd_loss(x, terms.direction, mask, weights)
    loss.backward()
    expected, direction = _by_hand(teacher, critic, x.detach(), noise, sigma, states, empty, 4.0, mask, weights)
    torch.testing.assert_close(terms.direction, direction, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-9)
    assert x.grad[:, :, ~mask].abs().max() == 0 if (~mask).any() else True
    assert not terms.direction.requires_grad


def test_dmd_gradient_reaches_generator_parameters_as_the_chain_rule():
    """Student params: the MSE-to-detached-target loss gives exactly J^T (direction / N)."""
    teacher, critic, student = tiny(1), tiny(2), tiny(3)
    x_in, noise, sigma, states, empty = _inputs(1)
    tt = torch.full((B,), 700.0)

    def sample():
        return x_in - 0.7 * student(x_in, tt, states)

    x = sample()
    terms = D.dmd_direction(teacher, critic, x, noise, sigma, teacher.encode_context(states),
                            teacher.encode_context(empty), 3.0, critic.encode_context(states))
    D.dmd_loss(x, terms.direction).backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    expected, _ = _by_hand(teacher, critic, x.detach(), noise, sigma, states, empty, 3.0,
                           torch.ones(F, dtype=torch.bool), torch.ones(B))
    (sample() * expected).sum().backward()  # surrogate whose x-gradient is the hand-computed one
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in critic.parameters())


def test_critic_loss_is_flow_matching_on_detached_samples():
    critic, student = tiny(2), tiny(3)
    x_in, noise, sigma, states, _ = _inputs(2)
    mask = torch.tensor([False, True, True])
    x = x_in - 0.5 * student(x_in, torch.full((B,), 500.0), states)  # a student sample with a graph
    assert x.requires_grad
    loss = D.critic_loss(critic, x, noise, sigma, critic.encode_context(states), mask)
    with torch.no_grad():
        s = sigma.view(-1, 1, 1, 1, 1)
        pred = critic((1 - s) * x + s * noise, 1000 * sigma, states)
        ref = ((pred - (noise - x)) ** 2)[:, :, 1:].mean()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert all(p.grad is None for p in student.parameters()), "gradient reached the student"
    grads = [p.grad for p in critic.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_dmd_noise_levels_are_shifted_uniform_and_clamped():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = D.sample_sigmas(4000, 20, 980, 3.0, g1)
    u = torch.rand(4000, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(s, shift_sigma(u, 3.0).clamp(0.02, 0.98).float())
    assert s.min() >= 0.02 and s.max() <= 0.98
    assert abs(float((s > 0.75).float().mean()) - 0.5) < 0.03  # shift 3 puts the median at 0.75


def test_reward_weights():
    w = D.reward_weights(torch.tensor([0.0, 1.0, float("nan"), 0.5]), 2.0)
    assert w[2] == 1.0
    assert w[1] > w[3] > w[0]
    torch.testing.assert_close(w[[0, 1, 3]].mean(), torch.tensor(1.0))
    torch.testing.assert_close(w[1] / w[0], torch.tensor(np.exp(2.0), dtype=torch.float32))
    assert torch.equal(D.reward_weights(torch.tensor([0.2, 0.9]), 0.0), torch.ones(2))


def test_motion_reward_scores_a_clip_against_its_prompt():
    """Rendered toy clip -> VAE latents -> the reward decodes and runs the detector."""
    import dataclasses

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import sample_spec
    from streamgen.vae import load_vae

    vae = load_vae("assets/vae")
    rng = np.random.default_rng(3)
    spec = next(s for s in (sample_spec(rng) for _ in range(100)) if s.motion == "moving right")
    lat = vae.encode(frames_to_tensor(render_batch([spec], 13)))
    wrong = dataclasses.replace(spec, motion="moving left")
    r = D.motion_reward(vae, lat.repeat(2, 1, 1, 1, 1), [spec, wrong])
    assert r.tolist() == [1.0, 0.0]


def test_window_target_places_the_switch():
    a, b = "a red circle", "a blue square"
    w = D.WindowSpec(2, start=4, new_start=6, end=8)
    assert D.window_target(w, a, b, None) == a
    assert D.window_target(w, a, b, 8) == a
    assert D.window_target(w, a, b, 4) == b
    assert D.window_target(w, a, b, 6) == [(0, a), (5, b)]  # latent frame 2 of the clip = pixel frames 5..8
