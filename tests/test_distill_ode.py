"""ODE pairs from the teacher and the causal student's regression initialisation."""
import pytest
import torch

import streamgen.distill as D
from streamgen.config import CacheConfig
from streamgen.rollout import sample_full
from streamgen.sampler import few_step_sigmas, teacher_sigmas
from distill_helpers import tiny

SIGMAS = few_step_sigmas([1000, 750, 500, 250], 3.0, True)


def test_ode_grid_passes_through_the_student_sigmas():
    grid, keep = D.ode_grid(SIGMAS, 10, 3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    assert all(a > b for a, b in zip(grid, grid[1:]))
    assert [grid[k] for k in keep] == SIGMAS
    assert set(teacher_sigmas(10, 3.0)) - {1.0} <= set(grid)  # the teacher's own grid is kept
    with pytest.raises(ValueError):
        D.ode_grid([0.5, 0.9], 10, 3.0)


def test_ode_trajectory_is_the_teachers_cfg_euler_sampling():
    """Each stored point is what many-step CFG sampling (``sample_full``) reaches at that sigma."""
    teacher = tiny(1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 3, 4, 4, generator=g)
    ctx = teacher.encode_context(torch.randn(2, 5, 16, generator=g))
    unc = teacher.encode_context(torch.randn(2, 5, 16, generator=g))
    grid, keep = D.ode_grid(SIGMAS, 8, 3.0)
    traj = D.ode_trajectory(teacher, ctx, unc, noise, grid, keep, 4.0)
    assert traj.shape == (2, 5, 4, 3, 4, 4)
    for k, i in enumerate(keep):
        torch.testing.assert_close(traj[:, k], sample_full(teacher, ctx, unc, noise, grid[: i + 1], 4.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traj[:, -1], sample_full(teacher, ctx, unc, noise, grid, 4.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traj[:, 0], noise)


def test_regression_inputs_draw_one_level_per_chunk():
    b, k1, c, f = 64, 5, 3, 4
    # trajectory value encodes (level, frame) so the gather can be checked exactly
    traj = (torch.arange(k1).view(1, k1, 1, 1, 1, 1) * 10 + torch.arange(f).view(1, 1, 1, f, 1, 1)).float()
    traj = traj.expand(b, k1, c, f, 2, 2).contiguous()
    x, sigma, level = D.regression_inputs(traj, SIGMAS, 2, torch.Generator().manual_seed(0))
    assert level.shape == (b, 2) and level.max() <= 3 and level.min() >= 0  # never the clean end point
    per_frame = level.repeat_interleave(2, dim=1)
    torch.testing.assert_close(x[:, 0, :, 0, 0], per_frame.float() * 10 + torch.arange(f).float())
    torch.testing.assert_close(sigma, torch.tensor(SIGMAS)[per_frame])
    assert (level[:, 0] != level[:, 1]).any()  # chunks get independent levels


def test_ode_regression_loss_by_hand():
    """x0 of the student (block-causal plan of the inference cache) vs the clean end point."""
    student = tiny(2)
    cache = CacheConfig(chunk_frames=1, window_frames=3, sink_frames=1, sink_policy="anchor", position_policy="rebased")
    g = torch.Generator().manual_seed(1)
    traj = torch.randn(2, 5, 4, 4, 4, 4, generator=g)
    states = torch.randn(2, 5, 16, generator=g)
    plan = student.block_causal_plan(cache, 4, 4, 4)
    loss = D.ode_regression_loss(student, traj, SIGMAS, states, plan, 1, torch.Generator().manual_seed(7))
    x, sigma, _ = D.regression_inputs(traj, SIGMAS, 1, torch.Generator().manual_seed(7))
    with torch.no_grad():
        x0 = x - sigma[:, None, :, None, None] * student(x, 1000 * sigma, states, plan)
    torch.testing.assert_close(loss.detach(), ((x0 - traj[:, -1]) ** 2).mean(), rtol=1e-5, atol=1e-7)
    loss.backward()
    assert student.proj_out.weight.grad.abs().sum() > 0
