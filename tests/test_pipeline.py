"""Streaming pipeline: determinism, the single step function, prompt switches and re-cache."""
import numpy as np
import pytest
import torch

import streamgen.rollout as rollout
import streamgen.sampler as sampler
from streamgen.pipeline import _INIT
from streamgen.sampler import denoise_step, seeded_noise
from streamgen.timeline import PromptEvent, Timeline, chunk_of_frame
from helpers import rel_err

A = "a red circle moving right on a black background"
B = "a blue square moving up on a white background"


def latents_of(pipe, prompt, n_chunks, seed=0):
    pipe.start(prompt if isinstance(prompt, str) else prompt.events[0].prompt, seed)
    return [pipe.next_chunk().latents for _ in range(n_chunks)]


def test_same_seed_same_video_bit_for_bit(tiny_pipe):
    a = tiny_pipe.generate(A, num_frames=21, seed=3)
    b = tiny_pipe.generate(A, num_frames=21, seed=3)
    c = tiny_pipe.generate(A, num_frames=21, seed=4)
    assert a.shape == (21, 32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_frame_count_and_chunk_geometry(tiny_pipe):
    chunks = list(tiny_pipe.stream(A, num_frames=14))
    assert [len(c.frames) for c in chunks] == [1, 4, 4, 4, 1]  # 1 + 4k causal VAE, last chunk cut
    assert [c.first_frame for c in chunks] == [0, 1, 5, 9, 13]


def test_step_function_is_the_only_denoising_path(tiny_pipe, monkeypatch):
    """Every denoising forward of the model happens inside denoise_step; the only other forward is the
    cache write. And the pipeline, the rollout helper and a hand-written loop over denoise_step agree."""
    pipe = tiny_pipe
    inside = {"depth": 0}
    calls = {"denoise": 0, "write": 0, "other": 0}
    real_step, real_fwd = sampler.denoise_step, pipe.model.forward_cached

    def counting_step(*a, **k):
        inside["depth"] += 1
        try:
            return real_step(*a, **k)
        finally:
            inside["depth"] -= 1

    def counting_fwd(*a, write=False, **k):
        calls["write" if write else ("denoise" if inside["depth"] else "other")] += 1
        return real_fwd(*a, write=write, **k)

    monkeypatch.setattr(rollout, "denoise_step", counting_step)
    monkeypatch.setattr(pipe.model, "forward_cached", counting_fwd)
    got = latents_of(pipe, A, 4, seed=5)
    steps = len(pipe.sigmas)
    assert calls == {"denoise": 4 * steps, "write": 4, "other": 0}

    # reference 1: the rollout helper driven by hand
    monkeypatch.undo()
    model, shape = pipe.model, pipe.latent_shape()
    ctx = model.encode_context(pipe._text(A))
    cache = model.new_cache(pipe.config.cache, 1, shape[3], shape[4])
    ref1 = []
    for c in range(4):
        x0 = rollout.generate_chunk(model, cache, ctx, pipe.sigmas, lambda i: seeded_noise(shape, 5, c, _INIT + i))
        rollout.commit_chunk(model, cache, ctx, x0, 0.0)
        ref1.append(x0)
    # reference 2: denoise_step called directly, step by step
    cache = model.new_cache(pipe.config.cache, 1, shape[3], shape[4])
    ref2 = []
    with torch.no_grad():
        for c in range(4):
            x = seeded_noise(shape, 5, c, _INIT)
            for i, s in enumerate(pipe.sigmas):
                nxt = pipe.sigmas[i + 1] if i + 1 < steps else None
                x0, x = denoise_step(lambda x, t: model.forward_cached(x, t, ctx, cache), x, s, nxt,
                                     seeded_noise(shape, 5, c, _INIT + i + 1) if nxt else None)
            model.forward_cached(x0, torch.tensor(0.0), ctx, cache, write=True)
            ref2.append(x0)
    for g, r1, r2 in zip(got, ref1, ref2):
        assert torch.equal(g, r1) and torch.equal(g, r2)


def test_switch_changes_conditioning_from_the_chunk_containing_the_frame(tiny_pipe):
    fps = tiny_pipe.config.video.fps
    for frame in (5, 8, 9):  # chunk 2 covers pixel frames 5..8, chunk 3 starts at 9
        tl = Timeline.from_entries([{"at": 0, "prompt": A}, {"frame": frame, "prompt": B}], fps)
        switched = [c.latents for c in tiny_pipe.stream(tl, num_frames=21, seed=1)]
        plain = [c.latents for c in tiny_pipe.stream(A, num_frames=21, seed=1)]
        k = chunk_of_frame(frame, tiny_pipe.chunk_frames)
        assert k == (2 if frame <= 8 else 3)
        for i in range(k):
            assert torch.equal(switched[i], plain[i]), (frame, i)
        assert rel_err(switched[k], plain[k]) > 1e-3


def test_recache_equals_fresh_prefill_under_new_prompt(tiny_pipe):
    pipe = tiny_pipe
    pipe.start(A, seed=2)
    for _ in range(6):  # past the window (3 frames) so eviction has happened
        pipe.next_chunk()
    st = pipe.state
    pipe._apply_switch(B)  # recache mode
    got = st.cache
    # a fresh run: new cache, prefill the same kept clean latents (sink, then window) under B
    shape = pipe.latent_shape()
    fresh = pipe.model.new_cache(pipe.config.cache, 1, shape[3], shape[4])
    ctx = pipe.model.encode_context(pipe._text(B))
    for frame_start, lat in st.sink_chunks + list(st.recent_chunks):
        rollout.commit_chunk(pipe.model, fresh, ctx, lat, 0.0, frame_start=frame_start)
    assert [f for f, _ in st.recent_chunks] == [4, 5]  # window of 3 frames = 2 past chunks
    assert got.state == fresh.state
    assert torch.allclose(got.k, fresh.k) and torch.allclose(got.v, fresh.v)
    assert torch.allclose(got.sink_k, fresh.sink_k) and torch.allclose(got.sink_v, fresh.sink_v)
    # and the re-cache really changed the cache (the prompt matters)
    pipe.start(A, seed=2)
    for _ in range(6):
        pipe.next_chunk()
    assert not torch.allclose(pipe.state.cache.k, got.k)


def test_switch_modes_differ(tiny_pipe):
    tl = Timeline((PromptEvent(0, A), PromptEvent(9, B)))
    outs = {}
    for mode in ("recache", "none", "blend"):
        tiny_pipe.config.switch.mode = mode
        outs[mode] = torch.cat([c.latents for c in tiny_pipe.stream(tl, num_frames=25, seed=0)], dim=2)
    tiny_pipe.config.switch.mode = "recache"
    assert torch.equal(outs["recache"][:, :, :3], outs["none"][:, :, :3])
    assert rel_err(outs["recache"], outs["none"]) > 1e-4
    assert rel_err(outs["blend"], outs["none"]) > 1e-4


def test_live_set_prompt_takes_effect_next_chunk(tiny_pipe):
    pipe = tiny_pipe
    stream = pipe.stream(A, num_frames=25, seed=0)
    got = [next(stream).latents, next(stream).latents]
    pipe.set_prompt(B)
    got += [c.latents for c in stream]
    tl = Timeline((PromptEvent(0, A), PromptEvent(5, B)))  # chunk 2 starts at pixel frame 5
    ref = [c.latents for c in pipe.stream(tl, num_frames=25, seed=0)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    with pytest.raises(ValueError, match="non-empty"):
        pipe.set_prompt("  ")


def test_bfloat16_close_to_float32(tiny_model_dir, minilm, monkeypatch):
    import streamgen.pipeline as P

    monkeypatch.setattr(P, "load_text_encoder", lambda *a, **k: minilm)
    f32 = P.StreamingPipeline.from_pretrained(tiny_model_dir)
    bf16 = P.StreamingPipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    a = torch.cat([c.latents for c in f32.stream(A, num_frames=9, seed=0)], dim=2)
    b = torch.cat([c.latents for c in bf16.stream(A, num_frames=9, seed=0)], dim=2).float()
    assert rel_err(b, a) < 0.1  # bf16 has ~3 significant digits; errors compound over steps
