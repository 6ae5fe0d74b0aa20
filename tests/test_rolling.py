"""The rolling schedule (Rolling Forcing joint-window denoising) in the single-process pipeline.

References computed another way: the chunkwise pipeline (T = 1), a full-sequence forward with a
BlockCausalPlan over [committed clean chunks | in-flight chunks] (the joint forward), an instrumented
denoise_step (every chunk passes every sigma once, in order), and the prompt-switch rule.
"""
import pytest
import torch

import streamgen.rollout as rollout
from streamgen.cache import JointCacheView
from streamgen.timeline import PromptEvent, Timeline
from helpers import rel_err

A = "a red circle moving right on a black background"
B = "a blue square moving up on a white background"


@pytest.fixture
def make_pipe(tiny_model_dir, minilm, monkeypatch):
    import streamgen.pipeline as P

    monkeypatch.setattr(P, "load_text_encoder", lambda *a, **k: minilm)
    return lambda *ov: P.StreamingPipeline.from_pretrained(tiny_model_dir, overrides=list(ov))


def lat(pipe, prompt, num_frames, seed=0):
    return [c.latents for c in pipe.stream(prompt, num_frames=num_frames, seed=seed)]


def test_one_step_rolling_equals_chunkwise_bit_for_bit(make_pipe):
    ov = ["sampler.denoising_steps=[1000]"]
    for extra in ([], ["cache.position_policy=absolute"]):
        chunk = make_pipe(*ov, *extra)
        roll = make_pipe(*ov, *extra, "sampler.schedule=rolling")
        a, b = chunk.generate(A, num_frames=25, seed=3), roll.generate(A, num_frames=25, seed=3)
        assert a.shape == b.shape and (a == b).all()
        la, lb = lat(chunk, A, 25, seed=3), lat(roll, A, 25, seed=3)
        assert len(la) == len(lb) == 7 and all(torch.equal(x, y) for x, y in zip(la, lb))


@pytest.mark.parametrize("overrides", [
    [],  # tiny: C=1, window 3, anchor sink 1, rebased
    ["cache.position_policy=absolute"],
    ["cache.window_frames=4", "cache.sink_frames=2", "cache.sink_policy=deep"],
    ["cache.sink_frames=0", "cache.sink_policy=none", "cache.position_policy=absolute", "cache.window_frames=-1"],
])
def test_joint_forward_equals_full_sequence_block_causal(make_pipe, monkeypatch, overrides):
    """At ticks during warm-up (in-flight sink frames) and after it (window and sink engaged), the
    rolling forward's output for the in-flight chunks equals a full-sequence forward with a
    BlockCausalPlan over [committed clean chunks | in-flight noisy chunks] with per-frame timesteps."""
    pipe = make_pipe("sampler.schedule=rolling", *overrides)
    model, T, C = pipe.model, len(pipe.sigmas), pipe.chunk_frames
    seen, real = [], model.forward

    def spy(x, t, ctx, attn=None):
        out = real(x, t, ctx, attn)
        if isinstance(attn, JointCacheView):
            seen.append((attn.frame_start, x.clone(), t.clone(), out.clone(), ctx))
        return out

    monkeypatch.setattr(model, "forward", spy)
    chunks = lat(pipe, A, 33, seed=1)  # 9 chunks, 9 + T - 1 ticks
    monkeypatch.undo()
    assert len(seen) == len(chunks) + T - 1
    clean = torch.cat(chunks, dim=2)
    checked = 0
    for tick in (1, T - 1, T + 2, len(chunks) - 1):
        fs, x, t, out, ctx = seen[tick]
        nfly = x.shape[2] // C
        assert nfly == min(tick + 1, T)
        full_x = torch.cat([clean[:, :, :fs], x], dim=2)
        full_t = torch.cat([torch.zeros(1, fs), t], dim=1)  # committed at context timestep 0
        h, w = x.shape[3], x.shape[4]
        with torch.no_grad():
            ref = model(full_x, full_t, ctx, model.block_causal_plan(pipe.config.cache, fs + x.shape[2], h, w))[:, :, fs:]
        assert rel_err(out, ref) <= 1e-5, (tick, rel_err(out, ref))
        checked += 1
    assert checked == 4
    # the reference is sensitive: a joint view without the in-flight keys (each chunk alone) differs
    fs, x, t, out, ctx = seen[T + 2]
    cache_cfg = pipe.config.cache
    with torch.no_grad():
        alone = model(x[:, :, -C:], t[:, -C:], ctx, model.block_causal_plan(cache_cfg, C, x.shape[3], x.shape[4]))
    assert rel_err(out[:, :, -C:], alone) > 1e-3


