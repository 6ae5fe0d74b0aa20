"""The streaming eval suite scores an oracle (ground-truth renders) as perfect and a random model as poor."""
import numpy as np
import pytest

from streamgen.config import StreamGenConfig
from streamgen.eval_suite import pipeline_suite
from streamgen.timeline import Timeline
from streamgen.toyworld.captions import parse_caption
from streamgen.toyworld.render import render_segments
from streamgen.toyworld.world import ClipSpec, sample_spec


class OraclePipe:
    """Answers every prompt / timeline with the renderer itself (what a perfect model would draw)."""

    def __init__(self):
        self.config = StreamGenConfig()

    def generate(self, target, num_frames, seed=0):
        tl = Timeline.single(target) if isinstance(target, str) else target
        rng = np.random.default_rng(seed)
        start = sample_spec(rng, "any")
        segments, spec = [], None
        for i, e in enumerate(tl.events):
            a = parse_caption(e.prompt)
            kw = dict(shape=a.shape, colour=a.colour, background=a.background, motion=a.motion, speed=a.speed)
            spec = ClipSpec(**kw, size=start.size, x=start.x, y=start.y, dir_x=start.dir_x, dir_y=start.dir_y) if spec is None \
                else spec.with_attributes(**kw)
            end = tl.events[i + 1].frame if i + 1 < len(tl.events) else num_frames
            segments.append((end - e.frame, spec))
        return render_segments(segments)


def test_oracle_scores_perfectly():
    rows, table = pipeline_suite(OraclePipe(), num_prompts=3, seconds=2.0, label="oracle")
    assert [r["set"] for r in rows] == ["train/canonical", "train/paraphrase", "heldout/canonical", "switch (1 attribute)"]
    for r in rows:
        for k in ("colour", "shape", "background", "presence"):
            assert r[k] >= 0.99, (r["set"], k, r[k])
    sw = rows[-1]
    assert sw["switch_missed"] == 0 and sw["switch_resp_median"] <= 2
    assert sw["switch_jump_px"] is not None and sw["switch_jump_px"] <= 5  # position continuous
    assert "oracle" in table


def test_random_model_scores_poorly(tiny_pipe):
    rows, _ = pipeline_suite(tiny_pipe, num_prompts=2, seconds=1.0, label="random")
    assert all((r["colour"] or 0) < 0.5 for r in rows)


def test_text_gain_is_zero_without_conditioning_and_nonzero_with_it(minilm):
    """The teacher eval's text_gain: exactly 0 when the cross-attention is cut (no path from the
    prompt), non-zero when the prompt reaches the output."""
    import torch

    from streamgen.config import ModelConfig
    from streamgen.eval_suite import text_gain
    from streamgen.model import CausalWanModel
    from streamgen.vae import load_vae
    from helpers import randomize_

    vae = load_vae("assets/vae")
    cfg = ModelConfig(num_attention_heads=2, attention_head_dim=16, in_channels=vae.z_dim, out_channels=vae.z_dim,
                      text_dim=384, freq_dim=32, ffn_dim=64, num_layers=2)
    torch.manual_seed(0)
    model = randomize_(CausalWanModel(cfg)).eval()
    assert abs(text_gain(model, vae, minilm, 2, batch_size=2)) > 1e-4
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn2.to_out[0].weight.zero_()
            blk.attn2.to_out[0].bias.zero_()
    assert text_gain(model, vae, minilm, 2, batch_size=2) == 0.0
