import numpy as np
import torch

from streamgen.data import encode_frames, phase_spec, toy_batch
from streamgen.toyworld.evaluate import evaluate_clip
from streamgen.toyworld.render import render_batch
from streamgen.toyworld.world import AXIS_MOTIONS, TRAIN_COMBOS, sample_spec
from streamgen.vae import PCAVideoVAE


def test_phase_spec_captions_the_heading_the_clip_starts_with():
    """A clip cut at a random phase of an axis motion keeps its pixels but is captioned with the heading it has
    at its first frame: the detector (prompted with the new caption) reads its motion right, where the nominal
    caption is wrong about half the time (after a bounce "moving right" moves left)."""
    rng = np.random.default_rng(3)
    nominal, relabelled, fallbacks = [], [], 0
    while len(relabelled) < 40:
        spec, start = sample_spec(rng, "train"), int(rng.integers(1, 64))
        if spec.motion not in AXIS_MOTIONS:
            continue
        new, new_start = phase_spec(spec, start)
        assert (new.shape, new.colour, new.motion) in TRAIN_COMBOS
        if new is spec:  # the relabelled combination is held out: phase 0 of the nominal clip instead
            assert new_start == 0
            fallbacks += 1
            continue
        clip = render_batch([spec], 17, start_frame=start)[0]
        np.testing.assert_array_equal(render_batch([new], 17, start_frame=new_start)[0], clip)
        nominal.append(evaluate_clip(clip, spec).row()["motion"])
        relabelled.append(evaluate_clip(clip, new).row()["motion"])
    assert np.mean(relabelled) >= 0.95, np.mean(relabelled)
    assert np.mean(nominal) <= 0.8, np.mean(nominal)  # what the captions said before phase_spec
    assert fallbacks < 20


def test_toy_batch_returns_the_specs_and_starts_it_rendered():
    """``batch.specs`` / ``batch.start`` re-render to ``batch.latents`` (counterfactual inputs rely on it)."""
    rng = np.random.default_rng(0)
    vae = PCAVideoVAE(16)
    vae.fit(torch.from_numpy(render_batch([sample_spec(rng, "train") for _ in range(16)], 5)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
    batch = toy_batch(vae, 12, 2, seed=5, step=11, caption_dropout=0.0, paraphrase_prob=0.0)
    frames = np.stack([render_batch([s], 5, start_frame=f0)[0] for s, f0 in zip(batch.specs, batch.start)])
    torch.testing.assert_close(encode_frames(vae, frames), batch.latents)
    assert all(s.motion in c for s, c in zip(batch.specs, batch.captions))
    # the trainer's motion_weights reach the draw: weight only on diagonals, and every clip is one
    diag = toy_batch(vae, 6, 2, seed=5, step=11, motion_weights={m: 0.0 for m in AXIS_MOTIONS} | {"still": 0.0, "pulsing": 0.0})
    assert {s.motion for s in diag.specs} == {"bouncing diagonally"}
