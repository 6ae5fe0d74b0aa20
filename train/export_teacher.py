"""Export the teacher's EMA weights with a model card and its eval table.

    python train/export_teacher.py --config configs/teacher_toy.yaml [--out assets/teacher] [--prompts 32] \
        [--about "how it was trained"] [--checkpoint RUN/checkpoints/step_N] [--average OTHER/checkpoints/step_M ...]

Reads the latest checkpoint of ``train.run_dir`` (or ``--checkpoint``; with ``--average``, the uniform mean of its EMA
weights and each named checkpoint's: ``checkpoint.average_weights``), evaluates the EMA weights with the toy-world
detector (canonical, paraphrased and held-out prompts; many-step Euler with classifier-free
guidance) and writes ``transformer.safetensors`` (float16, to keep ``assets/`` small), ``config.yaml``
and ``README.md`` (how it was trained, the eval table, the command that made it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safetensors.torch import save_file  # noqa: E402

from train.model_card import command_line  # noqa: E402

from streamgen.checkpoint import average_weights, latest_checkpoint, load_checkpoint  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config, to_yaml  # noqa: E402
from streamgen.eval_suite import teacher_eval  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.toyworld.evaluate import format_table  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--out", default="assets/teacher")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: train.eval_steps)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: train.guidance_scale)")
    ap.add_argument("--about", default="", help="how the teacher was trained, when one command does not say it "
                    "(warm starts, resumed runs with new settings; markdown, goes into the model card)")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint directory of the run (default: its latest)")
    ap.add_argument("--average", action="append", default=[],
                    help="another checkpoint directory (same model) whose EMA weights are averaged in (repeatable)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg: TeacherRunConfig = load_config(args.config, args.overrides, schema=TeacherRunConfig)
    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(cfg.train.run_dir)
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {cfg.train.run_dir}/checkpoints: train first (train/teacher.py)")
    if not (ckpt / "ema.safetensors").is_file():
        raise SystemExit(f"{ckpt} is not a teacher checkpoint (no ema.safetensors): pass a "
                         f"{cfg.train.run_dir}/checkpoints/step_N directory")
    model, ema = CausalWanModel(cfg.model), CausalWanModel(cfg.model)
    state = load_checkpoint(ckpt, {"model": model, "ema": ema})
    if args.average:
        ema.load_state_dict(average_weights([ckpt, *args.average]), strict=True)
    ema.eval()
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    steps = args.steps or cfg.train.eval_steps
    guidance = args.guidance or cfg.train.guidance_scale
    rows = []
    for split, captions in (("train", "canonical"), ("train", "paraphrase"), ("heldout", "canonical")):
        r, _ = teacher_eval(ema, vae, text, cfg, num_prompts=args.prompts, steps=steps, guidance=guidance,
                            seed=4321, split=split, captions=captions)
        rows += r
    table = format_table(rows)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in ema.state_dict().items()}, str(out / "transformer.safetensors"))
    (out / "config.yaml").write_text(to_yaml(cfg))
    n = sum(p.numel() for p in ema.parameters())
    log = Path(cfg.train.run_dir) / "log.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines() if '"loss"' in line] if log.is_file() else []
    last = [r for r in logged if r["step"] <= state["step"]][-50:]  # up to the exported step
    loss = sum(r["loss"] for r in last) / max(len(last), 1)
    cmd = command_line("train/export_teacher.py", argv)
    averaged = (f", averaged uniformly with the EMA weights of {', '.join(f'`{a}`' for a in args.average)}"
                if args.average else "")
    (out / "README.md").write_text(
        f"# Toy-world teacher (bidirectional Wan DiT)\n\n"
        f"{n / 1e6:.2f} M parameters ({cfg.model.num_layers} layers, dim {cfg.model.dim}, patch {tuple(cfg.model.patch_size)}), "
        f"trained by flow matching ({cfg.train.timestep_sampling.replace('_', '-')} noise levels, shift {cfg.train.timestep_shift}; "
        f"{cfg.model.prediction} prediction) on {type(vae).__name__} latents (`{cfg.vae_path}`) of "
        f"toy-world clips of {cfg.train.latent_frames} latent frames, conditioned on all-MiniLM-L6-v2 token states "
        f"({cfg.train.caption_dropout:.0%} caption dropout for CFG, {cfg.train.paraphrase_prob:.0%} paraphrased captions, "
        f"held-out (shape, colour, motion) combinations never seen). Training: `python train/teacher.py --config "
        f"configs/teacher_toy.yaml`, {state['step']} steps of batch {cfg.train.batch_size} (mean loss of the last 50 logged "
        f"steps {loss:.4f}); these are the EMA weights (decay {cfg.train.ema_decay}){averaged}, stored in float16.\n\n"
        f"## How it was trained\n\n{args.about or '(the command above, from scratch)'}\n\n"
        f"## Eval ({steps} Euler steps, CFG {guidance}, {args.prompts} prompts per row, streamgen.toyworld detector)\n\n"
        f"```\n{table}\n```\n\nMade by: `{cmd}`\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
