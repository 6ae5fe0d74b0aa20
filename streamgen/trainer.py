"""Pieces every trainer shares: initialisation, EMA, schedules, the resumable run loop.

Entry scripts in ``train/`` build their model(s) and a ``step_fn``; ``Run`` does the rest:
accelerate set-up (torchrun / accelerate launch, gloo on CPU, NCCL on GPU), checkpoint and
resume, progress bar and JSON-lines log.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, to_yaml
from .model import CausalWanModel


def init_adaln_zero(model: CausalWanModel) -> None:
    """adaLN-Zero (DiT): every block starts as the identity and the output as zero.

    Zero time-projection weights make modulation come from the learned tables alone; zero gate
    entries in the tables and a zero output projection make each residual branch start closed.
    """
    with torch.no_grad():
        tp = model.condition_embedder.time_proj
        tp.weight.zero_()
        tp.bias.zero_()
        for blk in model.blocks:
            blk.scale_shift_table[:, 2].zero_()  # self-attention gate
            blk.scale_shift_table[:, 5].zero_()  # feed-forward gate
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()


class EMA:
    """Exponential moving average of a module's parameters (kept as a module for saving / sampling)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int | None = None) -> None:
        """With ``step``, the decay warms up as ``min(decay, (1 + step) / (10 + step))`` so the average does
        not drag the random initial weights along for thousands of steps."""
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)


