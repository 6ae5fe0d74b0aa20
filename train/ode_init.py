"""ODE-pair generation from the teacher and regression initialisation of the causal student (CausVid).

    python train/ode_init.py pairs   --config configs/distill_toy.yaml   # teacher trajectories -> distill.ode_pairs_dir
    python train/ode_init.py regress --config configs/distill_toy.yaml   # student regression   -> ode.run_dir
    torchrun --nproc_per_node=2 train/ode_init.py pairs --config ...     # shards split over processes
    accelerate launch train/ode_init.py regress --config ...

``pairs``: for ``distill.ode_num_pairs`` toy prompts, the teacher samples a clip of
``train.latent_frames`` frames with ``distill.ode_teacher_steps`` Euler steps and CFG
(``distill.real_guidance_scale``) on its own shifted grid (``train.timestep_shift``) with the
student's sigmas inserted, and the latents at the student's sigmas plus the clean end point are
stored (``shard_XXXXX.safetensors``: ``trajectory [n, K+1, C, F, h, w]`` float16, ``index [n]``,
captions in the metadata). Pair ``i`` depends only on ``(train.seed, i)``; existing shards are
skipped, so an interrupted run continues where it stopped.

``regress``: the student (initialised from the teacher) sees the whole clip through a
``BlockCausalPlan`` of ``cache`` (the inference window and sink) and regresses the clean end point
from trajectory points drawn independently per chunk; configured by the ``ode`` section
(``ode.run_dir``, ``ode.steps``, ``ode.lr``, ...), resumable like every trainer. The EMA student
is exported to ``<ode.run_dir>/student`` at the end; ``train/distill.py`` starts from this run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen import distill as D  # noqa: E402
from streamgen.config import DistillRunConfig, load_config  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.sampler import few_step_sigmas, seeded_noise  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.trainer import EMA, Run, eval_video, optimizer_step, warmup_lambda, write_eval  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("pairs", "regress"))
    ap.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    ap.add_argument("--fresh", action="store_true", help="regress: delete ode.run_dir and start over")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    return ap.parse_intermixed_args(argv)  # `pairs --config X key=value` as in the docstring


def student_sigmas(cfg: DistillRunConfig) -> list[float]:
    return few_step_sigmas(cfg.sampler.denoising_steps, cfg.sampler.shift, cfg.sampler.warp)


def shard_path(root: Path, shard: int) -> Path:
    return root / f"shard_{shard:05d}.safetensors"


def generate_pairs(cfg: DistillRunConfig) -> None:
    from accelerate import PartialState
    from safetensors.torch import save_file

    state = PartialState(cpu=not torch.cuda.is_available())
    tc, d = cfg.train, cfg.distill
    dev = state.device
    teacher = CausalWanModel(cfg.model)
    src = D.load_weights(teacher, d.teacher, d.teacher_module)
    teacher.to(dev).eval().requires_grad_(False)
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    sig = student_sigmas(cfg)
    grid, keep = D.ode_grid(sig, d.ode_teacher_steps, tc.timestep_shift)
    T, h, w = tc.latent_frames, cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    root = Path(d.ode_pairs_dir)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"teacher": str(src), "sigmas": sig, "grid": grid, "guidance_scale": d.real_guidance_scale,
            "latent_frames": T, "num_pairs": d.ode_num_pairs, "seed": tc.seed}
    if state.is_main_process:
        (root / "pairs.json").write_text(json.dumps(meta, indent=2))
    n_shards = math.ceil(d.ode_num_pairs / d.ode_shard_size)
    mine = [s for s in range(state.process_index, n_shards, state.num_processes) if not shard_path(root, s).is_file()]
    print(f"[rank {state.process_index}] {len(mine)} shard(s) to sample, {len(grid) - 1} teacher steps each", flush=True)
    with torch.no_grad():
        for s in mine:
            index = list(range(s * d.ode_shard_size, min(d.ode_num_pairs, (s + 1) * d.ode_shard_size)))
            caps = [D.toy_prompts(1, tc.seed, i, D.KEY_ODE, paraphrase_prob=tc.paraphrase_prob).captions[0] for i in index]
            noise = torch.cat([seeded_noise((1, vae.z_dim, T, h, w), tc.seed, D.KEY_ODE, i) for i in index]).to(dev)
            ctx = teacher.encode_context(text.encode(caps).to(dev))
            uncond = teacher.encode_context(text.encode([""] * len(index)).to(dev))
            traj = D.ode_trajectory(teacher, ctx, uncond, noise, grid, keep, d.real_guidance_scale)
            tmp = root / f".tmp_{shard_path(root, s).name}"
            save_file({"trajectory": traj.half().contiguous().cpu(), "index": torch.tensor(index)}, str(tmp),
                      metadata={"captions": json.dumps(caps), "sigmas": json.dumps(sig)})
            os.replace(tmp, shard_path(root, s))
            print(f"[rank {state.process_index}] shard {s}: pairs {index[0]}..{index[-1]}", flush=True)
    state.wait_for_everyone()


def load_pairs(root: str | Path, sigmas: list[float]) -> tuple[torch.Tensor, list[str]]:
    """All shards: trajectories ``[N, K+1, C, F, h, w]`` (float16) and captions, in pair order."""
    from safetensors import safe_open

    files = sorted(Path(root).glob("shard_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no ODE pairs in {root}: run `python train/ode_init.py pairs --config ...` first")
    trajs, caps, index = [], [], []
    for f in files:
        with safe_open(str(f), "pt") as fh:
            meta = fh.metadata()
            if not all(abs(a - b) < 1e-6 for a, b in zip(json.loads(meta["sigmas"]), sigmas)) or \
                    len(json.loads(meta["sigmas"])) != len(sigmas):
                raise ValueError(f"{f} was sampled for student sigmas {meta['sigmas']}, the config has {sigmas}: "
                                 "regenerate the pairs (sampler.denoising_steps / shift / warp changed)")
            trajs.append(fh.get_tensor("trajectory"))
            index += fh.get_tensor("index").tolist()
            caps += json.loads(meta["captions"])
    order = sorted(range(len(index)), key=index.__getitem__)
    traj = torch.cat(trajs)[order]
    return traj, [caps[i] for i in order]


def regress(cfg: DistillRunConfig, fresh: bool = False) -> None:
    oc, d = cfg.ode, cfg.distill
    if fresh and Path(oc.run_dir).exists():
        shutil.rmtree(oc.run_dir)
    torch.manual_seed(oc.seed)
    sig = student_sigmas(cfg)
    traj, caps = load_pairs(d.ode_pairs_dir, sig)
    student = CausalWanModel(cfg.model)
    ema = EMA(student, oc.ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=oc.lr, weight_decay=oc.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(oc.warmup_steps))
    run = Run(oc, cfg, {"generator": student, "ema": ema.module}, {"generator": opt}, {"generator": sched})
    if not run.resume():  # CausVid: the student starts from the teacher
        src = D.load_weights(student, d.teacher, d.teacher_module)
        ema.module.load_state_dict(student.state_dict())
        run.log_line({"event": "init_from_teacher", "from": str(src)})
    acc = run.accelerator
    student, opt = acc.prepare(student, opt)
    ema.module.to(acc.device)
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    T, C = oc.latent_frames, cfg.cache.chunk_frames
    h, w = traj.shape[-2:]
    plan = acc.unwrap_model(student).block_causal_plan(cfg.cache, T, h, w)
    if run.is_main:
        print(f"ode regression: {len(caps)} pairs, {traj.shape[1] - 1} levels, clips of {T} frames ({h}x{w}), "
              f"{acc.num_processes} process(es), resuming at step {run.step}", flush=True)

    def step_fn(step: int) -> dict:
        g = D.generator(oc.seed, step, run.rank, D.KEY_ODE)
        idx = torch.randint(0, len(caps), (oc.batch_size,), generator=g)
        x = traj[idx].float().to(acc.device)
        states = text.encode([caps[i] for i in idx.tolist()]).to(acc.device)
        with acc.autocast():
            loss = D.ode_regression_loss(student, x, sig, states, plan, C, g)
        return optimizer_step(acc, loss, student, opt, sched, ema, oc.grad_clip, step)

    def eval_fn(step: int) -> dict:
        rows, table = D.stream_eval(ema.module, vae.to(acc.device), text, cfg, num_prompts=oc.eval_prompts,
                                    num_frames=d.eval_frames, seed=1234, video=eval_video(run, step))
        write_eval(run, step, table)
        return rows

    run.loop(step_fn, eval_fn if oc.eval_every > 0 else None)
    if run.is_main:
        print(f"exported the EMA student to {D.export_student(cfg, ema.module, run.dir / 'student')}", flush=True)


def main(argv=None) -> None:
    args = parse(argv)
    cfg: DistillRunConfig = load_config(args.config, args.overrides, schema=DistillRunConfig)
    if args.stage == "pairs":
        generate_pairs(cfg)
    else:
        regress(cfg, args.fresh)


if __name__ == "__main__":
    main()
