"""Train the bidirectional toy-world teacher by flow matching (rectified flow) on VAE latents.

    python train/teacher.py --config configs/teacher_toy.yaml [key=value ...]
    torchrun --nproc_per_node=2 train/teacher.py --config ...      # 2 CPU processes (gloo)
    accelerate launch train/teacher.py --config ...                 # GPUs (NCCL; bf16 via train.mixed_precision)

Resumes from ``train.run_dir`` automatically (``--fresh`` starts over). Writes ``log.jsonl`` with
loss and throughput, checkpoints, and every ``train.eval_every`` steps an eval table (detector accuracy
of sampled clips, ``eval/step_N.txt``) with the clips themselves tiled into one video (``eval/step_N.mp4``).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.config import ConfigError, TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import counterfactual_latents, object_crop, toy_batch  # noqa: E402
from streamgen.distill import (coarse_latents, flow_matching_loss, path_correction_input, path_source_levels,  # noqa: E402
                               substituted_input)
# Imported now, not at the first eval: a run lasts hours, and a module edited meanwhile must not mix with
# the ones already loaded (session 9: an eval crashed on an eval_suite newer than the world module).
from streamgen.eval_suite import teacher_eval  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.sampler import add_noise, channel_weight, foreground_weight, shift_sigma, stable_seed, timestep, x0_from_flow  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.trainer import (  # noqa: E402
    EMA, Run, eval_video, init_adaln_zero, optimizer_step, warm_start, warmup_lambda, write_eval)
from streamgen.vae import PCAVideoVAE, load_vae  # noqa: E402


def sample_sigmas(n: int, shift: float, g: torch.Generator, kind: str = "uniform") -> torch.Tensor:
    """Training noise levels: ``u`` uniform or logit-normal in (0, 1), shifted like the sampling grid."""
    u = torch.rand(n, generator=g) if kind == "uniform" else torch.sigmoid(torch.randn(n, generator=g))
    return shift_sigma(u, shift)


def is_image_step(step: int, image_every: int) -> bool:
    """Whether ``step`` trains on still frames (``train.image_every``); depends on the step only, so resume is exact."""
    return image_every > 0 and step % image_every == image_every - 1


def is_crop_step(step: int, image_every: int, crop_every: int) -> bool:
    """Whether ``step`` trains on object crops (``train.crop_every``): every ``crop_every``-th step of its kind
    (image or video), so both kinds get crops; depends on the step only, so resume is exact."""
    period = image_every if image_every > 0 else 1
    return crop_every > 0 and (step // period) % crop_every == crop_every - 1


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    ap.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=1000")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    cfg: TeacherRunConfig = load_config(args.config, args.overrides, schema=TeacherRunConfig)
    tc = cfg.train
    if args.fresh and Path(tc.run_dir).exists():
        shutil.rmtree(tc.run_dir)
    torch.manual_seed(tc.seed)
    model = CausalWanModel(cfg.model)
    if tc.init == "adaln_zero":
        init_adaln_zero(model)
    if tc.init_from:
        warm_start(model, tc.init_from, tc.init_reset_head, tc.init_grow)
    ema = EMA(model, tc.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(tc.warmup_steps, tc.lr_decay_start, tc.lr_decay_steps, tc.lr_min_ratio))
    run = Run(tc, cfg, {"model": model, "ema": ema.module}, {"model": opt}, {"model": sched})
    run.resume()
    acc = run.accelerator
    model, opt = acc.prepare(model, opt)
    vae = load_vae(cfg.vae_path)
    if tc.coarse_input > 0 and not isinstance(vae, PCAVideoVAE):
        raise ConfigError(f"train.coarse_input needs latent channels in order of variance (a PCA VAE); {cfg.vae_path} "
                          f"holds a {type(vae).__name__}: set train.coarse_input=0")
    track = getattr(vae, "track_channels", 0)
    if tc.track_loss_weight != 1.0 and not track:
        raise ConfigError(f"train.track_loss_weight weighs a tracked VAE's track channels; {cfg.vae_path} holds a "
                          f"{type(vae).__name__} without them: set train.track_loss_weight=1")
    chan_w = channel_weight(vae.z_dim, track, tc.track_loss_weight).to(acc.device)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    if tc.crop and (tc.crop > min(h, w) or tc.crop % cfg.model.patch_size[1] or tc.crop % cfg.model.patch_size[2]):
        raise ValueError(f"train.crop={tc.crop} must be a multiple of the patch size {list(cfg.model.patch_size[1:])} "
                         f"and at most the latent frame ({h}x{w} positions)")
    crop_clips = (h * w) // (tc.crop * tc.crop) if tc.crop else 1  # clips per full-frame clip, same tokens
    if run.is_main:
        n = sum(p.numel() for p in model.parameters())
        print(f"teacher: {n / 1e6:.2f}M parameters, {acc.num_processes} process(es), resuming at step {run.step}")

    def estimate_x0(x: torch.Tensor, sigma: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The model's x0 estimate without gradient (the self-conditioning input, path correction's source)."""
        with torch.no_grad(), acc.autocast():
            return x0_from_flow(x, model(x, timestep(sigma), states), sigma.view(-1, 1, 1, 1, 1))

    def step_fn(step: int) -> dict:
        image = is_image_step(step, tc.image_every)
        crop = is_crop_step(step, tc.image_every, tc.crop_every)
        size, frames = (tc.batch_size * tc.latent_frames, 1) if image else (tc.batch_size, tc.latent_frames)
        size *= crop_clips if crop else 1
        batch = toy_batch(vae, size, frames, tc.seed, step, run.rank, tc.caption_dropout, tc.paraphrase_prob,
                          motion_weights=tc.motion_weights)
        g = torch.Generator().manual_seed(stable_seed(tc.seed, step, run.rank, 1))
        x0 = object_crop(batch.latents, tc.crop, g) if crop else batch.latents
        x0 = x0.to(acc.device)
        noise = torch.randn(x0.shape, generator=g).to(acc.device)
        sigma = sample_sigmas(x0.shape[0], tc.timestep_shift, g, tc.timestep_sampling).to(acc.device)
        states = text.encode(batch.captions).to(acc.device)
        path = tc.path_correction > 0 and torch.rand((), generator=g) < tc.path_correction
        path = path and (image or not tc.path_correction_images_only)
        xt = add_noise(x0, noise, sigma.view(-1, 1, 1, 1, 1))
        if path:  # samples in [lo, hi) get an input built from the model's estimate at a level in [sigma, hi]
            lo, hi = tc.path_sigma_range
            u = torch.rand(sigma.shape, generator=g).to(sigma.device)
            idx = ((sigma >= lo) & (sigma < hi)).nonzero().squeeze(1)
            if len(idx):
                s = sigma[idx]
                s_from = path_source_levels(s, u[idx], hi, tc.path_from_min)
                xt[idx], noise[idx] = path_correction_input(
                    x0[idx], noise[idx], s, s_from, lambda x, s_from: estimate_x0(x, s_from, states[idx]))
        coarse = tc.coarse_input > 0 and torch.rand((), generator=g) < tc.coarse_input and not path
        if coarse:
            xt, noise = substituted_input(x0, coarse_latents(x0, tc.coarse_channels), noise, sigma)
        swapped = 0.0
        if tc.swap_input > 0 and not (path or coarse):
            pick = (torch.rand(x0.shape[0], generator=g) < tc.swap_input) & torch.tensor([c != "" for c in batch.captions])
            pick &= sigma.cpu() >= tc.swap_sigma_min
            idx = pick.nonzero().squeeze(1)
            if len(idx):
                sub = dataclasses.replace(batch, specs=[batch.specs[i] for i in idx], start=[batch.start[i] for i in idx])
                rng = np.random.default_rng(stable_seed(tc.seed, step, run.rank, 2))
                x_cf = counterfactual_latents(vae, sub, frames, tc.swap_attributes, rng, tc.swap_one_at_a_time)
                xt[idx], noise[idx] = substituted_input(x0[idx], x_cf.to(x0), noise[idx], sigma[idx])
            swapped = len(idx) / x0.shape[0]
        x0_prev = None
        if cfg.model.self_conditioning and torch.rand((), generator=g) < 0.5:
            # Half the steps see the model's own estimate (no gradient through it), as a sampler's next step does.
            x0_prev = estimate_x0(xt, sigma, states)
        with acc.autocast():
            pred = model(xt, timestep(sigma), states, None, x0_prev)
        weight = foreground_weight(x0, tc.foreground_boost, dilate=tc.foreground_dilate) if tc.foreground_boost > 0 else None
        if tc.track_loss_weight != 1.0:
            weight = chan_w if weight is None else weight * chan_w
        loss = flow_matching_loss(pred, x0, noise, sigma, tc.loss_sigma_floor, weight=weight)
        return {**optimizer_step(acc, loss, model, opt, sched, ema, tc.grad_clip, step), "image": float(image), "crop": float(crop),
                "self_cond": float(x0_prev is not None), "path": float(path), "coarse": float(coarse), "swap": swapped}

    def eval_fn(step: int) -> dict:
        rows, table = teacher_eval(ema.module, vae, text, cfg, num_prompts=tc.eval_prompts, steps=tc.eval_steps,
                                   guidance=tc.guidance_scale, seed=1234, video=eval_video(run, step))
        write_eval(run, step, table)
        return rows

    run.loop(step_fn, eval_fn if tc.eval_every > 0 else None)


if __name__ == "__main__":
    main()
