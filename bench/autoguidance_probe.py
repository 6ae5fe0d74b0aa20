"""Does guiding the teacher with a weaker version of itself (autoguidance) fix its layouts?

    python bench/autoguidance_probe.py --teacher runs/teacher_grow10 --guide assets/teacher \
        [--scale 1 --scale 2 ...] [--cfg 2] [--prompts 16] [--steps 30] [--save DIR] [key=value ...]

Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself") guide a model with a
smaller or shorter-trained one of the same family: the difference between the two points away from
the errors the weaker one makes more of (incoherent, out-of-distribution samples) without CFG's loss
of variety. Our teacher's samples fail on coherence (objects in several pieces), so it is worth a test.

Every row samples the same noise for the same stratified canonical prompts (``suite_specs``) with
``sample_full``: CFG at ``--cfg`` plus autoguidance at each ``--scale`` (1 = none) against each
``--guide``; the detector scores them. Each model's depth is read from its weights, so a 10-block
teacher can be guided by a 6-block one; the rest of the model config comes from ``--config``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.eval_suite import mean_row, suite_specs  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import teacher_sigmas  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip, format_table  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="weights source of the model to sample")
    ap.add_argument("--guide", action="append", default=[], help="weights source of a weaker model (repeatable)")
    ap.add_argument("--scale", type=float, action="append", default=[], help="autoguidance scale (1 = off; repeatable)")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--save", default=None,
                    help="write each row's decoded clips and their targets to SAVE/<row>.npz (uint8 [N, F, H, W, 3])")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    vae = load_vae(cfg.vae_path)
    text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
    model = load_teacher(cfg, args.teacher)
    guides = {g: load_teacher(cfg, g) for g in args.guide}
    h, w = cfg.video.height // vae.spatial, cfg.video.width // vae.spatial
    sig = teacher_sigmas(args.steps, cfg.train.timestep_shift)
    specs = suite_specs(args.prompts, "train", args.seed)
    uncond = model.encode_context(text.encode([""]))
    runs = [(None, 1.0)] + [(g, s) for g in guides for s in args.scale if s != 1.0]
    rows = []
    for name, scale in runs:
        clips, frames = [], []
        for i, spec in enumerate(specs):
            states = text.encode([canonical_caption(spec)])
            noise = torch.randn(1, vae.z_dim, cfg.train.latent_frames, h, w,
                                generator=torch.Generator().manual_seed(args.seed + i))
            guide = None
            if name is not None:
                gm = guides[name]
                gctx = gm.encode_context(states)
                guide = lambda x, t, x0_prev, gm=gm, gctx=gctx: gm(x, t, gctx, None, x0_prev)  # noqa: E731
            lat = sample_full(model, model.encode_context(states), uncond, noise, sig, args.cfg,
                              guide=guide, guide_scale=scale)
            frames.append(to_uint8(vae.decode(lat.float())))
            clips.append(evaluate_clip(frames[-1], spec).row())
        if args.save:
            out = Path(args.save)
            out.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out / f"row{len(rows)}.npz", frames=np.stack(frames),
                                captions=np.array([canonical_caption(s) for s in specs]))
        rows.append(mean_row(clips, teacher=args.teacher, guide=name or "-", autoguidance=scale, cfg=args.cfg))
        print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))


if __name__ == "__main__":
    main()
