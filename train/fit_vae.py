"""Fit a toy-world VAE on toy-world clips and evaluate it.

    python train/fit_vae.py --out assets/vae [--kind pca|layered|tracked] [--z-dim 64] [--clips 1500] [--eval-clips 200]

``pca`` (``PCAVideoVAE``): PCA of space-time pixel patches. ``layered`` (``LayeredVAE``): backdrop and object colour
channels plus PCA of the object's coverage patches. ``tracked`` (``TrackedLayeredVAE``): the same colours, the
coverage of one frame per latent frame and the object's track through each 4-frame group (``--like DIR``: reuse a
fitted layered VAE's colour statistics and coverage basis, so a teacher trained on it can warm-start).

Prints PSNR, detector accuracy on decoded clips next to ground truth, and encode / decode time
per latent chunk; writes the weights and a model card (README.md) into --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.data import frames_to_tensor as to_tensor  # noqa: E402
from streamgen.toyworld.evaluate import evaluate_clip, format_table  # noqa: E402
from streamgen.toyworld.render import render_batch  # noqa: E402
from streamgen.toyworld.world import sample_spec  # noqa: E402
from streamgen.vae import LayeredVAE, PCAVideoVAE, PredictiveTrackedVAE, TrackedLayeredVAE, load_vae  # noqa: E402


def to_uint8(video: torch.Tensor) -> np.ndarray:
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/vae")
    ap.add_argument("--kind", choices=("pca", "layered", "tracked", "predictive"), default="pca")
    ap.add_argument("--z-dim", type=int, default=64)
    ap.add_argument("--clips", type=int, default=1500)
    ap.add_argument("--frames", type=int, default=13)
    ap.add_argument("--eval-clips", type=int, default=200)
    ap.add_argument("--eval-frames", type=int, default=33)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-power", type=float, default=0.5,
                    help="latent channel c is divided by std_c ** p (0: one global scale, 1: whitened)")
    ap.add_argument("--colour-gain", type=float, default=2.0, help="layered, tracked: std of the colour and track channels")
    ap.add_argument("--like", default=None, help="tracked: a fitted layered VAE whose colour statistics and basis to keep; "
                    "predictive (required): the fitted tracked VAE whose colours and basis it uses")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    train = to_tensor(render_batch([sample_spec(rng, "train") for _ in range(args.clips)], args.frames))
    kinds = {"pca": lambda: PCAVideoVAE(args.z_dim, args.scale_power),
             "layered": lambda: LayeredVAE(args.z_dim, args.scale_power, args.colour_gain),
             "tracked": lambda: TrackedLayeredVAE(args.z_dim, args.scale_power, args.colour_gain),
             "predictive": lambda: None}
    vae = kinds[args.kind]()
    if args.like and args.kind not in ("tracked", "predictive"):
        ap.error("--like applies to --kind tracked and predictive only")
    if args.kind == "predictive":
        if not args.like:
            ap.error("--kind predictive needs --like DIR: a fitted tracked VAE (train/fit_vae.py --kind tracked)")
        vae = PredictiveTrackedVAE.from_tracked(load_vae(args.like), train)
        stats = {"explained": float("nan"), "explained_first": float("nan")}  # the basis is the tracked VAE's
    else:
        stats = vae.fit(train, like=load_vae(args.like)) if args.like else vae.fit(train)
    fit_s = time.time() - t0
    del train

    erng = np.random.default_rng(args.seed + 1)
    specs = [sample_spec(erng, "any") for _ in range(args.eval_clips)]
    gt = render_batch(specs, args.eval_frames)
    rows_gt, rows_dec, psnrs, enc_t, dec_t = [], [], [], [], []
    for spec, clip in zip(specs, gt):
        x = to_tensor(clip[None])
        t = time.perf_counter(); z = vae.encode(x); enc_t.append(time.perf_counter() - t)
        dec = vae.stream_decoder()
        t = time.perf_counter(); parts = [dec.decode(z[:, :, i : i + 1]) for i in range(z.shape[2])]; dec_t.append((time.perf_counter() - t) / z.shape[2])
        out = to_uint8(torch.cat(parts, dim=2))[0]
        psnrs.append(psnr(out, clip))
        rows_gt.append(evaluate_clip(clip, spec).row())
        rows_dec.append(evaluate_clip(out, spec).row())

    def mean_row(rows, name):
        keys = ["colour", "shape", "background", "motion", "presence", "speed_ratio"]
        return {"frames": name, **{k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in rows])) for k in keys}}

    table = format_table([mean_row(rows_gt, "ground truth"), mean_row(rows_dec, f"{args.kind} VAE z={args.z_dim}")])
    summary = (
        f"PSNR {statistics.mean(psnrs):.2f} dB (median {statistics.median(psnrs):.2f}); explained variance "
        f"{stats['explained']:.4f} (first frame {stats['explained_first']:.4f}); fit {fit_s:.0f} s on {args.clips} clips; "
        f"encode {1000 * statistics.median(enc_t):.2f} ms per {args.eval_frames}-frame clip, "
        f"decode {1000 * statistics.median(dec_t):.2f} ms per latent frame"
    )
    print(table)
    print(summary)
    vae.save(args.out)
    cmd = "python train/fit_vae.py " + " ".join(sys.argv[1:])
    what = {
        "pca": f"# Embedded default VAE: PCA space-time patch autoencoder\n\n"
               f"Linear autoencoder with the Wan VAE's geometry (8x spatial, 4x temporal, causal, 1 + 4k frames):\n"
               f"each 4x8x8x3 pixel patch (the first frame: 1x8x8x3) is projected on its top {args.z_dim} principal\n"
               f"directions. Latent channel c is divided by std_c ** {args.scale_power} (std_c: the component's standard\n"
               f"deviation; 0 = one global scale, 1 = whitened like the Wan VAE's latents_std), then all by one constant\n"
               f"for unit average variance (see PCAVideoVAE).",
        "layered": f"# Layered toy-world VAE: colour channels + object-coverage PCA\n\n"
                   f"The Wan VAE's geometry (8x spatial, 4x temporal, causal, 1 + 4k frames). Channels 0-2: the backdrop\n"
                   f"colour, 3-5: the object colour (constant per latent frame, std {args.colour_gain}); channels 6-{args.z_dim - 1}:\n"
                   f"the top {args.z_dim - 6} principal directions of the object's 4x8x8 coverage patches (the first frame: 1x8x8),\n"
                   f"scaled by std_c ** {args.scale_power}. Decode: backdrop + (object - backdrop) * coverage, each colour read\n"
                   f"as its channels' frame mean. Assumes one backdrop and at most one object per frame (see LayeredVAE).",
        "tracked": f"# Tracked layered toy-world VAE: colour channels, one coverage frame and a track per latent frame\n\n"
                   f"The Wan VAE's geometry (8x spatial, 4x temporal, causal, 1 + 4k frames). Channels 0-2: the backdrop\n"
                   f"colour, 3-5: the object colour; channels 6-{args.z_dim - 4}: the top {args.z_dim - 9} principal directions of\n"
                   f"the object's 8x8 coverage patches of one frame (the first frame; in each later 4-frame group its last\n"
                   f"frame); channels {args.z_dim - 3}-{args.z_dim - 1}: the object's track through the group (velocity x, y of its box, bounces\n"
                   f"replayed, and size rate; zero in the first latent frame). Colour and track channels are constant fields of std\n"
                   f"{args.colour_gain}. Decode: the coverage moved back along the track for the group's earlier frames, then\n"
                   f"backdrop + (object - backdrop) * coverage (see TrackedLayeredVAE)."
                   + (f" Colour statistics and coverage basis taken from `{args.like}`." if args.like else ""),
        "predictive": f"# Predictive tracked toy-world VAE: colours, first frame, then track + residual per latent frame\n\n"
                      f"The Wan VAE's geometry (8x spatial, 4x temporal, causal, 1 + 4k frames) and the channels of `{args.like}`\n"
                      f"(colours, coverage basis), but each later latent frame holds the forward track (velocity just after\n"
                      f"the previous group, and size rate) and the PCA projection of the residual of its last frame after\n"
                      f"moving the keyframe outline along the tracks (a codec's P-frame; see PredictiveTrackedVAE). Decode\n"
                      f"is sequential: the stream decoder keeps the keyframe and where it is.",
    }[args.kind]
    (Path(args.out) / "README.md").write_text(
        f"{what}\nFitted in closed form on {args.clips} toy-world training clips of {args.frames} frames. "
        + ("Decoding a latent\nframe needs the decoder's placement after the previous one; streaming decode is the whole-video decode's loop.\n\n"
           if args.kind == "predictive" else "Decoding a\nlatent frame needs no other frame, so streaming decode is exact.\n\n")
        + f"Made by: `{cmd}`\n\n## Evaluation on {args.eval_clips} random clips of {args.eval_frames} frames\n\n"
        f"Detector accuracy (streamgen.toyworld) on ground truth vs on decoded clips:\n\n```\n{table}\n```\n\n{summary}\n"
    )


if __name__ == "__main__":
    main()
