"""A tiny deterministic pipeline for the pipeline-parallel tests: every rank (thread or process)
builds the same one from a seed."""
import dataclasses
import zlib

import torch

from streamgen.config import CacheConfig, ModelConfig, SamplerConfig, StreamGenConfig, SwitchConfig, VideoConfig
from streamgen.model import CausalWanModel
from streamgen.pipeline import StreamingPipeline
from streamgen.timeline import Timeline
from streamgen.vae import PCAVideoVAE
from helpers import randomize_, tiny_pca_vae

PP_MODEL = ModelConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
                       freq_dim=16, ffn_dim=32, num_layers=6)
PP_CACHE = CacheConfig(chunk_frames=2, window_frames=6, sink_frames=2, sink_policy="anchor", position_policy="rebased")
A, B = "a red circle moving right", "a blue square bouncing"
NUM_FRAMES = 5 + 8 * 6  # 7 chunks of 2 latent frames
SWITCH_FRAME = 21  # chunk 3


class HashText:
    """Text encoder stand-in: seeded random token states per prompt (identical in every process)."""

    dim, max_length = 16, 6

    def encode(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else prompts
        out = []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            out.append(torch.randn(self.max_length, self.dim, generator=g))
        return torch.stack(out)


def pca_vae(z_dim: int = 4, seed: int = 0) -> PCAVideoVAE:
    """PCA VAE with random orthonormal bases."""
    return tiny_pca_vae(z_dim, seed, scale=0.3)


def tiny_pp_pipeline(seed: int = 0, mode: str = "recache", context_timestep: float = 0.0, cache: CacheConfig = PP_CACHE,
                     steps=(1000, 750, 500, 250), schedule: str = "chunkwise", prediction: str = "flow",
                     pooled_text: bool = False) -> StreamingPipeline:
    model_cfg = dataclasses.replace(PP_MODEL, prediction=prediction, pooled_text=pooled_text)
    cfg = StreamGenConfig(model=model_cfg, cache=cache,
                          sampler=SamplerConfig(denoising_steps=list(steps), shift=5.0, context_timestep=context_timestep,
                                                schedule=schedule),
                          switch=SwitchConfig(mode=mode, blend_chunks=2), video=VideoConfig(height=32, width=32, fps=8))
    cfg.validate()
    model = randomize_(CausalWanModel(model_cfg), std=0.2, seed=seed).eval()
    return StreamingPipeline(model, pca_vae(PP_MODEL.in_channels, seed), HashText(), cfg)


def switch_timeline(fps: int = 8) -> Timeline:
    return Timeline.from_entries([{"at": 0, "prompt": A}, {"frame": SWITCH_FRAME, "prompt": B}], fps)


def reference(pipe: StreamingPipeline, timeline, seed: int = 3):
    """Single-process latents and frames."""
    outs = list(pipe.stream(timeline, num_frames=NUM_FRAMES, seed=seed))
    return [o.latents for o in outs], [o.frames for o in outs]
