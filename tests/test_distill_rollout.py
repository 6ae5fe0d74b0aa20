"""Self-Forcing stream rollouts: gradient flow, cache, windows, and identity with the inference stream."""
import contextlib
import copy

import pytest
import torch

import streamgen.distill as D
import streamgen.pipeline as P
from streamgen.config import DistillConfig, SamplerConfig, StreamGenConfig, SwitchConfig, TextConfig, VideoConfig
from streamgen.sampler import few_step_sigmas, seeded_noise
from distill_helpers import ROLLING, TINY, StubText, switch, tiny, tiny_vae

SIGMAS = few_step_sigmas([1000, 750, 500, 250], 3.0, True)
B, Z, H, W = 2, 4, 4, 4


def _noise(seed=0, batch=B):
    return lambda chunk, i: seeded_noise((batch, Z, 1, H, W), seed, chunk, i)


def _record_grad_calls(model):
    """Wrap forward_cached: check the cache never requires grad, record every call made with grad."""
    calls, orig = [], model.forward_cached

    def rec(x, t, context, cache, *, write=False, frame_start=None):
        assert not any(b.requires_grad for b in (cache.k, cache.v, cache.sink_k, cache.sink_v))
        if torch.is_grad_enabled():
            calls.append(dict(x=x.detach().clone(), x_requires_grad=x.requires_grad, t=t.clone(), write=write,
                              frame_start=frame_start, cache=copy.deepcopy(cache)))
        return orig(x, t, context, cache, write=write, frame_start=frame_start)

    model.forward_cached = rec
    return calls, orig


def _rollout_grads(model, plan, states, weights):
    ro = D.StreamRollout(model, ROLLING, switch(), SIGMAS, (B, Z, H, W), _noise())
    for win in ro.run(plan, states, grad=True):
        (win.latents * weights[win.spec.index]).sum().backward()  # backward per window, as the trainer
    assert not any(b.requires_grad for b in (ro.cache.k, ro.cache.v, ro.cache.sink_k, ro.cache.sink_v))
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads, ro


@pytest.mark.parametrize("checkpointing", [False, True])
def test_only_exit_steps_carry_gradient(checkpointing, monkeypatch):
    """Parameters get exactly the gradient of the exit steps alone: a reference that replays only the
    exit-step forwards, on constant inputs and a frozen copy of the cache, gives the same gradients."""
    torch.manual_seed(0)
    model = tiny(0)
    model.gradient_checkpointing = checkpointing
    # 6 frames, window 3 + sink 1: frames 1, 2 are evicted while later chunks of the same window still wait
    plan = D.RolloutPlan(6, 3, [3, 5, 6], exit_steps=[3, 0, 2, 1, 3, 2], switch_frame=None)
    states = torch.randn(B, 5, 16)
    weights = {w.index: torch.randn(B, Z, 3, H, W) for w in plan.windows()}
    calls, orig = _record_grad_calls(model)
    got, ro = _rollout_grads(model, plan, states, weights)
    model.forward_cached = orig

    assert len(calls) == 6, "one forward with grad per chunk: the exit step"
    for c, call in enumerate(calls):
        assert call["frame_start"] == c and not call["write"] and not call["x_requires_grad"]
        torch.testing.assert_close(call["t"], torch.tensor(1000 * SIGMAS[plan.exit_steps[c]]))
    assert min(ro.cache.state.slot_frame) >= 4, "the window rolled (frames 1..3 evicted)"

    # reference: only the exit steps, earlier steps replaced by their (constant) outputs
    loss = 0.0
    for c, call in enumerate(calls):
        ctx = model.encode_context(states)
        s = SIGMAS[plan.exit_steps[c]]
        x0 = call["x"] - s * model.forward_cached(call["x"], call["t"], ctx, call["cache"], frame_start=c)
        w = next(w for w in plan.windows() if w.new_start <= c < w.end)
        loss = loss + (x0 * weights[w.index][:, :, c - w.start : c - w.start + 1]).sum()
    loss.backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert model.condition_embedder.text_embedder.linear_1.weight.grad.abs().sum() > 0  # prompt projection trains

    if checkpointing:  # the guard matters: recomputation in backward would read the overwritten cache
        model.zero_grad(set_to_none=True)
        monkeypatch.setattr(D, "no_checkpointing", lambda m: contextlib.nullcontext())
        bad, _ = _rollout_grads(model, plan, states, weights)
        assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(bad, got))


def test_windows_carry_context_without_gradient():
    model = tiny(1)
    plan = D.RolloutPlan(7, 3, [3, 5, 6, 7], exit_steps=[1] * 7, switch_frame=None, supervise_first=False)
    calls, orig = _record_grad_calls(model)
    ro = D.StreamRollout(model, ROLLING, switch(), SIGMAS, (B, Z, H, W), _noise())
    seen = []
    for win in ro.run(plan, torch.randn(B, 5, 16), grad=True):
        s = win.spec
        assert win.latents.shape == (B, Z, 3, H, W) and s.end - s.start == 3
        hist = ro.history()
        torch.testing.assert_close(win.latents.detach(), hist[:, :, s.start : s.end])
        if s.index == 0:
            assert not win.latents.requires_grad  # unsupervised first window: no graph at all
        else:
            k = s.new_start - s.start
            assert k >= 1 and win.latents.requires_grad  # cat of detached context + new frames
            win.latents.sum().backward()
        seen.append((s.start, s.new_start, s.end))
    model.forward_cached = orig
    assert seen == [(0, 0, 3), (2, 3, 5), (3, 5, 6), (4, 6, 7)]
    assert [c["frame_start"] for c in calls] == [3, 4, 5, 6]  # no grad in the unsupervised first window


