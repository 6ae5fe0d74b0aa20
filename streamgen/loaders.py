"""Load Wan2.1 transformer weights from the checkpoint formats people have on disk.

Every format is converted to the parameter names of diffusers' ``WanTransformer3DModel``
(which streamgen's causal DiT keeps exactly) and loaded with ``strict=True``.

Formats (``detect_format`` names; all can be forced with ``model_format=`` / ``--model-format``):

``diffusers``
    ``blocks.N.attn1.to_q.weight``, ``condition_embedder.*``, ``proj_out.*``, ``scale_shift_table``.
    ``diffusion_pytorch_model.safetensors``, sharded with ``*.safetensors.index.json``, or a
    pipeline directory (``model_index.json`` + ``transformer/``).
``wan-original``
    The native Wan2.1 layout (``blocks.N.self_attn.q.weight``, ``blocks.N.modulation``,
    ``head.head``, ``head.modulation``, ``time_embedding.0``, ``time_projection.1``, ...),
    optionally prefixed ``model.diffusion_model.`` / ``diffusion_model.`` (ComfyUI-style files).
    Converted with diffusers' own ``convert_wan_transformer_to_diffusers``.
``wan-wrapper``
    A flat state dict of a trainer's ``WanDiffusionWrapper``: native Wan names under ``model.``.
    This is what ``Reward-Forcing-T2V-1.3B/rewardforcing.pt`` is (its inference.py calls
    ``pipeline.generator.load_state_dict(torch.load(path))`` directly), and what one gets by
    pulling ``ckpt["generator"]`` out of any of the containers below.  ``reward-forcing`` is
    accepted as an alias.
``self-forcing`` / ``causvid`` / ``longlive``
    ``torch.save``'d containers ``{"generator": wrapper_sd, "critic": ..., "generator_ema": ...}``
    (Self-Forcing; Reward Forcing's trainer is a copy of it and writes the same layout),
    ``{"generator": ..., "critic": ...}`` / ``{"generator": ...}`` (CausVid distillation / ODE),
    ``{... "generator_optimizer", "critic_optimizer", "step"}`` (LongLive).  The ``generator*``
    entries are ``wan-wrapper`` state dicts, possibly with ``_fsdp_wrapped_module.``,
    ``_checkpoint_wrapped_module.``, ``_orig_mod.`` or leading ``module.`` in the names.
    The family name is a heuristic on the container's top-level keys and does not change the
    conversion.
``longlive-lora``
    LongLive's LoRA-only checkpoint ``{"generator_lora": peft_sd, "critic_lora": ..., "step"}``.
    Not loadable by itself: pass the base checkpoint as ``path`` and this file as ``lora=``.

Safety: ``.pt``/``.pth``/``.bin``/``.ckpt`` files are read with ``torch.load(weights_only=True)``
only; a file that needs full unpickling is rejected with ``CheckpointFormatError`` and
nothing in it is executed.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointFormatError",
    "LoadReport",
    "FORMATS",
    "detect_format",
    "unwrap_training_checkpoint",
    "to_diffusers_keys",
    "read_checkpoint_raw",
    "read_checkpoint",
    "read_lora",
    "merge_lora",
    "load_wan_weights",
]

StateDict = dict[str, Tensor]

# Format names users can pass (``--model-format``); value = key layout of the flat state dict.
FORMATS: dict[str, str] = {
    "diffusers": "diffusers",
    "wan-original": "wan",
    "wan-wrapper": "wan",
    "reward-forcing": "wan",
    "self-forcing": "auto",
    "causvid": "auto",
    "longlive": "auto",
}
_TRAINER_FAMILIES = ("self-forcing", "causvid", "longlive")
_PREFER_CHOICES = ("generator_ema", "generator")

# Infixes/prefixes that FSDP, activation checkpointing, torch.compile and DDP add to names.
_WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Whole-model prefixes, most specific first.  "model." is the trainers' WanDiffusionWrapper.
_MODEL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
# Container entries that hold a model state dict (trainer checkpoints and generic wrappers).
_CONTAINER_ENTRIES = ("generator_ema", "generator", "critic", "model", "state_dict", "module", "ema")

_DIFFUSERS_MARKERS = ("condition_embedder.", ".attn1.to_q.", ".attn2.to_q.", ".ffn.net.", "proj_out.")
_WAN_MARKERS = (".self_attn.q.", ".cross_attn.q.", "head.head.", "time_embedding.", "time_projection.",
                "text_embedding.", ".modulation")
_WAN_VAE_MARKERS = ("decoder.middle.0.residual.0.gamma",)

_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}\.")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class CheckpointFormatError(ValueError):
    """The file is not a loadable Wan transformer checkpoint (or not for this model config)."""

    def __init__(
        self,
        message: str,
        *,
        format: str | None = None,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.format = format
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.shape_mismatches = shape_mismatches or []


@dataclass
class LoadReport:
    path: str
    format: str  # detected (or forced) format name
    layout: str  # key naming found before conversion: "diffusers" | "wan" (native Wan, converted)
    entry: str | None  # container entry used ("generator_ema", ...), None for flat files
    num_tensors: int
    source_dtypes: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)  # non-transformer keys removed before loading
    ignored_keys: list[str] = field(default_factory=list)  # matched module._keys_to_ignore_on_load_unexpected
    lora_path: str | None = None
    lora_modules_merged: int = 0


# --------------------------------------------------------------------------- key helpers


def _strip_wrappers(key: str) -> str:
    for infix in _WRAPPER_INFIXES:
        key = key.replace(infix, "")
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _count(keys: Iterable[str], markers: Iterable[str]) -> int:
    markers = tuple(markers)
    return sum(1 for k in keys if any(m in k for m in markers))


def _key_layout(keys: Iterable[str]) -> str:
    """'diffusers', 'wan', 'lora', 'vae' or 'unknown' for already wrapper-stripped keys."""
    keys = list(keys)
    if any(".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys):
        return "lora"
    n_diff = _count(keys, _DIFFUSERS_MARKERS) + sum(1 for k in keys if k.endswith("scale_shift_table"))
    n_wan = _count(keys, _WAN_MARKERS)
    if n_diff == 0 and n_wan == 0:
        if any(k.endswith(_WAN_VAE_MARKERS[0]) for k in keys) or (
            any(k.startswith("decoder.") for k in keys) and any(k.startswith("encoder.") for k in keys)
        ):
            return "vae"
        return "unknown"
    return "diffusers" if n_diff >= n_wan else "wan"


def _common_model_prefix(keys: list[str]) -> str:
    """The whole-model prefix (see _MODEL_PREFIXES) carried by the transformer keys, or ''."""
    for prefix in _MODEL_PREFIXES:
        with_prefix = [k for k in keys if k.startswith(prefix)]
        if not with_prefix:
            continue
        inner = [k[len(prefix):] for k in with_prefix]
        if _key_layout(inner) in ("diffusers", "wan") and _key_layout(
            [k for k in keys if not k.startswith(prefix)]
        ) not in ("diffusers", "wan"):
            return prefix
    return ""


def _split_prefix(state_dict: Mapping[str, Tensor]) -> tuple[StateDict, str, list[str]]:
    """Strip wrapper infixes and the common model prefix; returns (sd, prefix, dropped_keys)."""
    stripped: StateDict = {}
    for k, v in state_dict.items():
        nk = _strip_wrappers(k)
        if nk in stripped:
            raise CheckpointFormatError(
                f"Two checkpoint keys map to {nk!r} after removing FSDP/compile/DDP wrapper names "
                f"(one is {k!r}); the file mixes wrapped and unwrapped copies of the weights."
            )
        stripped[nk] = v
    prefix = _common_model_prefix(list(stripped))
    if not prefix:
        return stripped, "", []
    out = {k[len(prefix):]: v for k, v in stripped.items() if k.startswith(prefix)}
    dropped = sorted(k for k in stripped if not k.startswith(prefix))
    return out, prefix, dropped


def _flattened_container(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """A flat tensor dict whose keys are '<entry>.<key>' (a container saved as safetensors)."""
    if not _is_tensor_dict(obj):
        return None
    if not all("." in k for k in obj):
        return None
    heads = {k.split(".", 1)[0] for k in obj}
    if not heads or not heads <= set(_CONTAINER_ENTRIES) | {"generator_lora", "critic_lora"}:
        return None
    if not heads & {"generator", "generator_ema", "critic", "generator_lora"}:
        return None  # e.g. "model.blocks..." is the wrapper layout, not a container
    nested: dict[str, dict[str, Tensor]] = {}
    for k, v in obj.items():
        head, rest = k.split(".", 1)
        nested.setdefault(head, {})[rest] = v
    return nested


# --------------------------------------------------------------------------- format detection


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """Name the format of a loaded checkpoint object (a container or a flat state dict).

    Returns one of ``diffusers``, ``wan-original``, ``wan-wrapper``, ``self-forcing``, ``causvid``,
    ``longlive``, ``longlive-lora``, ``lora``, ``vae`` or ``unknown``.
    """
    if not isinstance(state_dict, Mapping):
        return "unknown"
    flat = _flattened_container(state_dict)
    obj: Mapping[str, Any] = flat if flat is not None else state_dict
    if not _is_tensor_dict(obj):
        keys = set(obj)
        if "generator_lora" in keys and not keys & {"generator", "generator_ema", "model"}:
            return "longlive-lora"
        if keys & {"generator", "generator_ema"}:
            if keys & {"generator_optimizer", "critic_optimizer", "step", "generator_lora"}:
                return "longlive"
            if "generator_ema" in keys:
                return "self-forcing"
            return "causvid"
        for entry in ("model", "state_dict", "module", "ema"):
            if isinstance(obj.get(entry), Mapping):
                return detect_format(obj[entry])
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
        return detect_format(tensors) if tensors else "unknown"
    sd, prefix, _ = _split_prefix(obj)
    layout = _key_layout(sd)
    if layout == "diffusers":
        return "diffusers"
    if layout == "wan":
        return "wan-wrapper" if prefix == "model." else "wan-original"
    return layout  # "lora", "vae", "unknown"


def unwrap_training_checkpoint(obj: Any, prefer: str = "generator_ema") -> StateDict:
    """Return the generator's flat state dict from a trainer checkpoint (or ``obj`` if already flat).

    ``prefer`` picks ``generator_ema`` or ``generator`` when both exist; the other is the fallback.
    The critic (``critic`` / fake score) is never chosen: it is a different network.
    """
    entry, sd = _unwrap(obj, prefer)
    del entry
    return sd


def _unwrap(obj: Any, prefer: str) -> tuple[str | None, StateDict]:
    if prefer not in _PREFER_CHOICES:
        raise ValueError(f"prefer must be one of {_PREFER_CHOICES}, got {prefer!r}")
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"Checkpoint holds a {type(obj).__name__}, not a dict of tensors; cannot find Wan weights in it."
        )
    flat = _flattened_container(obj)
    if flat is not None:
        obj = flat
    elif _is_tensor_dict(obj):
        return None, dict(obj)
    keys = set(obj)
    if "generator_lora" in keys and not keys & {"generator", "generator_ema", "model", "state_dict"}:
        raise CheckpointFormatError(
            "This is a LongLive LoRA-only checkpoint ('longlive-lora': generator_lora/critic_lora entries, "
            "no base weights). Load the base checkpoint (e.g. longlive_base.pt) as the model path and pass "
            "this file as the LoRA (load_wan_weights(..., lora=this_file) / --lora).",
            format="longlive-lora",
        )
    order = [prefer] + [p for p in _PREFER_CHOICES if p != prefer]
    order += ["model", "state_dict", "module", "ema"]
    for entry in order:
        value = obj.get(entry)
        if value is None:
            continue
        if isinstance(value, Mapping):
            if _is_tensor_dict(value):
                return entry, dict(value)
            # one more level, e.g. {"state_dict": {"generator": {...}}}
            inner_entry, sd = _unwrap(value, prefer)
            return f"{entry}.{inner_entry}" if inner_entry else entry, sd
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if tensors and not keys & {"critic", "critic_lora", "generator_lora"}:
        # a flat state dict with some non-tensor extras (metadata, counters): keep the tensors
        return None, tensors
    non_tensor = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    raise CheckpointFormatError(
        "Could not find model weights in the checkpoint: it is a dict without a flat tensor state dict "
        f"and without any of the entries {list(order)} (top-level keys: {sorted(map(str, obj))[:12]}; "
        f"non-tensor: {non_tensor[:6]}).",
        format=detect_format(obj),
    )


# --------------------------------------------------------------------------- conversion


def _wan_to_diffusers(sd: Mapping[str, Tensor]) -> StateDict:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    work: StateDict = {}
    for k, v in sd.items():
        # FLF2V's learned image position embedding is not in diffusers' rename table.
        if k == "img_emb.emb_pos":
            k = "condition_embedder.image_embedder.pos_embed"
        work[k] = v
    pos = work.pop("condition_embedder.image_embedder.pos_embed", None)
    out = convert_wan_transformer_to_diffusers(work)  # pops from `work`, never touches `sd`
    if pos is not None:
        out["condition_embedder.image_embedder.pos_embed"] = pos
    return out


def _convert(state_dict: Mapping[str, Tensor], fmt: str | None) -> tuple[StateDict, str, str, list[str]]:
    """(diffusers_sd, format_name, layout, dropped_keys)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; choose one of {sorted(FORMATS)}")
    sd, prefix, dropped = _split_prefix(state_dict)
    detected_layout = _key_layout(sd)
    layout = FORMATS[fmt] if fmt is not None else "auto"
    if layout == "auto":
        # nothing recognisable: keep the names as they are ("none") so the mismatch report shows them
        layout = detected_layout if detected_layout in ("diffusers", "wan") else "none"
    if fmt is None:
        fmt = {"diffusers": "diffusers", "wan": "wan-wrapper" if prefix == "model." else "wan-original"}.get(
            detected_layout, detected_layout
        )
    converted = _wan_to_diffusers(sd) if layout == "wan" else dict(sd)
    return converted, fmt, layout, dropped


