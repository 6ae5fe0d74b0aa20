"""Does a decoder change what the detector sees in generated videos? The same generated latents,
decoded by each VAE given (the PCA decoder vs a learned one), scored with the toy-world detector.

    python bench/decoder_probe.py --teacher assets/teacher --vae assets/vae --vae runs/vae_refined \
        [--prompts 32] [--steps 30] [--guidance 2] [--student runs/ode_init/student]

Teacher rows: one 4-latent-frame clip per canonical training prompt, many-step Euler with CFG
(``sample_full``), the latents sampled once and decoded by every VAE. Student rows (``--student``):
streamed through ``StreamingPipeline`` (the sampler never reads the decoder, so the latents are the
same for every VAE: same seeds). All VAEs must share the latent space (same PCA encoder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.distill import load_weights  # noqa: E402
from streamgen.eval_suite import mean_row, suite_specs  # noqa: E402
from streamgen.model import CausalWanModel  # noqa: E402
from streamgen.rollout import sample_full  # noqa: E402
from streamgen.sampler import teacher_sigmas  # noqa: E402
from streamgen.text import load_text_encoder  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip, format_table  # noqa: E402
from streamgen.vae import load_vae  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402


class TruncatedDecode:
    """Decode with ``vae`` after zeroing every latent channel from ``keep`` on."""

    def __init__(self, vae, keep: int):
        self.vae, self.keep = vae, keep

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, self.keep :] = 0
        return self.vae.decode(z)

    def __getattr__(self, name):
        return getattr(self.vae, name)


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="assets/teacher", help="teacher weights: a model directory (assets/teacher), "
                    "a run directory (its latest checkpoint's EMA), a checkpoint directory or a file")
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--vae", action="append", required=True, help="VAE directory (repeat: the first is the reference)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--student", default=None, help="also stream this student model directory")
    ap.add_argument("--student-frames", type=int, default=49)
    ap.add_argument("--truncate", type=int, action="append", default=[],
                    help="also decode with the first VAE keeping only the first K latent channels (PCA: the coarsest "
                         "components; the rest set to 0 = their mean): are the samples' coarse components right?")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    vaes = {v: load_vae(v) for v in args.vae}
    first = next(iter(vaes.values()))
    for k in args.truncate:
        vaes[f"{args.vae[0]} first {k} channels"] = TruncatedDecode(first, k)
    specs = suite_specs(args.prompts, "train", args.seed)
    rows = []
    if args.teacher:
        cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
        model = CausalWanModel(cfg.model)
        src = load_weights(model, args.teacher, "ema")
        model.eval()
        text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length)
        ref = next(iter(vaes.values()))
        h, w = cfg.video.height // ref.spatial, cfg.video.width // ref.spatial
        sig = teacher_sigmas(args.steps, cfg.train.timestep_shift)
        uncond = model.encode_context(text.encode([""]))
        per = {v: [] for v in vaes}
        for i, spec in enumerate(specs):
            g = torch.Generator().manual_seed(args.seed + i)
            noise = torch.randn(1, ref.z_dim, cfg.train.latent_frames, h, w, generator=g)
            lat = sample_full(model, model.encode_context(text.encode([canonical_caption(spec)])), uncond, noise, sig,
                              args.guidance)
            for v, vae in vaes.items():
                per[v].append(evaluate_clip(to_uint8(vae.decode(lat.float())), spec).row())
        for v in vaes:
            rows.append(mean_row(per[v], model=f"teacher ({src.parent.name}) {args.steps} steps cfg {args.guidance}", vae=v))
    if args.student:
        from streamgen.pipeline import StreamingPipeline

        base = StreamingPipeline.from_pretrained(args.student)
        for v, vae in vaes.items():
            if isinstance(vae, TruncatedDecode):  # the pipeline decodes through stream_decoder
                continue
            pipe = StreamingPipeline(base.model, vae, base.text_encoder, base.config)
            clips = [evaluate_clip(pipe.generate(canonical_caption(s), num_frames=args.student_frames, seed=args.seed + i), s).row()
                     for i, s in enumerate(specs)]
            rows.append(mean_row(clips, model=f"student {args.student} ({args.student_frames} frames)", vae=v))
    print(format_table(rows))


if __name__ == "__main__":
    main()