def grown_block_positions(source_blocks: int, target_blocks: int) -> list[int]:
    """Where the source's blocks go in a deeper model: spread evenly, in order (block ``i`` of ``n`` at
    ``floor(i * m / n)``); the other positions get new identity blocks."""
    if not 0 < source_blocks <= target_blocks:
        raise ValueError(f"cannot grow {source_blocks} blocks into {target_blocks}")
    return [i * target_blocks // source_blocks for i in range(source_blocks)]


def grow_from(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[int]:
    """Load a shallower model's ``state`` into ``model`` (same width) and make the remaining blocks identity
    maps (zero output projections of self-attention, cross-attention and feed-forward), so the grown
    model computes exactly what the source did and the new blocks start learning from there. Returns the
    positions of the new blocks."""
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    pos = grown_block_positions(n, len(model.blocks))
    mapped = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k = f"blocks.{pos[int(i)]}.{rest}"
        mapped[k] = v
    new = [i for i in range(len(model.blocks)) if i not in pos]
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False)
    except RuntimeError as e:  # tensor shapes differ: another width, heads or channels
        raise ValueError(f"train.init_grow: the source does not fit this model apart from its depth: {e}") from e
    stray = [k for k in missing if not any(k.startswith(f"blocks.{i}.") for i in new)]
    if stray or unexpected:
        raise ValueError(f"train.init_grow: the source does not fit this model apart from its depth "
                         f"(missing {stray[:4]}, unexpected {unexpected[:4]}); check model.* other than num_layers")
    with torch.no_grad():
        for i in new:
            blk = model.blocks[i]
            # The adaLN gates add the shared timestep modulation, so zeroing the block's own table would not
            # close them; zero the last projection of each residual branch instead.
            for out in (blk.attn1.to_out[0], blk.attn2.to_out[0], blk.ffn.net[2]):
                out.weight.zero_()
                out.bias.zero_()
    return new


def warm_start(model: torch.nn.Module, source: str, reset_head: bool = False, grow: bool = False) -> Path:
    """Load ``source``'s weights (EMA preferred, strictly, as ``distill.load_weights``) into ``model`` for
    a fresh run; with ``reset_head`` the output projection restarts at zero; with ``grow`` the source may
    have fewer blocks (``grow_from``). Returns the file loaded."""
    from .distill import fit_state, load_weights, resolve_weights
    from .loaders import CheckpointFormatError

    note = ""
    if grow:
        from safetensors.torch import load_file

        path = resolve_weights(source, "ema")
        note = f", new identity blocks at {grow_from(model, fit_state(load_file(str(path)), model))}"
    else:
        try:
            path = load_weights(model, source, "ema")
        except CheckpointFormatError as e:
            raise ValueError(f"train.init_from={source!r} does not fit this model (check that model.* matches the "
                             f"run it came from): {e}") from e
    if reset_head:
        with torch.no_grad():
            model.proj_out.weight.zero_()
            model.proj_out.bias.zero_()
    print(f"warm start from {path}{note}" + (", output head zeroed" if reset_head else ""))
    return path


def warmup_lambda(warmup: int, decay_start: int = 0, decay_steps: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, constant, then (``decay_start`` > 0) a linear
    cool-down to ``min_ratio`` over ``decay_steps`` (warmup-stable-decay: a long run can be cooled down
    for export at any point without having fixed its length in advance)."""

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / max(warmup, 1))
        if decay_start > 0 and step >= decay_start:
            f *= max(min_ratio, 1.0 - (1.0 - min_ratio) * (step - decay_start) / max(decay_steps, 1))
        return f

    return factor


class Run:
    """A resumable training run in ``cfg.run_dir``."""

    def __init__(self, cfg: TrainConfig, full_config, modules: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, object] | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
        self.dir = Path(cfg.run_dir)
        self.modules, self.optimizers, self.schedulers = modules, optimizers, schedulers or {}
        self.step = 0
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(to_yaml(full_config))

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def resume(self) -> bool:
        """Load the latest checkpoint of this run, if any. Call before ``prepare``."""
        ckpt = latest_checkpoint(self.dir)
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, self.modules)
        fresh = [n for n in self.optimizers if f"optim_{n}" not in state]
        configured = {n: list(s.base_lrs) for n, s in self.schedulers.items()}  # this launch's config
        for name, opt in self.optimizers.items():
            if name not in fresh:
                opt.load_state_dict(state[f"optim_{name}"])
        self.step = int(state["step"])
        for name, sch in self.schedulers.items():
            if f"sched_{name}" in state:
                sch.load_state_dict(state[f"sched_{name}"])
            if f"sched_{name}" not in state or sch.base_lrs != configured[name]:
                # The LR is a function of the global step and of this launch's config: a checkpoint's stored
                # base LR would silently override a changed train.lr (or distill.lr_critic).
                if sch.base_lrs != configured[name] and self.is_main:
                    print(f"resume: {name} base LR {sch.base_lrs[0]:g} in the checkpoint, {configured[name][0]:g} "
                          "in the config: using the config's", flush=True)
                sch.base_lrs = configured[name]
                for group, lr in zip(sch.optimizer.param_groups, configured[name]):
                    group["initial_lr"] = lr
                sch.last_epoch = self.step - 1
                sch.step()
        if fresh and self.is_main:  # a weights-only snapshot (train/snapshot.py): Adam restarts
            print(f"{ckpt} holds no optimizer state for {fresh}: continuing from the weights with fresh optimizer "
                  "moments (not bit-exact)", flush=True)
        self.log_line({"event": "resumed", "from": str(ckpt), "step": self.step, "fresh_optimizers": fresh})
        return True

    def save(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {f"optim_{n}": o.state_dict() for n, o in self.optimizers.items()}
            state.update({f"sched_{n}": s.state_dict() for n, s in self.schedulers.items()})
            mods = {n: self.accelerator.unwrap_model(m) for n, m in self.modules.items()}
            save_checkpoint(self.dir, self.step, mods, state, keep=self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def log_line(self, record: dict) -> None:
        if self.is_main:
            with open(self.dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")

    def loop(self, step_fn: Callable[[int], dict], eval_fn: Callable[[int], dict] | None = None) -> None:
        """Call ``step_fn(step)`` until ``cfg.steps``; log, checkpoint and evaluate on schedule."""
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.is_main, dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.step
        # Each key is averaged over the steps since the last log that reported it: metrics of alternating
        # steps (a DMD generator step every k-th, image / video steps) are logged whatever log_every is.
        sums: dict[str, list[float]] = {}
        while self.step < cfg.steps:
            metrics = step_fn(self.step)
            self.step += 1
            bar.update(1)
            for k, v in metrics.items():
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += float(v)
                acc[1] += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = (self.step - n0) * cfg.batch_size * self.accelerator.num_processes / (time.perf_counter() - t0)
                rec = {"step": self.step, **{k: total / n for k, (total, n) in sums.items()}, "samples_per_s": rate}
                sums = {}
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k != "step"})
                self.log_line(rec)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
            if eval_fn is not None and self.is_main and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                self.log_line({"step": self.step, "eval": eval_fn(self.step)})
        bar.close()


def optimizer_step(accelerator, loss: torch.Tensor, model, opt, sched, ema: EMA | None, grad_clip: float, step: int) -> dict:
    """Backward, clip, step and EMA update of one model; returns the metrics every trainer logs."""
    finite_or_raise(loss, step)
    accelerator.backward(loss)
    gnorm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(accelerator.unwrap_model(model), step)
    return {"loss": loss.detach(), "grad_norm": gnorm, "lr": sched.get_last_lr()[0]}


def eval_video(run: Run, step: int) -> Path:
    """Where a run's eval at ``step`` writes its sampled clips (next to the table ``write_eval`` saves)."""
    (run.dir / "eval").mkdir(exist_ok=True)
    return run.dir / "eval" / f"step_{step:07d}.mp4"


def write_eval(run: Run, step: int, table: str) -> None:
    """Save an eval table under ``run_dir/eval/`` (beside its clips, ``eval_video``) and print it."""
    eval_video(run, step).with_suffix(".txt").write_text(table + "\n")
    print(f"\n[eval @ {step}]\n{table}", flush=True)


def finite_or_raise(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower train.lr or check the data")
