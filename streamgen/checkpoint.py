"""Resumable training checkpoints, written atomically.

Layout of ``run_dir/checkpoints/step_000500/``: ``<name>.safetensors`` per module (weights),
``state.pt`` (optimizer / scheduler states, step, RNG states; read back with
``weights_only=True``). ``run_dir/checkpoints/latest`` names the newest complete checkpoint;
a checkpoint directory becomes visible only by a rename once every file is on disk, so a run
killed mid-save resumes from the previous one.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": repr(random.getstate())}


def save_checkpoint(run_dir: str | Path, step: int, modules: dict[str, torch.nn.Module], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Save weights of ``modules`` and the picklable-by-weights ``state``; returns the checkpoint dir."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(sd, str(tmp / f"{name}.safetensors"))
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step_*") if p != final)[:-max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    marker = root / "latest"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Load weights into ``modules`` (strict) and return the saved state (step, optimizer, ...)."""
    path = Path(path)
    for name, module in modules.items():
        f = path / f"{name}.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {f.name}: was it written by another trainer?")
        module.load_state_dict(load_file(str(f)), strict=True)
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    return state


def average_weights(paths: list[str | Path], module: str = "ema") -> dict[str, torch.Tensor]:
    """The uniform mean of ``module``'s weights in several checkpoint directories (float32).

    A weight average of branches fine-tuned from one parent ("model soup", Wortsman et al. 2022) can keep what each
    branch learnt: the models stay in one basin, so the mean is a model of its own, not a blur of two.
    Raises ValueError naming the first key whose presence or shape differs (checkpoints of different models)."""
    if not paths:
        raise ValueError("average_weights needs at least one checkpoint directory")
    states = []
    for p in paths:
        f = Path(p) / f"{module}.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"{p} has no {f.name}: pass checkpoint directories (RUN/checkpoints/step_N)")
        states.append(load_file(str(f)))
    first = states[0]
    for p, s in zip(paths[1:], states[1:]):
        for k in sorted(set(first) ^ set(s)):
            raise ValueError(f"{p} and {paths[0]} hold different models: {k!r} is in only one of them")
        for k in first:
            if s[k].shape != first[k].shape:
                raise ValueError(f"{p} and {paths[0]} hold different models: {k!r} is {tuple(s[k].shape)} "
                                 f"in one and {tuple(first[k].shape)} in the other")
    return {k: sum(s[k].float() for s in states) / len(states) for k in first}
