"""Tests for streamgen.loaders: every on-disk format round-trips to bit-identical model outputs.

The native-Wan checkpoints are built with a mapping written here independently of the library
(explicit module tables taken from Wan2.1's wan/modules/model.py names), so a wrong rename in
either place makes the output comparison fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from streamgen import loaders as L
from streamgen.loaders import CheckpointFormatError, detect_format, load_wan_weights

CFG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
)

# diffusers module name -> native Wan2.1 module name (WanModel / CausalWanModel attribute paths)
TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "proj_out": "head.head",
}
BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # diffusers' affine cross-attn norm is Wan's norm3 (norm1/norm2 have no params)
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
# Linear layers of a CausalWanAttentionBlock: what LongLive's configure_lora_for_model targets.
LORA_TARGETS = [m for m in BLOCK_MODULES if "norm" not in m]


def diffusers_to_wan_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key == "scale_shift_table":
            new = "head.modulation"
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            idx, rest = m.groups()
            if rest == "scale_shift_table":
                new = f"blocks.{idx}.modulation"
            else:
                mod, param = rest.rsplit(".", 1)
                new = f"blocks.{idx}.{BLOCK_MODULES[mod]}.{param}"
        else:
            mod, param = key.rsplit(".", 1)
            new = f"{TOP_MODULES[mod]}.{param}"
        assert new not in out
        out[new] = value.clone()
    return out


def wrap(sd, prefix="model."):
    return {prefix + k: v for k, v in sd.items()}


def make_model(seed: int, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**CFG, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():  # every tensor random and distinct (no all-ones norms, no zero biases)
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def fresh(**overrides) -> WanTransformer3DModel:
    torch.manual_seed(1234)
    return WanTransformer3DModel(**{**CFG, **overrides}).eval()


def run(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=ctx, return_dict=False)[0]


@pytest.fixture(scope="module")
def src():
    return make_model(1)


@pytest.fixture(scope="module")
def other():
    return make_model(2)


def sd_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_outputs(loaded, reference):
    diff = (run(loaded) - run(reference)).abs().max().item()
    assert diff <= 1e-6, diff


def test_reference_models_differ(src, other):
    # Otherwise "outputs identical" would prove nothing.
    assert (run(src) - run(other)).abs().max().item() > 1e-2
    assert (run(fresh()) - run(src)).abs().max().item() > 1e-2


def test_independent_mapping_produces_native_wan_names(src):
    wan = diffusers_to_wan_original(sd_of(src))
    for key in ["blocks.0.self_attn.q.weight", "blocks.1.cross_attn.o.bias", "blocks.0.self_attn.norm_k.weight",
                "blocks.0.norm3.weight", "blocks.1.ffn.2.weight", "blocks.0.modulation", "head.head.weight",
                "head.modulation", "time_embedding.0.weight", "time_projection.1.bias", "text_embedding.2.weight",
                "patch_embedding.weight"]:
        assert key in wan
    assert len(wan) == len(src.state_dict())


# ----------------------------------------------------------------------------------- formats


def _save_diffusers_dir(tmp, src, other):
    src.save_pretrained(tmp / "Wan-Diffusers")
    return tmp / "Wan-Diffusers", "diffusers", "generator_ema", src


def _save_diffusers_sharded(tmp, src, other):
    src.save_pretrained(tmp / "sharded", max_shard_size="20KB")
    assert list((tmp / "sharded").glob("*.safetensors.index.json"))
    assert len(list((tmp / "sharded").glob("*.safetensors"))) > 1
    return tmp / "sharded", "diffusers", "generator_ema", src


def _save_diffusers_bin_sharded(tmp, src, other):
    src.save_pretrained(tmp / "bin", safe_serialization=False, max_shard_size="20KB")
    assert list((tmp / "bin").glob("*.bin.index.json"))
    return tmp / "bin", "diffusers", "generator_ema", src


def _save_diffusers_pipeline_root(tmp, src, other):
    root = tmp / "pipe"
    src.save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root, "diffusers", "generator_ema", src


def _save_wan_native_dir(tmp, src, other):
    # Wan-AI/Wan2.1-T2V-1.3B layout: native names in diffusion_pytorch_model.safetensors, next to T5/VAE .pth
    d = tmp / "Wan2.1-T2V-1.3B"
    d.mkdir()
    save_file(diffusers_to_wan_original(sd_of(src)), str(d / "diffusion_pytorch_model.safetensors"))
    torch.save({"decoder.middle.0.residual.0.gamma": torch.ones(3)}, d / "Wan2.1_VAE.pth")
    (d / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24, "num_layers": 2}))
    return d, "wan-original", "generator_ema", src


def _save_wan_native_sharded(tmp, src, other):
    d = tmp / "Wan2.1-T2V-14B"
    d.mkdir()
    wan = diffusers_to_wan_original(sd_of(src))
    keys = sorted(wan)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in halves.items():
        save_file({k: wan[k] for k in ks}, str(d / name))
        weight_map.update({k: name for k in ks})
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d, "wan-original", "generator_ema", src


def _save_comfy_prefixed(tmp, src, other):
    path = tmp / "wan2.1_t2v_1.3B_fp32.safetensors"
    save_file(wrap(diffusers_to_wan_original(sd_of(src)), "model.diffusion_model."), str(path))
    return path, "wan-original", "generator_ema", src


def _self_forcing_container(src, other, ema_prefix="model."):
    return {
        "generator": wrap(diffusers_to_wan_original(sd_of(other))),
        "critic": wrap(diffusers_to_wan_original(sd_of(make_model(3)))),
        "generator_ema": wrap(diffusers_to_wan_original(sd_of(src)), ema_prefix),
    }


def _save_self_forcing_ema(tmp, src, other):
    path = tmp / "checkpoint_model_000600" / "model.pt"
    path.parent.mkdir()
    torch.save(_self_forcing_container(src, other), path)
    return path, "self-forcing", "generator_ema", src


def _save_self_forcing_raw_generator(tmp, src, other):
    path = tmp / "self_forcing_dmd.pt"
    torch.save(_self_forcing_container(src, other), path)
    return path, "self-forcing", "generator", other


def _save_self_forcing_fsdp_names(tmp, src, other):
    # EMA_FSDP shadow names can carry FSDP / activation-checkpoint wrapper infixes.
    ckpt = _self_forcing_container(src, other)
    ckpt["generator_ema"] = {
        re.sub(r"^model\.blocks\.(\d+)\.", r"model.blocks.\1._fsdp_wrapped_module._checkpoint_wrapped_module.", k): v
        for k, v in ckpt["generator_ema"].items()
    }
    assert any("_fsdp_wrapped_module" in k for k in ckpt["generator_ema"])
    path = tmp / "ema_fsdp.pt"
    torch.save(ckpt, path)
    return path, "self-forcing", "generator_ema", src


def _save_self_forcing_flat_safetensors(tmp, src, other):
    # a trainer container flattened into one safetensors file ("generator_ema.model.blocks...")
    flat = {}
    for entry, sd in _self_forcing_container(src, other).items():
        flat.update(wrap(sd, entry + "."))
    path = tmp / "model.safetensors"
    save_file(flat, str(path))
    return path, "self-forcing", "generator_ema", src


def _save_causvid(tmp, src, other):
    # CausVid: {"generator": wrapper sd, "critic": wrapper sd}; here torch.compile'd generator names
    ckpt = {"generator": wrap(wrap(diffusers_to_wan_original(sd_of(src))), "_orig_mod."),
            "critic": wrap(diffusers_to_wan_original(sd_of(other)))}
    path = tmp / "causvid_model.pt"
    torch.save(ckpt, path)
    return path, "causvid", "generator_ema", src  # no EMA entry: falls back to generator


def _longlive_container(src, other):
    return {
        "generator": wrap(wrap(diffusers_to_wan_original(sd_of(src))), "module."),
        "critic": wrap(diffusers_to_wan_original(sd_of(other))),
        "generator_optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                                "param_groups": [{"lr": 2e-6, "betas": (0.0, 0.999), "params": [0]}]},
        "critic_optimizer": {"state": {}, "param_groups": [{"lr": 4e-7, "params": []}]},
        "step": 1200,
    }


def _save_longlive(tmp, src, other):
    path = tmp / "longlive_base.pt"
    torch.save(_longlive_container(src, other), path)
    return path, "longlive", "generator_ema", src


def _save_longlive_legacy_pickle(tmp, src, other):
    path = tmp / "longlive_legacy.pth"
    torch.save(_longlive_container(src, other), path, _use_new_zipfile_serialization=False)
    return path, "longlive", "generator", src


def _save_reward_forcing(tmp, src, other):
    # Reward-Forcing-T2V-1.3B/rewardforcing.pt: inference.py does generator.load_state_dict(torch.load(p))
    path = tmp / "rewardforcing.pt"
    torch.save(wrap(diffusers_to_wan_original(sd_of(src))), path)
    return path, "wan-wrapper", "generator_ema", src


BUILDERS = [
    _save_diffusers_dir, _save_diffusers_sharded, _save_diffusers_bin_sharded, _save_diffusers_pipeline_root, _save_wan_native_dir,
    _save_wan_native_sharded, _save_comfy_prefixed, _save_self_forcing_ema, _save_self_forcing_raw_generator,
    _save_self_forcing_fsdp_names, _save_self_forcing_flat_safetensors, _save_causvid, _save_longlive,
    _save_longlive_legacy_pickle, _save_reward_forcing,
]


@pytest.mark.parametrize("builder", BUILDERS, ids=[b.__name__[6:] for b in BUILDERS])
def test_format_roundtrip_identical_outputs(builder, tmp_path, src, other):
    path, fmt, prefer, reference = builder(tmp_path, src, other)
    model = fresh()
    report = load_wan_weights(model, path, prefer=prefer)
    assert report.format == fmt
    assert report.num_tensors == len(model.state_dict())
    assert_same_outputs(model, reference)
    # the loaded tensors are exactly the reference's
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_entry_choice_and_fallback(tmp_path, src, other):
    path, *_ = _save_self_forcing_ema(tmp_path, src, other)
    assert load_wan_weights(fresh(), path, prefer="generator_ema").entry == "generator_ema"
    assert load_wan_weights(fresh(), path, prefer="generator").entry == "generator"
    path, *_ = _save_causvid(tmp_path, src, other)
    assert load_wan_weights(fresh(), path, prefer="generator_ema").entry == "generator"
    with pytest.raises(ValueError):
        load_wan_weights(fresh(), path, prefer="critic")


def test_detect_format_and_to_diffusers_keys(src, other):
    d = sd_of(src)
    wan = diffusers_to_wan_original(d)
    assert detect_format(d) == "diffusers"
    assert detect_format(wan) == "wan-original"
    assert detect_format(wrap(wan, "model.diffusion_model.")) == "wan-original"
    assert detect_format(wrap(wan)) == "wan-wrapper"
    assert detect_format(_self_forcing_container(src, other)) == "self-forcing"
    assert detect_format({"generator": wrap(wan), "critic": wrap(wan)}) == "causvid"
    assert detect_format(_longlive_container(src, other)) == "longlive"
    assert detect_format({"generator_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, 1)},
                          "step": 3}) == "longlive-lora"
    assert detect_format({"decoder.middle.0.residual.0.gamma": torch.ones(1), "encoder.conv1.weight": torch.ones(1)}) == "vae"
    assert detect_format({"foo.weight": torch.ones(1)}) == "unknown"

    before = {k: v.clone() for k, v in wan.items()}
    for fmt in (None, "wan-original", "reward-forcing", "self-forcing"):
        conv = L.to_diffusers_keys(wrap(wan), fmt)
        assert set(conv) == set(d)
        assert all(torch.equal(conv[k], d[k]) for k in d)
    assert set(wan) == set(before) and all(torch.equal(wan[k], before[k]) for k in wan)  # input untouched
    assert set(L.to_diffusers_keys(wrap(d), "longlive")) == set(d)  # trainer family with diffusers inner names
    assert set(L.unwrap_training_checkpoint(_self_forcing_container(src, other), prefer="generator")) == set(wrap(wan))
    # keys of the trainer wrapper outside "model." (a GAN critic head) are not transformer weights
    extra = {"_cls_pred_branch.1.weight": torch.ones(2, 2), "_register_tokens.rgs": torch.ones(3, 24)}
    assert set(L.to_diffusers_keys({**wrap(wan), **extra})) == set(d)


def test_read_checkpoint(tmp_path, src, other):
    path, *_ = _save_diffusers_sharded(tmp_path, src, other)
    index = next(path.glob("*.index.json"))
    for p in (path, index):
        sd = L.read_checkpoint(p)
        assert set(sd) == set(src.state_dict())
    path, *_ = _save_self_forcing_ema(tmp_path, src, other)
    sd = L.read_checkpoint(path, prefer="generator")
    ref = wrap(diffusers_to_wan_original(sd_of(other)))
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert isinstance(L.read_checkpoint_raw(path)["critic"], dict)


def _peft_lora(seed: int, src, rank=3, prefix="base_model.model."):
    """LoRA on every block Linear, keyed like LongLive's peft adapters on CausalWanModel."""
    g = torch.Generator().manual_seed(seed)
    sd = src.state_dict()
    lora, native = {}, {}
    for i in range(CFG["num_layers"]):
        for mod in LORA_TARGETS:
            w = sd[f"blocks.{i}.{mod}.weight"]
            a = torch.randn(rank, w.shape[1], generator=g) * 0.2
            b = torch.randn(w.shape[0], rank, generator=g) * 0.2
            name = f"{prefix}blocks.{i}.{BLOCK_MODULES[mod]}"
            lora[f"{name}.lora_A.weight"], lora[f"{name}.lora_B.weight"] = a, b
            native[f"blocks.{i}.{mod}.weight"] = (a, b)
    return lora, native


