"""Per-chunk latency and resident memory of a long stream: constant-cost check of the rolling cache.

    python bench/stream_cost.py [--chunks 2000] [--threads 2] [--position-policy rebased]

Each chunk does what inference does: one read-only denoising forward and one clean write forward.
Latency at chunk N is the median over the ``--span`` chunks starting at N; the ratio column is
against chunk 5 of the same run; memory growth is RSS against chunk 50 of the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rss_mib, table  # noqa: E402

from streamgen.config import CacheConfig, ModelConfig  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--span", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--position-policy", default="rebased")
    ap.add_argument("--sink-policy", default="anchor")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mcfg = ModelConfig(num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16, text_dim=384,
                       freq_dim=64, ffn_dim=512, num_layers=4)
    ccfg = CacheConfig(chunk_frames=3, window_frames=12, sink_frames=3, sink_policy=args.sink_policy,
                       position_policy=args.position_policy, ema_decay=0.9)
    model = CausalWanModel(mcfg).eval()
    h = w = 16  # latent frame (128x128 pixels at 8x): 64 tokens per frame with patch 2
    cache = model.new_cache(ccfg, 1, h, w)
    ctx = model.encode_context(torch.randn(1, 16, mcfg.text_dim))
    x = torch.randn(1, 16, ccfg.chunk_frames, h, w)
    marks = [m for m in (5, 50, 500, 2000) if m + args.span <= args.chunks + args.span]
    lat: dict[int, list[float]] = {m: [] for m in marks}
    mem: dict[int, float] = {}
    last = max(marks) + args.span
    with torch.inference_mode():
        for c in range(last):
            t0 = time.perf_counter()
            model.forward_cached(x, torch.tensor([500.0]), ctx, cache)
            model.forward_cached(x, torch.tensor([0.0]), ctx, cache, write=True)
            dt = time.perf_counter() - t0
            for m in marks:
                if m <= c < m + args.span:
                    lat[m].append(dt)
                if c == m:
                    mem[m] = rss_mib()
    base_lat = statistics.median(lat[marks[0]])
    base_mem = mem[50] if 50 in mem else mem[marks[0]]
    rows = [
        {
            "chunk": m,
            "frames": m * ccfg.chunk_frames,
            "latency_ms": 1000 * statistics.median(lat[m]),
            "ratio_vs_chunk5": statistics.median(lat[m]) / base_lat,
            "rss_mib": mem[m],
            "rss_growth_%": 100 * (mem[m] - base_mem) / base_mem,
        }
        for m in marks
    ]
    print(f"model: dim {mcfg.dim}, {mcfg.num_layers} layers; cache: {ccfg}; threads {args.threads}")
    print(f"cache tensors: {cache.nbytes() / 2**20:.2f} MiB")
    print(table(rows))


if __name__ == "__main__":
    main()
