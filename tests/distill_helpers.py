"""Tiny models, VAE, text encoder and run directories for the distillation tests."""
from __future__ import annotations

import copy
import zlib
from pathlib import Path

import torch

from streamgen.config import CacheConfig, ModelConfig, SwitchConfig
from streamgen.model import CausalWanModel
from helpers import randomize_, tiny_pca_vae

TINY = ModelConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=16,
                   freq_dim=16, ffn_dim=32, num_layers=2)
ROLLING = CacheConfig(chunk_frames=1, window_frames=3, sink_frames=1, sink_policy="anchor", position_policy="rebased")


def randomized(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm gains included), so no term hides behind an init of 0 or 1."""
    return randomize_(model, std=std, seed=seed)


def tiny(seed: int = 0, config: ModelConfig = TINY, std: float = 0.3) -> CausalWanModel:
    return randomized(CausalWanModel(copy.deepcopy(config)), std, seed).eval()


def tiny_vae(z_dim: int = 4, seed: int = 0):
    """PCA VAE with random orthonormal bases: exact linear encode/decode geometry, no fitting."""
    return tiny_pca_vae(z_dim, seed, scale=0.2)


class StubText:
    """Deterministic random token states per prompt (no model download, any text_dim)."""

    def __init__(self, dim: int = 16, max_length: int = 5):
        self.dim, self.max_length = dim, max_length

    def encode(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return torch.stack([torch.randn(self.max_length, self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                            for p in prompts])


def switch(mode: str = "recache") -> SwitchConfig:
    return SwitchConfig(mode=mode, blend_chunks=2)


SMOKE_YAML = """
model: {{num_attention_heads: 2, attention_head_dim: 8, in_channels: 8, out_channels: 8, text_dim: 384,
        freq_dim: 16, ffn_dim: 32, num_layers: 2}}
cache: {{chunk_frames: 1, window_frames: 3, sink_frames: 1, sink_policy: anchor, position_policy: rebased}}
sampler: {{denoising_steps: [1000, 750, 500, 250], shift: 3.0}}
switch: {{mode: recache}}
video: {{height: 32, width: 32, fps: 16}}
vae_path: {root}/vae
train: {{run_dir: {root}/run, steps: 8, batch_size: 1, lr: 1.0e-3, warmup_steps: 0, latent_frames: 3,
        log_every: 1, ckpt_every: 2, eval_every: 8, eval_prompts: 1, ema_decay: 0.9}}
ode: {{run_dir: {root}/ode_run, steps: 3, batch_size: 2, lr: 1.0e-3, warmup_steps: 0, latent_frames: 3,
      log_every: 1, ckpt_every: 2, eval_every: 0}}
distill: {{teacher: {root}/teacher.safetensors, init_generator: "", ode_pairs_dir: {root}/pairs, ode_num_pairs: 3,
          ode_teacher_steps: 4, ode_shard_size: 2, lr_critic: 1.0e-3, dfake_gen_update_ratio: 2, ema_start_step: 2,
          rollout_frames: 6, min_new_frames: 1, max_new_frames: 2, switch_prob: 0.5, min_switch_frame: 3,
          reward_beta: {reward_beta}, eval_frames: 9}}
"""


def write_smoke_setup(root: Path, reward_beta: float = 0.0) -> Path:
    """A random tiny teacher, a tiny VAE and a config for ``train/ode_init.py`` / ``train/distill.py``."""
    from safetensors.torch import save_file

    from streamgen.config import DistillRunConfig, load_config

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "distill.yaml"
    cfg_path.write_text(SMOKE_YAML.format(root=root, reward_beta=reward_beta))
    cfg = load_config([cfg_path], schema=DistillRunConfig)
    teacher = randomized(CausalWanModel(cfg.model), 0.2, seed=1)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(root / "teacher.safetensors"))
    tiny_vae(cfg.model.in_channels, seed=2).save(root / "vae")
    return cfg_path
