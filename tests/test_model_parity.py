"""Our model with full attention equals diffusers' stock WanTransformer3DModel with the same weights."""
import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel

from helpers import TINY_CONFIGS, rel_err, tiny_model


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_matches_diffusers(name):
    ours = tiny_model(name)
    ref = WanTransformer3DModel(**ours.diffusers_config()).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # same keys, same shapes
    c = ours.config
    x = torch.randn(2, c.in_channels, 5, 8, 6)
    t = torch.tensor([311.0, 742.0])
    text = torch.randn(2, 7, c.text_dim)
    with torch.no_grad():
        expected = ref(x, t, text).sample
        got = ours(x, t, text)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-5


def test_state_dict_keys_equal_diffusers():
    ours = tiny_model("tiny_a")
    ref = WanTransformer3DModel(**ours.diffusers_config())
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_per_frame_timesteps_equal_separate_calls_without_cross_frame_attention():
    """Per-frame timesteps: a [B, F] timestep that is constant equals the scalar timestep."""
    m = tiny_model("tiny_a")
    x = torch.randn(1, 4, 3, 4, 4)
    text = torch.randn(1, 5, 16)
    with torch.no_grad():
        a = m(x, torch.tensor([500.0]), text)
        b = m(x, torch.full((1, 3), 500.0), text)
        c = m(x, torch.tensor([[500.0, 100.0, 900.0]]), text)
    assert rel_err(b, a) <= 1e-6
    assert rel_err(c, a) > 1e-3  # the per-frame values really change the output


def test_bad_timestep_shape_is_a_clear_error():
    m = tiny_model("tiny_a")
    with pytest.raises(ValueError, match="timestep must be"):
        m(torch.randn(1, 4, 3, 4, 4), torch.zeros(1, 2), torch.randn(1, 5, 16))