def test_longlive_lora_merge(tmp_path, src, other):
    base, *_ = _save_longlive(tmp_path, src, other)
    lora, pairs = _peft_lora(5, src)
    lora_path = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora, "critic_lora": {"x.lora_A.weight": torch.zeros(1, 1)}, "step": 9}, lora_path)

    scale = 0.5
    expected = make_model(1)
    with torch.no_grad():
        for key, (a, b) in pairs.items():
            expected.get_parameter(key).add_(scale * (b @ a))
    model = fresh()
    report = load_wan_weights(model, base, lora=lora_path, lora_scale=scale)
    assert report.lora_modules_merged == CFG["num_layers"] * len(LORA_TARGETS)
    assert (run(model) - run(src)).abs().max().item() > 1e-3  # the LoRA changed something
    assert_same_outputs(model, expected)

    with pytest.raises(CheckpointFormatError, match="longlive-lora"):
        load_wan_weights(fresh(), lora_path)


def test_merge_lora_names_and_unsupported(src):
    d = sd_of(src)
    lora, pairs = _peft_lora(6, src, prefix="")
    lora = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v for k, v in lora.items()}
    merged = L.merge_lora(d, lora, 1.0)
    key = "blocks.1.attn2.to_out.0.weight"
    a, b = pairs[key]
    assert torch.allclose(merged[key], d[key] + b @ a)
    assert torch.equal(merged["blocks.1.norm2.weight"], d["blocks.1.norm2.weight"])
    assert not torch.equal(merged[key], d[key])
    with pytest.raises(CheckpointFormatError, match="Unsupported LoRA"):
        L.merge_lora(d, {**lora, "blocks.0.self_attn.q.lora_magnitude_vector": torch.ones(24)})
    with pytest.raises(CheckpointFormatError, match="no weight"):
        L.merge_lora(d, {"blocks.9.self_attn.q.lora_A.weight": a, "blocks.9.self_attn.q.lora_B.weight": b})