def test_rolling_deterministic_frames_and_sigma_order(make_pipe, monkeypatch):
    roll, chunk = make_pipe("sampler.schedule=rolling"), make_pipe()
    T = len(roll.sigmas)
    assert T == 4
    a, b, c = (roll.generate(A, num_frames=21, seed=s) for s in (3, 3, 4))
    assert a.shape == (21, 32, 32, 3) and (a == b).all() and not (a == c).all()
    assert not (a == chunk.generate(A, num_frames=21, seed=3)).all()
    assert [len(o.frames) for o in roll.stream(A, num_frames=14)] == [1, 4, 4, 4, 1]

    # instrument denoise_step: record (chunk, sigma) per call via the noise stream's chunk key
    log, real_step = [], rollout.denoise_step
    sig_of = {}

    def spy_step(predict, x, sigma, sigma_next, noise=None, **k):
        log.append((sig_of[id(x)], sigma))
        return real_step(predict, x, sigma, sigma_next, noise, **k)

    real_tick = rollout.rolling_tick

    def spy_tick(model, cache, ctx, xs, steps, sigmas, noises, **k):
        for j, xj in enumerate(xs):
            sig_of[id(xj)] = (k["frame_start"] // roll.chunk_frames) + j
        return real_tick(model, cache, ctx, xs, steps, sigmas, noises, **k)

    import streamgen.pipeline as P

    monkeypatch.setattr(rollout, "denoise_step", spy_step)
    monkeypatch.setattr(P, "rolling_tick", spy_tick)
    n = len([o for o in roll.stream(A, num_frames=21, seed=3)])
    assert n == 6
    per_chunk = {}
    for ch, s in log:
        per_chunk.setdefault(ch, []).append(s)
    assert per_chunk == {ch: roll.sigmas for ch in range(n)}  # every sigma once, in order
    assert len(log) == n * T
    # one joint forward per tick: warm-up grows the window, the drain shrinks it; within a tick
    # chunk c + j is at sigma index T - 1 - j (per-frame timesteps, oldest first)
    monkeypatch.undo()
    joint, real_fwd = [], roll.model.forward

    def spy_fwd(x, t, ctx, attn=None):
        if isinstance(attn, JointCacheView):
            joint.append(t[0].tolist())
        return real_fwd(x, t, ctx, attn)

    monkeypatch.setattr(roll.model, "forward", spy_fwd)
    list(roll.stream(A, num_frames=21, seed=3))
    ms = [s * 1000 for s in roll.sigmas]
    assert len(joint) == n + T - 1
    assert [len(t) for t in joint] == [1, 2, 3, 4, 4, 4, 3, 2, 1]
    assert joint[0] == pytest.approx(ms[:1]) and joint[T - 1] == pytest.approx(ms[::-1])
    assert joint[-1] == pytest.approx(ms[-1:]) and joint[-2] == pytest.approx(ms[:-3:-1])


def test_prompt_switch_rule(make_pipe, monkeypatch):
    """A switch at chunk k applies at the tick chunk k enters: chunks finished before that tick are
    untouched; the T - 1 older in-flight chunks finish under the new prompt; re-cache runs at that tick
    (once); set_prompt after output n equals a timeline switch at the next chunk to enter (n + T)."""
    pipe = make_pipe("sampler.schedule=rolling")
    T, k = len(pipe.sigmas), 5
    plain = lat(pipe, A, 33, seed=1)
    calls = []
    real_recache = pipe.recache
    monkeypatch.setattr(pipe, "recache", lambda: (calls.append(pipe.state.next_enter), real_recache())[1])
    tl = Timeline((PromptEvent(0, A), PromptEvent(1 + 4 * (k - 1), B)))  # chunk k starts at pixel frame 1 + 4(k-1)
    outs = list(pipe.stream(tl, num_frames=33, seed=1))
    assert calls == [k]  # recache once, when chunk k enters (before it is appended)
    sw = [o.latents for o in outs]
    first_touched = k - T + 1  # oldest in-flight chunk at the switch tick
    for i in range(first_touched):
        assert torch.equal(sw[i], plain[i]), i
    for i in range(first_touched, len(sw)):
        assert rel_err(sw[i], plain[i]) > 1e-4, i
    assert [o.prompt for o in outs] == [A] * k + [B] * (len(outs) - k)
    monkeypatch.undo()
    stream = pipe.stream(A, num_frames=33, seed=1)
    got = [next(stream).latents for _ in range(2)]
    pipe.set_prompt(B)  # after output 1 the next chunk to enter is 1 + T
    got += [o.latents for o in stream]
    tl2 = Timeline((PromptEvent(0, A), PromptEvent(1 + 4 * (1 + T - 1), B)))
    ref = lat(pipe, tl2, 33, seed=1)
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("overrides", [[], ["cache.position_policy=absolute"]])
def test_rolling_stream_equals_hand_written_full_sequence_loop(make_pipe, overrides):
    """The whole rolling stream against a loop written without the cache: per tick, one full-sequence
    forward with a BlockCausalPlan over [finished clean chunks | in-flight chunks], then denoise_step per
    chunk with the chunkwise noise keys seeded_noise(shape, seed, chunk, _INIT + i)."""
    from streamgen.pipeline import _INIT
    from streamgen.sampler import denoise_step, seeded_noise

    pipe = make_pipe("sampler.schedule=rolling", *overrides)
    got = lat(pipe, A, 25, seed=2)  # 7 chunks
    model, sig, T, C = pipe.model, pipe.sigmas, len(pipe.sigmas), pipe.chunk_frames
    shape = pipe.latent_shape()
    ctx = model.encode_context(pipe._text(A))
    n, done, fly = len(got), [], []  # fly: [chunk, x, step]
    with torch.no_grad():
        while len(done) < n:
            if len(done) + len(fly) < n:
                c = len(done) + len(fly)
                fly.append([c, seeded_noise(shape, 2, c, _INIT), 0])
            fs = len(done) * C
            x = torch.cat([*done, *[f[1] for f in fly]], dim=2)
            t = torch.tensor([0.0] * fs + [sig[f[2]] * 1000 for f in fly for _ in range(C)])[None]
            flow = model(x, t, ctx, model.block_causal_plan(pipe.config.cache, x.shape[2], shape[3], shape[4]))[:, :, fs:]
            for j, f in enumerate(fly):
                i, last = f[2], f[2] == T - 1
                x0, f[1] = denoise_step(lambda *_: flow[:, :, j * C : (j + 1) * C], f[1], sig[i],
                                        None if last else sig[i + 1], None if last else seeded_noise(shape, 2, f[0], _INIT + i + 1))
                f[2] += 1
            if fly[0][2] == T:
                done.append(fly.pop(0)[1])
    for i, (g, r) in enumerate(zip(got, done)):
        assert rel_err(g, r) <= 1e-4, (i, rel_err(g, r))


@pytest.mark.parametrize("overrides", [
    [],
    ["cache.position_policy=absolute"],
    ["cache.window_frames=4", "cache.sink_frames=2", "cache.sink_policy=deep"],
    ["cache.sink_frames=0", "cache.sink_policy=none", "cache.position_policy=absolute", "cache.window_frames=-1"],
])
def test_joint_forward_by_chunk_micro_batches(make_pipe, monkeypatch, overrides):
    """The pipeline-parallel form of a tick: one forward per in-flight chunk (oldest first, one sigma each)
    through ``JointCacheView.chunk(j)`` equals the joint forward's rows of that chunk."""
    pipe = make_pipe("sampler.schedule=rolling", *overrides)
    model, C = pipe.model, pipe.chunk_frames
    checked, real = [], model.forward

    def spy(x, t, ctx, attn=None):
        out = real(x, t, ctx, attn)
        if isinstance(attn, JointCacheView):
            fresh = attn.cache.joint_view(attn.frame_start, attn.num_chunks)
            for j in range(attn.num_chunks):
                rows = slice(j * C, (j + 1) * C)
                got = real(x[:, :, rows], t[:, rows], ctx, fresh.chunk(j))
                assert rel_err(got, out[:, :, rows]) <= 1e-5, (attn.frame_start, j, rel_err(got, out[:, :, rows]))
            checked.append(attn.num_chunks)
        return out

    monkeypatch.setattr(model, "forward", spy)
    lat(pipe, A, 33, seed=1)
    assert max(checked) == len(pipe.sigmas) and min(checked) == 1
