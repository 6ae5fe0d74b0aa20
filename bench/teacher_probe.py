"""Where a teacher's denoiser fails: x0 error per noise level and channel group, against predicting the mean.

    python bench/teacher_probe.py --config configs/teacher_toy.yaml --weights runs/teacher [--grid probe.png]

For a fixed batch of training clips noised to each sigma, prints the x0 mean-squared error of the
(EMA) model, conditioned on the canonical caption, split into the leading PCA channels (colour:
the flat background and the object's mean colour) and the rest (edges and texture), next to the
variance of each group: an error above the variance is worse than predicting the per-channel mean,
the sign of a model that passes noise through to its output (run 4: sigma 0.98, detail 0.12 vs
variance 0.07; samples full of 8x8 block noise). Also the PSNR of the decoded x0 prediction. With
``--grid`` it samples a few prompts (Euler, CFG) and writes generated frames beside ground truth.

``--sdedit`` finds the noise band where generation breaks: training clips are noised to a start
level and sampled from there (Euler, CFG) to the end; the detector scores the decoded clips against
their captions. Start 0 is the ground truth; start 1 is plain generation. (Run 6 at step 11000, CFG 2:
presence 1.0 / 0.93 / 0.71 / 0.39 from 0.3 / 0.5 / 0.7 / 0.9: objects are lost between 0.6 and 0.95.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import toy_batch  # noqa: E402
from streamgen.distill import load_weights  # noqa: E402
from streamgen.eval_suite import suite_specs  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import add_noise, teacher_sigmas, timestep, x0_from_flow  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.render import render_batch  # noqa: E402
from streamgen.vae import load_vae, pixel_frames  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402

SIGMAS = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98)
SDEDIT_STARTS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
ATTRIBUTES = ("colour", "shape", "background", "motion", "presence")


@torch.no_grad()
def probe(model, vae, text, latent_frames: int, colour_channels: int, batch: int = 8, seed: int = 4321) -> list[dict]:
    b = toy_batch(vae, batch, latent_frames, seed, 0)
    x0 = b.latents
    ctx = model.encode_context(text.encode([canonical_caption(s) for s in b.specs]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    var = x0.var(dim=(0, 2, 3, 4))
    ref = vae.decode(x0).float()
    rows = []
    for sigma in SIGMAS:
        xt = add_noise(x0, noise, sigma)
        x0_hat = x0_from_flow(xt, model(xt, torch.full((batch,), float(timestep(sigma))), ctx), sigma)
        err = (x0_hat - x0).pow(2).mean(dim=(0, 2, 3, 4))
        mse = float((vae.decode(x0_hat).float() - ref).pow(2).mean())
        rows.append({
            "sigma": sigma,
            "colour err": float(err[:colour_channels].mean()), "colour var": float(var[:colour_channels].mean()),
            "detail err": float(err[colour_channels:].mean()), "detail var": float(var[colour_channels:].mean()),
            "decoded PSNR dB": 10 * np.log10(4.0 / max(mse, 1e-12)),
        })
    return rows


@torch.no_grad()
def sdedit(model, vae, text, latent_frames: int, shift: float, steps: int, guidance: float, batch: int = 12,
           seed: int = 777) -> list[dict]:
    from streamgen.toyworld.evaluate import evaluate_clip

    b = toy_batch(vae, batch, latent_frames, seed, 0, 0, 0.0, 0.0)
    ctx = model.encode_context(text.encode([canonical_caption(s) for s in b.specs]))
    uncond = model.encode_context(text.encode([""] * batch))
    noise = torch.randn(b.latents.shape, generator=torch.Generator().manual_seed(seed))
    grid_sigmas = teacher_sigmas(steps, shift)
    rows = []
    for start in SDEDIT_STARTS:
        x = b.latents
        if start > 0:  # the teacher's own grid below the start level
            x = sample_full(model, ctx, uncond, add_noise(x, noise, start), [start] + [s for s in grid_sigmas if s < start], guidance)
        scores = [evaluate_clip(to_uint8(vae.decode(x[i:i + 1].float())), spec).row() for i, spec in enumerate(b.specs)]
        rows.append({"start sigma": start, **{k: float(np.mean([r[k] for r in scores])) for k in ATTRIBUTES}})
    return rows


@torch.no_grad()
def grid(model, vae, text, latent_frames: int, shift: float, path: str, prompts: int = 4, steps: int = 30,
         guidance: float = 4.0) -> None:
    import imageio.v3 as iio

    uncond = model.encode_context(text.encode([""]))
    rows = []
    n = pixel_frames(latent_frames, vae.temporal)
    for i, spec in enumerate(suite_specs(prompts)):
        gt = render_batch([spec], n)[0]
        h, w = gt.shape[1] // vae.spatial, gt.shape[2] // vae.spatial
        noise = torch.randn(1, vae.z_dim, latent_frames, h, w, generator=torch.Generator().manual_seed(1234 + i))
        ctx = model.encode_context(text.encode([canonical_caption(spec)]))
        frames = to_uint8(vae.decode(sample_full(model, ctx, uncond, noise, teacher_sigmas(steps, shift), guidance).float()))
        pick = [0, n // 2, n - 1]
        rows.append(np.concatenate([frames[j] for j in pick] + [gt[j] for j in pick], axis=1))
        print(f"row {i}: {canonical_caption(spec)} (generated | ground truth)")
    iio.imwrite(path, np.concatenate(rows, axis=0))
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--weights", required=True, help="run dir, checkpoint dir, model dir or .safetensors (EMA preferred)")
    ap.add_argument("--colour-channels", type=int, default=3, help="leading PCA channels counted as colour")
    ap.add_argument("--grid", default="", help="also sample prompts and write a PNG of frames here")
    ap.add_argument("--sdedit", action="store_true", help="also score sampling from noised training clips per start level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg: TeacherRunConfig = load_config(args.config or ["configs/teacher_toy.yaml"], args.overrides, schema=TeacherRunConfig)
    model = CausalWanModel(cfg.model).eval()
    path = load_weights(model, args.weights, "ema")
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    print(f"{path}\n")
    print(table(probe(model, vae, text, cfg.train.latent_frames, args.colour_channels), "{:.4f}"))
    if args.sdedit:
        print(f"\nSDEdit (Euler, {cfg.train.eval_steps}-step grid, CFG {cfg.train.guidance_scale}):")
        print(table(sdedit(model, vae, text, cfg.train.latent_frames, cfg.train.timestep_shift, cfg.train.eval_steps,
                           cfg.train.guidance_scale), "{:.2f}"))
    if args.grid:
        grid(model, vae, text, cfg.train.latent_frames, cfg.train.timestep_shift, args.grid,
             steps=cfg.train.eval_steps, guidance=cfg.train.guidance_scale)


if __name__ == "__main__":
    main()