def test_equality_check_is_sensitive(tmp_path, src):
    # q and k of block 0 swapped: same shapes, strict load passes, outputs must differ.
    wan = diffusers_to_wan_original(sd_of(src))
    wan["blocks.0.self_attn.q.weight"], wan["blocks.0.self_attn.k.weight"] = (
        wan["blocks.0.self_attn.k.weight"], wan["blocks.0.self_attn.q.weight"])
    path = tmp_path / "swapped.safetensors"
    save_file(wan, str(path))
    model = fresh()
    load_wan_weights(model, path)
    assert (run(model) - run(src)).abs().max().item() > 1e-4


# ----------------------------------------------------------------------------------- errors


def test_vae_like_file_is_rejected(tmp_path):
    path = tmp_path / "Wan2.1_VAE.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4), "encoder.conv1.weight": torch.ones(2, 3)}, str(path))
    with pytest.raises(CheckpointFormatError) as err:
        load_wan_weights(fresh(), path)
    msg = str(err.value)
    assert "'vae'" in msg and "decoder.middle.0.residual.0.gamma" in msg and "blocks.0.attn1.to_q.weight" in msg
    assert "--model-format" in msg
    assert err.value.format == "vae" and err.value.unexpected and err.value.missing


def test_random_keys_are_rejected(tmp_path):
    path = tmp_path / "random.pt"
    torch.save({"encoder.layer.0.weight": torch.ones(3), "lm_head.weight": torch.ones(2, 2)}, path)
    with pytest.raises(CheckpointFormatError) as err:
        load_wan_weights(fresh(), path)
    msg = str(err.value)
    assert "'unknown'" in msg and "lm_head.weight" in msg and "blocks.0.attn1.norm_k.weight" in msg
    assert "proj_out.weight" in err.value.missing and "lm_head.weight" in err.value.unexpected


