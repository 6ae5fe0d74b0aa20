"""DMD distillation of the causal few-step student with Self-Forcing rollouts (streaming long
tuning, prompt switches, optional reward weighting).

    python train/distill.py --config configs/distill_toy.yaml [key=value ...]
    torchrun --nproc_per_node=2 train/distill.py --config ...     # 2 CPU processes (gloo)
    accelerate launch train/distill.py --config ...                # GPUs (NCCL; bf16 via train.mixed_precision)

Needs a teacher (``distill.teacher``: the teacher run dir) and, normally, the ODE-regression
initialisation of the student (``distill.init_generator``, from ``train/ode_init.py``;
``distill.init_generator=null`` starts from the teacher's weights instead).

One training step (per process, ``train.batch_size`` streams):

1. Draw the stream's plan from ``(seed, step)``: ``distill.rollout_frames`` frames, window ends
   (the first window is the teacher's clip ``[0, train.latent_frames)``, each later one adds
   ``min..max_new_frames`` frames), one exit step (or one per chunk), a prompt switch frame.
2. Roll the generator out through the inference cache (``StreamRollout``): on generator steps
   (every ``distill.dfake_gen_update_ratio``-th) the exit step of each chunk keeps its graph;
   each finished window gets the DMD loss (teacher with CFG vs critic, optionally weighted by the
   motion reward) and its backward at once, so memory does not grow with the stream.
3. Generator update (gradients averaged over processes, clipped), EMA.
4. Critic update on every step: flow matching on the detached windows of the stream.

Resumes from ``train.run_dir`` (``--fresh`` starts over). All randomness is drawn from
``(seed, step, rank)``, so a resumed run repeats the uninterrupted one. At the end the EMA student
is exported to ``<run_dir>/student`` (a model directory for ``StreamingPipeline.from_pretrained``).
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen import distill as D  # noqa: E402
from streamgen.config import DistillRunConfig, load_config  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.sampler import few_step_sigmas, seeded_noise  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.trainer import EMA, Run, eval_video, finite_or_raise, warmup_lambda, write_eval  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    ap.add_argument("--fresh", action="store_true", help="delete the run directory and start over")
    ap.add_argument("--no-export", action="store_true", help="do not export the EMA student at the end")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=1000")
    return ap.parse_args(argv)


def build_models(cfg: DistillRunConfig):
    """Teacher (frozen), critic (a trainable copy of the teacher) and generator."""
    d = cfg.distill
    teacher = CausalWanModel(cfg.model)
    D.load_weights(teacher, d.teacher, d.teacher_module)
    teacher.eval().requires_grad_(False)
    critic = copy.deepcopy(teacher).requires_grad_(True)
    generator = copy.deepcopy(teacher).requires_grad_(True)
    teacher.gradient_checkpointing = critic.gradient_checkpointing = d.gradient_checkpointing
    return teacher, critic, generator


def main(argv=None) -> None:
    args = parse(argv)
    cfg: DistillRunConfig = load_config(args.config, args.overrides, schema=DistillRunConfig)
    tc, d = cfg.train, cfg.distill
    if args.fresh and Path(tc.run_dir).exists():
        shutil.rmtree(tc.run_dir)
    torch.manual_seed(tc.seed)
    teacher, critic, gen = build_models(cfg)
    ema = EMA(gen, tc.ema_decay)
    betas = tuple(d.betas)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=tc.lr, betas=betas, weight_decay=tc.weight_decay)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=d.lr_critic, betas=betas, weight_decay=tc.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, warmup_lambda(tc.warmup_steps, tc.lr_decay_start, tc.lr_decay_steps, tc.lr_min_ratio))
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, warmup_lambda(tc.warmup_steps, tc.lr_decay_start, tc.lr_decay_steps, tc.lr_min_ratio))
    run = Run(tc, cfg, {"generator": gen, "critic": critic, "ema": ema.module},
              {"generator": opt_g, "critic": opt_c}, {"generator": sched_g, "critic": sched_c})
    if not run.resume() and d.init_generator:
        src = D.load_weights(gen, d.init_generator, d.init_module)
        ema.module.load_state_dict(gen.state_dict())
        run.log_line({"event": "init_generator", "from": str(src)})
    acc = run.accelerator
    dev = acc.device
    for m in (teacher, critic, gen, ema.module):
        m.to(dev)
    D.optimizer_to(opt_g, dev)
    D.optimizer_to(opt_c, dev)
    vae = load_vae(cfg.vae_path).to(dev)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)

    B, T, C = tc.batch_size, tc.latent_frames, cfg.cache.chunk_frames
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    sigmas = few_step_sigmas(cfg.sampler.denoising_steps, cfg.sampler.shift, cfg.sampler.warp)
    context_sigma = cfg.sampler.context_timestep / 1000.0
    uncond_states = text.encode([""] * B).to(dev)
    with torch.no_grad():
        teacher_uncond = teacher.encode_context(uncond_states)
    rank = run.rank
    if run.is_main:
        n = sum(p.numel() for p in gen.parameters())
        print(f"distill: student {n / 1e6:.2f}M parameters, {acc.num_processes} process(es), resuming at step {run.step}; "
              f"streams of {d.rollout_frames} frames, teacher windows of {T}, cache window {cfg.cache.window_frames} "
              f"+ sink {cfg.cache.sink_frames}", flush=True)
        cc = cfg.cache
        if not cc.bounded or d.rollout_frames <= cc.window_frames + cc.sink_frames:
            print("WARNING: streams never evict a frame (distill.rollout_frames <= cache.window_frames + "
                  "cache.sink_frames, or an unbounded window): training does not see the rolling cache", flush=True)

    def step_fn(step: int) -> dict:
        t0 = time.perf_counter()
        train_gen = step % d.dfake_gen_update_ratio == 0
        plan = D.plan_rollout(d, T, C, len(sigmas), tc.seed, step)
        prompts = D.toy_prompts(B, tc.seed, step, rank, D.KEY_PROMPT, paraphrase_prob=tc.paraphrase_prob)
        states = [text.encode(prompts.captions).to(dev)]
        second = None
        if plan.switch_frame is not None:
            second = D.toy_prompts(B, tc.seed, step, rank, D.KEY_SWITCH_PROMPT, paraphrase_prob=tc.paraphrase_prob)
            states.append(text.encode(second.captions).to(dev))
        with torch.no_grad():
            teacher_ctx = [teacher.encode_context(s) for s in states]

        def noise(chunk: int, i: int) -> torch.Tensor:
            return seeded_noise((B, vae.z_dim, C, h, w), tc.seed, step, rank, D.KEY_NOISE, chunk, i, device=dev)

        def context_noise(frame_start: int) -> torch.Tensor:
            return seeded_noise((B, vae.z_dim, C, h, w), tc.seed, step, rank, D.KEY_CONTEXT_NOISE, frame_start, device=dev)

        rollout = D.StreamRollout(gen, cfg.cache, cfg.switch, sigmas, (B, vae.z_dim, h, w), noise, context_sigma, context_noise)
        supervised = {s.index for s in plan.supervised()}
        n_sup = len(supervised)
        metrics: dict[str, float] = {}
        gen_loss = dmd_norm = normaliser = reward = 0.0
        windows = []
        t_teacher = 0.0
        with acc.autocast():
            for win in rollout.run(plan, states[0], states[1] if second else None, grad=train_gen):
                if win.spec.index not in supervised:
                    continue
                x = D.teacher_window(vae, rollout.history(), win)
                mask = win.spec.frame_mask(dev)
                if train_gen:
                    t1 = time.perf_counter()
                    g = D.generator(tc.seed, step, rank, D.KEY_DMD, win.spec.index)
                    sigma = D.sample_sigmas(B, d.min_timestep, d.max_timestep, d.timestep_shift, g).to(dev)
                    eps = torch.randn(x.shape, generator=g).to(dev, x.dtype)
                    with torch.no_grad():
                        critic_ctx = critic.encode_context(states[win.prompt])
                        critic_uncond = critic.encode_context(uncond_states) if d.fake_guidance_scale != 1.0 else None
                    terms = D.dmd_direction(teacher, critic, x, eps, sigma, teacher_ctx[win.prompt], teacher_uncond,
                                            d.real_guidance_scale, critic_ctx, critic_uncond, d.fake_guidance_scale, mask)
                    weights = None
                    if d.reward_beta > 0:
                        targets = [D.window_target(win.spec, a, second.specs[i] if second else None, plan.switch_frame,
                                                   vae.temporal) for i, a in enumerate(prompts.specs)]
                        r = D.motion_reward(vae, x, targets)
                        weights = D.reward_weights(r, d.reward_beta)
                        reward += float(torch.nan_to_num(r, 0.0).mean()) / n_sup
                    t_teacher += time.perf_counter() - t1
                    loss = D.dmd_loss(x, terms.direction, mask, weights)
                    finite_or_raise(loss, step)
                    (loss / n_sup).backward()
                    gen_loss += loss.item() / n_sup
                    dmd_norm += terms.direction.abs().mean().item() / n_sup
                    normaliser += terms.normaliser.mean().item() / n_sup
                windows.append((x.detach(), mask, win.prompt, win.spec.index))
        t_rollout = time.perf_counter() - t0 - t_teacher
        if train_gen:
            D.average_gradients(list(gen.parameters()))
            gnorm = torch.nn.utils.clip_grad_norm_(gen.parameters(), tc.grad_clip)
            opt_g.step()
            sched_g.step()
            opt_g.zero_grad(set_to_none=True)
            ema.decay = 0.0 if step < d.ema_start_step else tc.ema_decay
            ema.update(gen)
            metrics.update(dmd_loss=D.all_mean(gen_loss, dev), dmd_grad=D.all_mean(dmd_norm, dev),
                           dmd_normaliser=D.all_mean(normaliser, dev), gen_grad_norm=float(gnorm),
                           lr=sched_g.get_last_lr()[0])
            if d.reward_beta > 0:
                metrics["reward"] = D.all_mean(reward, dev)
        # critic: flow matching on the stream's windows (detached), every step
        t2 = time.perf_counter()
        c_loss = 0.0
        for x, mask, prompt, index in windows:
            g = D.generator(tc.seed, step, rank, D.KEY_CRITIC, index)
            sigma = D.sample_sigmas(B, d.min_timestep, d.max_timestep, d.timestep_shift, g).to(dev)
            eps = torch.randn(x.shape, generator=g).to(dev, x.dtype)
            with acc.autocast():
                loss = D.critic_loss(critic, x, eps, sigma, critic.encode_context(states[prompt]), mask,
                                     cfg.train.loss_sigma_floor)
            finite_or_raise(loss, step)
            (loss / len(windows)).backward()
            c_loss += loss.item() / len(windows)
        D.average_gradients(list(critic.parameters()))
        cnorm = torch.nn.utils.clip_grad_norm_(critic.parameters(), d.critic_grad_clip)
        opt_c.step()
        sched_c.step()
        opt_c.zero_grad(set_to_none=True)
        metrics.update(critic_loss=D.all_mean(c_loss, dev), critic_grad_norm=float(cnorm), windows=len(windows),
                       exit_step=plan.exit_steps[0], switch=-1 if plan.switch_frame is None else plan.switch_frame,
                       t_rollout=t_rollout, t_dmd=t_teacher, t_critic=time.perf_counter() - t2,
                       t_step=time.perf_counter() - t0)
        return metrics

    def eval_fn(step: int) -> dict:
        rows, table = D.stream_eval(ema.module, vae, text, cfg, num_prompts=tc.eval_prompts, num_frames=d.eval_frames,
                                    seed=1234, video=eval_video(run, step))
        write_eval(run, step, table)
        return rows

    run.loop(step_fn, eval_fn if tc.eval_every > 0 else None)
    if run.is_main and not args.no_export:
        out = D.export_student(cfg, ema.module, run.dir / "student")
        print(f"exported the EMA student to {out}", flush=True)


if __name__ == "__main__":
    main()