def to_diffusers_keys(state_dict: Mapping[str, Tensor], fmt: str | None = None) -> StateDict:
    """Convert a flat state dict of format ``fmt`` (auto-detected if None) to diffusers key names.

    Wrapper names (``_fsdp_wrapped_module.``, ``_orig_mod.``, ``module.``, ...) and a whole-model
    prefix (``model.``, ``model.diffusion_model.``, ``transformer.``) are removed first; keys outside
    that prefix (e.g. a GAN critic head on the trainer wrapper) are dropped.  For the trainer families
    the inner naming (native Wan or diffusers) is detected.  The input is not modified.
    """
    return _convert(state_dict, fmt)[0]


# --------------------------------------------------------------------------- reading files


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if head[:4] == b"GGUF":
        return "gguf"
    return "unknown"


def _torch_load(path: Path, kind: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "torch-zip"))
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines()]
        cause = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler error" in ln),
                     lines[0] if lines else "").split(" Please use")[0]
        raise CheckpointFormatError(
            f"{path} cannot be read with torch.load(weights_only=True): it contains objects other than "
            "tensors and plain containers and would need full unpickling, which streamgen refuses "
            "(unpickling can run arbitrary code). Re-save the weights from a trusted environment as "
            "safetensors or as a plain dict of tensors. torch's weights-only unpickler said: " + cause,
            format="unsafe-pickle",
        ) from None


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _load_file(path: Path) -> Any:
    kind = _sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind in ("torch-zip", "torch-legacy"):
        return _torch_load(path, kind)
    if kind == "gguf":
        raise CheckpointFormatError(f"{path} is a GGUF (quantised) file; GGUF is not supported.", format="gguf")
    raise CheckpointFormatError(
        f"{path} is neither a safetensors file nor a torch.save file (first bytes not recognised).",
        format="unknown",
    )