def test_wrong_model_config_is_reported(tmp_path, src, other):
    path, *_ = _save_self_forcing_ema(tmp_path, src, other)
    with pytest.raises(CheckpointFormatError) as err:
        load_wan_weights(fresh(num_layers=3, attention_head_dim=16), path)
    msg = str(err.value)
    assert "'self-forcing'" in msg and "generator_ema" in msg
    assert "blocks.2.attn1.to_q.weight" in msg  # missing layer
    assert "expected (32, 32), got (24, 24)" in msg
    assert "num_layers" in msg and "dim" in msg
    assert ("blocks.0.attn1.to_q.weight", (32, 32), (24, 24)) in err.value.shape_mismatches


def test_forced_wrong_format_is_reported(tmp_path, src):
    path, *_ = _save_comfy_prefixed(tmp_path, src, None)
    with pytest.raises(CheckpointFormatError) as err:
        load_wan_weights(fresh(), path, model_format="diffusers")
    msg = str(err.value)
    assert "forced to format 'diffusers'" in msg and "blocks.0.cross_attn.k.bias" in msg
    assert "blocks.0.self_attn.q.weight" in err.value.unexpected
    load_wan_weights(fresh(), path, model_format="wan-original")  # the right one works
    with pytest.raises(ValueError, match="unknown model format"):
        load_wan_weights(fresh(), path, model_format="sdxl")


