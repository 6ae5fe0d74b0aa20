"""Is a VAE's decode fragile to latent errors? Ground-truth clips are encoded, white noise of each std is added to
the latent channels from ``--from-channel`` on, and the detector scores the decodes, first frame (its own latent
frame) and later frames (4-frame latent groups) apart.

    python bench/vae_noise_probe.py --vae assets/vae_layered --from-channel 6 [--clips 32] [--std 0.4 --std 1.2]

Why: the layered teacher's later frames come out speckled and split while its first frames are clean; if the
decode tolerates white noise far above the generator's error, the fault is in what the generator draws.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.data import frames_to_tensor  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip  # noqa: E402
from streamgen.toyworld.render import render_batch  # noqa: E402
from streamgen.toyworld.world import sample_spec  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="assets/vae_layered")
    ap.add_argument("--from-channel", type=int, default=6, help="first latent channel that gets noise (6: coverage only)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=13)
    ap.add_argument("--std", type=float, action="append", default=[])
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    rng, g = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    specs = [sample_spec(rng, "train") for _ in range(args.clips)]
    vae = load_vae(args.vae)
    z = vae.encode(frames_to_tensor(render_batch(specs, args.frames)))
    keys = ("presence", "shape", "colour")
    print("| noise std | " + " | ".join(f"first {k} | later {k}" for k in keys) + " |")
    print("| ---: |" + " ---: |" * (2 * len(keys)))
    for std in args.std or [0.0, 0.4, 0.8, 1.2, 2.0]:
        zn = z.clone()
        zn[:, args.from_channel :] += std * torch.randn(zn[:, args.from_channel :].shape, generator=g)
        dec = vae.decode(zn)
        out = [to_uint8(dec[i : i + 1]) for i in range(len(specs))]
        first = [evaluate_clip(o[:1], s).row() for o, s in zip(out, specs)]
        later = [evaluate_clip(o[1:], s).row() for o, s in zip(out, specs)]
        cells = [f"{np.mean([r[k] for r in rows]):.3f}" for k in keys for rows in (first, later)]
        print(f"| {std:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
