"""Train the learned decoder of ``RefinedPCAVAE`` (PCA encoder unchanged) on toy-world clips.

    python train/fit_refiner.py --vae assets/vae --out runs/vae_refined [--steps 1500] [--noise-max 0.4]

Each step renders ``--batch`` random training clips, encodes them with the PCA encoder, adds Gaussian
noise of a per-clip level ``U(0, noise_max)`` to the latents (a DiT's latents are never exact, and
a linear decoder turns every error into colour mosaic) and fits the decoder to the clean frames (L1).
Checkpoints (refiner, optimizer, step) go to ``<out>/train_state.pt`` every ``--ckpt-every`` steps;
rerunning the command resumes. At the end the VAE directory (``config.json`` type ``pca_refined``)
is written to ``--out`` with a README holding the detector table on decoded clips (exact and noised
latents) next to the PCA decoder's.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.data import frames_to_tensor  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip, format_table  # noqa: E402
from streamgen.toyworld.render import render_batch  # noqa: E402
from streamgen.toyworld.world import sample_spec  # noqa: E402
from streamgen.vae import PCAVideoVAE, RefinedPCAVAE, load_vae  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402


def clips(rng: np.random.Generator, n: int, frames: int, split: str = "train"):
    specs = [sample_spec(rng, split) for _ in range(n)]
    video = np.stack([render_batch([s], frames, start_frame=int(rng.integers(0, 64)))[0] for s in specs])
    return specs, video


@torch.no_grad()
def evaluate(vae, n: int, frames: int, noise: float, seed: int = 1) -> tuple[dict, float]:
    """Detector accuracy and PSNR of decoded clips, latents noised by ``noise`` (same draws for every VAE)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    rows, psnrs = [], []
    keys = ("colour", "shape", "background", "motion", "presence", "speed_ratio")
    for _ in range(n):
        specs, video = clips(rng, 1, frames, "any")
        z = vae.encode(frames_to_tensor(video))
        z = z + noise * torch.randn(z.shape, generator=g)
        out = to_uint8(vae.decode(z))
        rows.append(evaluate_clip(out, specs[0]).row())
        psnrs.append(10 * math.log10(255.0**2 / max(float(np.mean((out.astype(np.float64) - video[0]) ** 2)), 1e-12)))
    mean = {k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in rows])) for k in keys}
    return mean, statistics.mean(psnrs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="assets/vae", help="the PCA VAE whose encoder and latents are kept")
    ap.add_argument("--out", default="runs/vae_refined")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=13)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise-max", type=float, default=0.4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-clips", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    pca = load_vae(args.vae)
    if type(pca) is not PCAVideoVAE:
        raise SystemExit(f"--vae {args.vae} is not a PCA VAE (config.json type 'pca'): the refiner keeps a PCA encoder")
    vae = RefinedPCAVAE.from_pca(pca, args.width, args.depth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(vae.refiner.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    state_file, step = out / "train_state.pt", 0
    if state_file.is_file():
        st = torch.load(state_file, weights_only=True)
        vae.refiner.load_state_dict(st["refiner"]), opt.load_state_dict(st["opt"]), sched.load_state_dict(st["sched"])
        step = int(st["step"])
        print(f"resumed at step {step}", flush=True)
    n = sum(p.numel() for p in vae.refiner.parameters())
    print(f"refiner: {n / 1e6:.2f} M parameters, {args.steps} steps of {args.batch} clips", flush=True)
    t0, losses = time.time(), []
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])  # batches depend on the step only: resume repeats them
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        _, video = clips(rng, args.batch, args.frames)
        x = frames_to_tensor(video)
        with torch.no_grad():
            z = vae.encode(x)
            level = torch.rand(args.batch, 1, 1, 1, 1, generator=g) * args.noise_max
            z = z + level * torch.randn(z.shape, generator=g)
        loss = (vae.decode_train(z) - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        step += 1
        losses.append(loss.item())
        if step % args.log_every == 0:
            print(f"step {step} l1 {statistics.mean(losses[-args.log_every:]):.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(time.time() - t0) / len(losses):.2f} s/step", flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            tmp = out / ".train_state.tmp"
            torch.save({"refiner": vae.refiner.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step}, tmp)
            tmp.replace(state_file)
    vae.eval()
    rows = []
    for noise in (0.0, 0.2):
        for name, v in (("PCA (linear)", pca), ("PCA + refiner", vae)):
            acc, p = evaluate(v, args.eval_clips, 33, noise)
            rows.append({"decoder": name, "latent_noise": noise, **acc, "psnr": p})
    table = format_table(rows)
    print(table)
    vae.save(out)
    cmd = "python train/fit_refiner.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "README.md").write_text(
        "# PCA VAE with a learned decoder (RefinedPCAVAE)\n\n"
        f"Encoder and latent space: the PCA VAE of `{args.vae}` unchanged. Decoder: the PCA decode plus a "
        f"PatchRefiner residual ({n / 1e6:.2f} M parameters: {args.depth} residual blocks of width {args.width} at "
        f"latent resolution, one latent frame at a time, so streaming decode is exact), trained {args.steps} steps "
        f"of {args.batch} toy clips of {args.frames} frames, latents noised by U(0, {args.noise_max}) x N(0, 1), L1 "
        f"loss on pixels.\n\nMade by: `{cmd}`\n\n## Decoded clips ({args.eval_clips} random clips of 33 frames; the "
        f"same latents and noise draws for both decoders)\n\n```\n{table}\n```\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