class _Payload:
    """Unpickling this calls open(path, 'w'): a sentinel file appears if anything unpickles it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_with_custom_object_is_refused(tmp_path, src, legacy):
    sentinel = tmp_path / "UNPICKLED"
    path = tmp_path / "evil.pt"
    torch.save({"generator": wrap(diffusers_to_wan_original(sd_of(src))), "config": _Payload(str(sentinel))},
               path, _use_new_zipfile_serialization=not legacy)
    assert not sentinel.exists()
    with pytest.raises(CheckpointFormatError, match="unpickling") as err:
        load_wan_weights(fresh(), path)
    assert err.value.format == "unsafe-pickle"
    assert not sentinel.exists()


def test_flat_state_dict_with_non_tensor_extras(tmp_path, src):
    path = tmp_path / "with_meta.pt"
    torch.save({**wrap(diffusers_to_wan_original(sd_of(src))), "step": 100, "note": "ema 0.99"}, path)
    assert detect_format(torch.load(path, weights_only=True)) == "wan-wrapper"
    model = fresh()
    load_wan_weights(model, path)
    assert_same_outputs(model, src)


def test_lora_only_and_missing_entries(tmp_path):
    path = tmp_path / "critic_only.pt"
    torch.save({"critic": {"model.head.head.weight": torch.ones(2, 2)}, "step": 1}, path)
    with pytest.raises(CheckpointFormatError, match="Could not find model weights"):
        load_wan_weights(fresh(), path)
    d = tmp_path / "empty_dir"
    d.mkdir()
    with pytest.raises(CheckpointFormatError, match="no weight file"):
        load_wan_weights(fresh(), d)


@pytest.mark.parametrize("builder", [_save_wan_native_dir, _save_self_forcing_ema, _save_longlive, _save_reward_forcing],
                         ids=lambda b: b.__name__[6:])
def test_formats_load_into_the_streaming_model(builder, tmp_path, src, other):
    """The engine's CausalWanModel loads every format strictly and matches the stock diffusers model."""
    from streamgen.model import CausalWanModel

    path, fmt, prefer, reference = builder(tmp_path, src, other)
    ours = CausalWanModel.from_diffusers_config(dict(reference.config)).eval()
    load_wan_weights(ours, path, prefer=prefer)
    g = torch.Generator().manual_seed(7)
    x, ctx = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        got = ours(x, torch.tensor([500.0]), ctx)
    assert (got - run(reference)).abs().max().item() <= 1e-5