def test_context_frames_get_no_gradient():
    model = tiny(1)
    plan = D.RolloutPlan(5, 3, [3, 5], exit_steps=[2] * 5, switch_frame=None)
    ro = D.StreamRollout(model, ROLLING, switch(), SIGMAS, (B, Z, H, W), _noise())
    w1 = list(ro.run(plan, torch.randn(B, 5, 16), grad=True))[1]
    # frame 2 is context in window 1 (generated in window 0): its value is the detached history
    g = torch.autograd.grad(w1.latents[:, :, 0].sum(), list(model.parameters()), allow_unused=True, retain_graph=True)
    assert all(x is None or x.abs().sum() == 0 for x in g), "a context frame carried gradient"
    g = torch.autograd.grad(w1.latents[:, :, 1:].sum(), list(model.parameters()), allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)


@pytest.mark.parametrize("mode", ["recache", "none", "blend"])
def test_training_stream_is_the_inference_stream(mode):
    """Same step function, cache class, sink policy and prompt-switch re-cache as StreamingPipeline:
    with the pipeline's noise, the training rollout reproduces its latents chunk for chunk."""
    model, vae, text = tiny(4, std=0.2), tiny_vae(Z), StubText()
    cfg = StreamGenConfig(model=copy.deepcopy(TINY), cache=ROLLING, sampler=SamplerConfig(shift=3.0),
                          switch=SwitchConfig(mode=mode, blend_chunks=2), text=TextConfig(max_length=5),
                          video=VideoConfig(height=32, width=32))
    pipe = P.StreamingPipeline(model, vae, text, cfg)
    L, s, seed = 7, 4, 3
    pipe.start("a red circle", seed=seed)
    ref = []
    for c in range(L):
        if c == s:
            pipe.set_prompt("a blue square")
        ref.append(pipe.next_chunk().latents)
    plan = D.RolloutPlan(L, 3, [3, 4, 6, 7], exit_steps=[len(SIGMAS) - 1] * L, switch_frame=s)
    noise = lambda chunk, i: seeded_noise((1, Z, 1, H, W), seed, chunk, P._INIT + i)  # noqa: E731
    ro = D.StreamRollout(model, ROLLING, cfg.switch, pipe.sigmas, (1, Z, H, W), noise)
    prompts = [w.prompt for w in ro.run(plan, text.encode(["a red circle"]), text.encode(["a blue square"]), grad=True)]
    assert prompts == [0, 0, 1, 1]  # windows [0,3) [1,4) | [3,6) [4,7): new frames from 4 on follow the new prompt
    for c in range(L):
        torch.testing.assert_close(ro.frames[c], ref[c], rtol=0, atol=1e-6)
    # and the switch mattered: without it the stream differs after frame s
    ro2 = D.StreamRollout(model, ROLLING, cfg.switch, pipe.sigmas, (1, Z, H, W), noise)
    list(ro2.run(D.RolloutPlan(L, 3, [3, 4, 6, 7], [3] * L, None), text.encode(["a red circle"])))
    assert torch.equal(ro2.frames[s - 1], ref[s - 1]) and not torch.allclose(ro2.frames[s], ref[s])


def test_teacher_window_is_the_encoding_of_the_subclip():
    """A mid-stream window is shown to the teacher as the VAE encoding of the stream's video from the
    window's first frame's last pixel on: the first latent is re-encoded as a clip's first frame."""
    vae = tiny_vae(Z, seed=5)
    g = torch.Generator().manual_seed(0)
    hist = torch.randn(1, Z, 6, H, W, generator=g)
    new = torch.randn(1, Z, 2, H, W, generator=g).requires_grad_(True)
    spec = D.WindowSpec(1, start=2, new_start=3, end=5)
    win = D.Window(spec, torch.cat([hist[:, :, 2:3], new], dim=2), 0)
    hist = torch.cat([hist[:, :, :3], new.detach(), hist[:, :, 5:]], dim=2)
    x = D.teacher_window(vae, hist, win)
    pixels = vae.decode(hist)  # latent 2 covers pixel frames 5..8
    torch.testing.assert_close(x.detach(), vae.encode(pixels[:, :, 8:17]), rtol=1e-4, atol=1e-4)
    x.sum().backward()
    assert torch.equal(new.grad, torch.ones_like(new))
    first = D.Window(D.WindowSpec(0, 0, 0, 3), hist[:, :, :3], 0)
    assert D.teacher_window(vae, hist, first) is first.latents


def test_plan_rollout():
    d = DistillConfig(rollout_frames=12, min_new_frames=1, max_new_frames=3, switch_prob=0.5, min_switch_frame=4)
    plans = [D.plan_rollout(d, 4, 1, 4, 0, step) for step in range(200)]
    assert D.plan_rollout(d, 4, 1, 4, 0, 7) == plans[7]
    assert plans[0] != plans[1] or plans[1] != plans[2]
    switches = 0
    for p in plans:
        ends = p.window_ends
        assert ends[0] == 4 and ends[-1] == 12 and ends == sorted(set(ends))
        for w in p.windows()[1:]:
            assert w.end - w.start == 4 and 1 <= w.end - w.new_start <= 3 and w.new_start > w.start
        if p.switch_frame is not None:
            switches += 1
            assert p.switch_frame in ends and p.switch_frame >= 4
        assert len(p.exit_steps) == 12 and len(set(p.exit_steps)) == 1 and 0 <= p.exit_steps[0] < 4
    assert 60 < switches < 140
    assert {p.exit_steps[0] for p in plans} == {0, 1, 2, 3}