def _load_index(index: Path) -> StateDict:
    data = json.loads(index.read_text())
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFormatError(f"{index} has no 'weight_map'; not a sharded-checkpoint index.")
    out: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointFormatError(f"{index} lists shard {shard!r}, which is missing next to it.")
        part = _load_file(shard_path)
        if not _is_tensor_dict(part):
            raise CheckpointFormatError(f"shard {shard_path} is not a flat dict of tensors.")
        out.update(part)
    absent = sorted(set(weight_map) - set(out))
    if absent:
        raise CheckpointFormatError(
            f"{index}: {len(absent)} keys listed in weight_map are in no shard, e.g. {absent[:5]}"
        )
    return out


def _resolve_dir(path: Path) -> list[Path]:
    if (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        path = path / "transformer"  # a diffusers pipeline root
    indexes = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.bin.index.json"))
    if len(indexes) == 1:
        return indexes
    if len(indexes) > 1:
        raise CheckpointFormatError(f"{path} holds several shard indexes {[p.name for p in indexes]}; pass one.")
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return [path / name]
    for suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        files = sorted(p for p in path.glob(f"*{suffix}") if p.is_file())
        if len(files) == 1:
            return files
        if files and all(_SHARD_RE.search(p.name) for p in files):
            return files
        if files:
            raise CheckpointFormatError(
                f"{path} holds several {suffix} files and no shard index: {[p.name for p in files][:8]}; "
                "pass the transformer file itself."
            )
    raise CheckpointFormatError(f"{path} contains no weight file ({', '.join(_WEIGHT_SUFFIXES)} or *.index.json).")


def read_checkpoint_raw(path: str | Path) -> Any:
    """Load a checkpoint file/dir as stored (a flat tensor dict, or a trainer container dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    files = _resolve_dir(path) if path.is_dir() else [path]
    if len(files) == 1 and files[0].name.endswith(".index.json"):
        return _load_index(files[0])
    if len(files) == 1:
        return _load_file(files[0])
    out: StateDict = {}
    for f in files:  # shards without an index
        part = _load_file(f)
        if not _is_tensor_dict(part):
            raise CheckpointFormatError(f"shard {f} is not a flat dict of tensors.")
        out.update(part)
    return out


def read_checkpoint(path: str | Path, prefer: str = "generator_ema") -> StateDict:
    """Read ``path`` (.pt/.pth/.bin/.ckpt/.safetensors, sharded index or directory) into a flat
    ``{name: tensor}`` dict; trainer containers are unwrapped (see ``unwrap_training_checkpoint``).
    Names are as stored (no conversion)."""
    return unwrap_training_checkpoint(read_checkpoint_raw(path), prefer=prefer)


# --------------------------------------------------------------------------- LoRA

_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED_LORA = ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B", "lora_down", "lora_up",
                     "lora_mid", ".alpha", "hada_", "lokr_", "oft_")


def read_lora(path: str | Path) -> StateDict:
    """Read a LoRA file: a LongLive ``{"generator_lora": ...}`` checkpoint or a flat peft state dict."""
    obj = read_checkpoint_raw(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("generator_lora"), Mapping):
        obj = obj["generator_lora"]
    if not _is_tensor_dict(obj):
        raise CheckpointFormatError(
            f"{path} is not a LoRA state dict (expected a dict of tensors or a 'generator_lora' entry).",
            format=detect_format(obj) if isinstance(obj, Mapping) else "unknown",
        )
    return dict(obj)


def _lora_module_name(module: str) -> str:
    module = _strip_wrappers(module)
    if module.startswith("base_model.model."):
        module = module[len("base_model.model."):]
    for prefix in _MODEL_PREFIXES:
        if module.startswith(prefix) and module[len(prefix):].startswith(("blocks.", "head", "condition_embedder",
                                                                         "text_embedding", "time_", "patch_",
                                                                         "proj_out", "img_emb")):
            module = module[len(prefix):]
            break
    return module


def merge_lora(state_dict: Mapping[str, Tensor], lora_sd: Mapping[str, Tensor], scale: float = 1.0) -> StateDict:
    """Fold a peft-style LoRA (``<module>.lora_A[.<adapter>].weight`` / ``lora_B``) into the weights.

    ``W <- W + scale * (B @ A)``, computed in float32 and cast back to W's dtype.  ``scale`` is peft's
    ``lora_alpha / r`` (which the LoRA file does not store); LongLive's configs use alpha == rank, so 1.0.
    ``state_dict`` may use diffusers or native Wan names; LoRA module names may use native Wan names
    (as LongLive's peft adapters on ``CausalWanModel`` do, e.g. ``base_model.model.blocks.0.self_attn.q``)
    or the names of ``state_dict``.  Only Linear (2-D) LoRA is supported.  Returns a new dict.
    """
    bad = sorted(k for k in lora_sd if any(tag in k for tag in _UNSUPPORTED_LORA))
    if bad:
        raise CheckpointFormatError(
            "Unsupported LoRA variant (only plain peft LoRA with lora_A/lora_B on Linear layers can be merged; "
            f"found keys such as {bad[:3]}: DoRA/LoHa/LoKr/kohya lora_down-lora_up/embedding LoRA are not supported).",
            format="lora",
        )
    pairs: dict[str, dict[str, Tensor]] = {}
    adapters: set[str] = set()
    other: list[str] = []
    for k, v in lora_sd.items():
        m = _LORA_RE.match(k)
        if m is None:
            other.append(k)
            continue
        if m.group("adapter"):
            adapters.add(m.group("adapter"))
        pairs.setdefault(_lora_module_name(m.group("module")), {})[m.group("side")] = v
    if other:
        raise CheckpointFormatError(
            f"LoRA file has keys that are not lora_A/lora_B weights, e.g. {other[:4]}", format="lora"
        )
    if len(adapters) > 1:
        raise CheckpointFormatError(
            f"LoRA file holds several adapters {sorted(adapters)}; save one adapter.", format="lora"
        )
    if not pairs:
        raise CheckpointFormatError("LoRA file has no lora_A/lora_B weights.", format="lora")

    out = dict(state_dict)
    unmatched: list[str] = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointFormatError(f"LoRA module {module!r} has only lora_{''.join(ab)}.", format="lora")
        target = f"{module}.weight"
        if target not in out:
            converted = list(_wan_to_diffusers({target: ab["A"]}))[0]
            target = converted if converted in out else None
        if target is None:
            unmatched.append(module)
            continue
        a, b, w = ab["A"], ab["B"], out[target]
        if a.ndim != 2 or b.ndim != 2 or w.ndim != 2:
            raise CheckpointFormatError(
                f"LoRA on {module!r} is not a Linear LoRA (ndim A={a.ndim}, B={b.ndim}, W={w.ndim}).",
                format="lora",
            )
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointFormatError(
                f"LoRA shapes do not fit {target}: A {tuple(a.shape)}, B {tuple(b.shape)}, weight {tuple(w.shape)}.",
                format="lora",
            )
        out[target] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    if unmatched:
        raise CheckpointFormatError(
            f"{len(unmatched)} LoRA target modules have no weight in the base checkpoint, e.g. {unmatched[:5]}.",
            format="lora",
        )
    return out


# --------------------------------------------------------------------------- loading


def num_blocks(keys: Iterable[str]) -> int:
    """Transformer blocks in diffusers-named weights (``blocks.N.``): 0 if none."""
    return 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)


def _summary(sd: Mapping[str, Tensor]) -> str:
    """Infer the transformer config from diffusers-named weights, for error messages."""
    parts: list[str] = []
    if blocks := num_blocks(sd):
        parts.append(f"num_layers={blocks}")
    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.ndim == 5:
        parts.append(f"dim={pe.shape[0]}")
        parts.append(f"in_channels={pe.shape[1]}")
        parts.append(f"patch_size={tuple(pe.shape[2:])}")
        po = sd.get("proj_out.weight")
        patch = int(pe.shape[2] * pe.shape[3] * pe.shape[4])
        if po is not None and patch and po.shape[0] % patch == 0:
            parts.append(f"out_channels={po.shape[0] // patch}")
    for name, key, dim in (
        ("ffn_dim", "blocks.0.ffn.net.0.proj.weight", 0),
        ("text_dim", "condition_embedder.text_embedder.linear_1.weight", 1),
        ("freq_dim", "condition_embedder.time_embedder.linear_1.weight", 1),
    ):
        t = sd.get(key)
        if t is not None and t.ndim == 2:
            parts.append(f"{name}={t.shape[dim]}")
    if any(k.startswith("condition_embedder.image_embedder.") for k in sd):
        parts.append("image_embedder (I2V)")
    return ", ".join(parts) if parts else "no Wan transformer weights recognised"


def _few(items: list[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def _ignore_patterns(module: nn.Module) -> list[str]:
    pats = getattr(type(module), "_keys_to_ignore_on_load_unexpected", None) or []
    return [p for p in pats if isinstance(p, str)]


def load_wan_weights(
    module: nn.Module,
    path: str | Path,
    prefer: str = "generator_ema",
    model_format: str | None = None,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
) -> LoadReport:
    """Read ``path`` in any supported format, convert to diffusers names and load into ``module`` strictly.

    ``prefer`` chooses the EMA or the raw generator of trainer checkpoints (falling back to the other);
    ``model_format`` forces a format (see ``FORMATS``) instead of detecting it; ``lora`` is a LoRA file
    merged into the weights before loading (``lora_scale`` = peft lora_alpha / r).
    Raises ``CheckpointFormatError`` if the converted keys/shapes do not match the module exactly.
    """
    if prefer not in _PREFER_CHOICES:
        raise ValueError(f"prefer must be one of {_PREFER_CHOICES}, got {prefer!r}")
    raw = read_checkpoint_raw(path)
    container_fmt = detect_format(raw) if isinstance(raw, Mapping) else "unknown"
    entry, sd = _unwrap(raw, prefer)
    converted, fmt, layout, dropped = _convert(sd, model_format)
    if model_format is None and container_fmt in _TRAINER_FAMILIES:
        fmt = container_fmt
    source_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    num_tensors = len(sd)
    del sd, raw

    lora_merged = 0
    if lora is not None:
        lora_sd = read_lora(lora)
        converted = merge_lora(converted, lora_sd, lora_scale)
        lora_merged = len({_LORA_RE.match(k).group("module") for k in lora_sd})  # type: ignore[union-attr]

    expected = module.state_dict()
    patterns = _ignore_patterns(module)
    ignored = sorted(k for k in converted if k not in expected and any(re.search(p, k) for p in patterns))
    for k in ignored:
        converted.pop(k)

    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [
        (k, tuple(expected[k].shape), tuple(converted[k].shape))
        for k in sorted(set(expected) & set(converted))
        if tuple(expected[k].shape) != tuple(converted[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointFormatError(
            _mismatch_message(module, path, fmt, model_format is not None, layout, entry, raw_keys_dropped=dropped,
                              missing=missing, unexpected=unexpected, mismatched=mismatched,
                              ckpt=converted, expected=expected, container_fmt=container_fmt),
            format=fmt, missing=missing, unexpected=unexpected, shape_mismatches=mismatched,
        )
    module.load_state_dict(converted, strict=True)
    return LoadReport(
        path=str(path), format=fmt, layout=layout, entry=entry, num_tensors=num_tensors,
        source_dtypes=source_dtypes, dropped_keys=dropped, ignored_keys=ignored,
        lora_path=str(lora) if lora is not None else None, lora_modules_merged=lora_merged,
    )


def _mismatch_message(
    module: nn.Module, path: str | Path, fmt: str, forced: bool, layout: str, entry: str | None, *,
    raw_keys_dropped: list[str], missing: list[str], unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ckpt: Mapping[str, Tensor], expected: Mapping[str, Tensor], container_fmt: str,
) -> str:
    how = "was forced to format" if forced else "looked like format"
    where = f", entry '{entry}'" if entry else ""
    naming = {"wan": "native Wan names, converted to diffusers names", "diffusers": "diffusers names"}.get(
        layout, "no Wan transformer naming recognised, names kept as stored")
    lines = [
        f"Checkpoint {str(path)!r} {how} '{fmt}'{where} ({naming}) "
        f"but does not match {type(module).__name__} for a strict load:"
    ]
    if missing:
        lines.append(f"  {len(missing)} missing keys (in the model, not in the checkpoint): {_few(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys (in the checkpoint, not in the model): {_few(unexpected)}")
    if mismatched:
        # one example per distinct (expected, got) pair first, then the rest
        seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        firsts = [m for m in mismatched if (m[1], m[2]) not in seen and not seen.add((m[1], m[2]))]
        ordered = firsts + [m for m in mismatched if m not in firsts]
        shown = "; ".join(f"{k}: expected {e}, got {g}" for k, e, g in ordered[:8])
        more = f"; ... (+{len(mismatched) - 8} more)" if len(mismatched) > 8 else ""
        lines.append(
            f"  {len(mismatched)} shape mismatches (parameter: expected model shape, got checkpoint shape): "
            f"{shown}{more}"
        )
    if raw_keys_dropped:
        lines.append(
            f"  ({len(raw_keys_dropped)} keys outside the model prefix were dropped: {_few(raw_keys_dropped, 4)})"
        )
    lines.append(f"  checkpoint: {_summary(ckpt)}")
    lines.append(f"  model:      {_summary(expected)}")
    lines.append("What to do:")
    if fmt in ("unknown", "vae", "lora", "longlive-lora"):
        what = {
            "vae": "a VAE checkpoint (encoder./decoder. weights)",
            "lora": "a LoRA file (pass it as lora=/--lora with a base checkpoint)",
            "longlive-lora": "a LongLive LoRA checkpoint (pass it as lora=/--lora)",
        }.get(fmt, "not a Wan transformer checkpoint")
        lines.append(f"  - this file looks like {what}; point the loader at the transformer weights")
    lines.append(
        "  - if the format guess is wrong, pass --model-format (model_format=) with one of: "
        + ", ".join(sorted(FORMATS))
    )
    lines.append(
        "  - if layer counts or shapes differ, check the model config: "
        "dim (= num_attention_heads * attention_head_dim), "
        "num_layers, ffn_dim, in/out channels, text_dim, freq_dim, patch_size, cross_attn_norm/qk_norm, "
        "image embedder (I2V) must match the checkpoint"
    )
    if missing and not unexpected and not mismatched and entry and entry.endswith("generator_ema") \
            and container_fmt in _TRAINER_FAMILIES:
        lines.append("  - EMA entries can be partial; try prefer='generator'")
    return "\n".join(lines)
