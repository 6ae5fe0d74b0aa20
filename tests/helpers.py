"""Shared tiny models and inputs for tests."""
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
