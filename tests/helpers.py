"""Shared tiny models and inputs for tests."""
import dataclasses

import torch

from streamgen.config import ModelConfig
from streamgen.model import CausalWanModel

TINY_CONFIGS = {
    # two shapes with different head splits of the RoPE channels
    "tiny_a": ModelConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
                          freq_dim=16, ffn_dim=32, num_layers=2),
    "tiny_b": ModelConfig(num_attention_heads=3, attention_head_dim=16, in_channels=3, out_channels=5, text_dim=8,
                          freq_dim=32, ffn_dim=24, num_layers=3, cross_attn_norm=False),
}
# tiny_a with one token per latent position (the toy teacher's patch-size A/B, bench/RESULTS.md session 13)
TINY_CONFIGS["tiny_p1"] = dataclasses.replace(TINY_CONFIGS["tiny_a"], patch_size=(1, 1, 1))


def randomize_(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (norm gains included) random values so no term hides behind an init of 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_model(name: str = "tiny_a", seed: int = 0) -> CausalWanModel:
    return randomize_(CausalWanModel(TINY_CONFIGS[name]), seed=seed).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def tiny_pca_vae(z_dim: int = 8, seed: int = 0, scale: float = 0.2):
    """A PCA VAE with random orthonormal bases (no fitting): exact linear encode/decode geometry."""
    from streamgen.vae import PCAVideoVAE

    vae = PCAVideoVAE(z_dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("first_basis", "basis"):
            b = getattr(vae, name)
            q, _ = torch.linalg.qr(torch.randn(b.shape[1], b.shape[0], generator=g))
            b.copy_(q.T)
        vae.scale.fill_(scale)
        vae.first_scale.fill_(scale)
    return vae.eval()


TINY_PIPELINE_YAML = """
model: {num_attention_heads: 2, attention_head_dim: 12, in_channels: 8, out_channels: 8, text_dim: 384,
        freq_dim: 16, ffn_dim: 32, num_layers: 2}
cache: {chunk_frames: 1, window_frames: 3, sink_frames: 1, sink_policy: anchor, position_policy: rebased}
sampler: {denoising_steps: [1000, 750, 500, 250], shift: 3.0}
video: {height: 32, width: 32, fps: 16}
"""


def write_tiny_model_dir(path, seed: int = 0, yaml_text: str = TINY_PIPELINE_YAML):
    """A complete model directory (config, random weights, VAE) that `StreamingPipeline.from_pretrained` loads."""
    from pathlib import Path

    from safetensors.torch import save_file

    from streamgen.config import load_config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml_text)
    cfg = load_config([path / "config.yaml"])
    model = randomize_(CausalWanModel(cfg.model), std=0.2, seed=seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "transformer.safetensors"))
    tiny_pca_vae(cfg.model.in_channels, seed).save(path / "vae")
    return path
