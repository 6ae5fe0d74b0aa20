"""Helpers shared by the benchmarks: timing with warm-up and medians, resident memory, tables, loading a teacher."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def rss_mib() -> float:
    """Resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: list[dict], floatfmt: str = "{:.3f}") -> str:
    cols = list(rows[0])
    cells = [[floatfmt.format(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in cells])


def load_teacher(cfg, weights: str):
    """The teacher at a weights source (a checkpoint directory, a run directory or a safetensors file;
    ``distill.load_weights``), EMA, eval mode, with ``cfg.model`` except its depth, ``pooled_text`` and patch size,
    which are read from the weights: a 10-block teacher and a 6-block one load under the same config."""
    from safetensors import safe_open

    from streamgen.distill import load_weights, resolve_weights
    from streamgen.loaders import num_blocks
    from streamgen.model import CausalWanModel

    with safe_open(str(resolve_weights(weights, "ema")), "pt") as f:  # the key names only, no tensors
        keys = list(f.keys())
        embed = next(k for k in ("patch_embedding.weight", "patch_embedding.down.weight") if k in keys)
        patch = tuple(f.get_slice(embed).get_shape()[2:])  # conv kernel [D, C, pt, ph, pw]
    model = CausalWanModel(type(cfg.model)(**{**vars(cfg.model), "num_layers": num_blocks(keys),
                                              "pooled_text": "text_pool.weight" in keys, "patch_size": patch}))
    load_weights(model, weights, "ema")
    return model.eval()


def load_teacher_parts(cfg, weights: str):
    """``(model, vae, text encoder)`` for a teacher run config ``cfg`` and a weights source (``load_teacher``)."""
    from streamgen.text import load_text_encoder
    from streamgen.vae import load_vae

    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    return load_teacher(cfg, weights), load_vae(cfg.vae_path), text
