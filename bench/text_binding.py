"""Does the teacher take an object's colour and shape from the prompt or from the noisy input?

    python bench/text_binding.py --weights assets/teacher/transformer.safetensors [--stills 32] [--sigma 0.5 ...]

Real still frames (``toy_batch``, one latent frame each) are noised to each sigma and denoised in one step
(conditional x0 estimate, self-conditioning input empty) under four prompts: the frame's own canonical caption, the
caption with the object's colour swapped for another palette colour (never the background's), the caption with the
shape swapped, and the empty caption.
- Colour: the share of the decoded estimate's pixels on the object's true position (the clean frame's object mask)
  whose colour is the prompt's / the frame's own, read as blends with the true backdrop (``blend_colours``).
- Shape: the share of stills whose one detected object has the prompt's / the frame's own shape.

Training captions never contradict their clip, so a teacher that binds an attribute to the text paints the swapped
one where the input shows it faintly, and a teacher that reads it off the noisy input keeps the frame's own. The
empty caption is the input-only baseline.
``--source 0.9`` builds the inputs as a sampler's path does (``distill.path_correction_input``: the model's own
estimate from sigma 0.9, a shapeless blob, noised back down): then only the prompt can give the shape.
``--coarse 3`` noises the stills' first 3 latent channels only (``train.coarse_input``'s inputs: place and colour, no outline).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_teacher_parts  # noqa: E402
from streamgen.config import TeacherRunConfig, load_config  # noqa: E402
from streamgen.data import toy_batch  # noqa: E402
from streamgen.distill import coarse_latents, path_correction_input  # noqa: E402
from streamgen.sampler import timestep, x0_from_flow  # noqa: E402
from streamgen.toyworld.captions import canonical_caption  # noqa: E402
from streamgen.toyworld.detector import detect_frames  # noqa: E402
from streamgen.toyworld.world import COLOURS, PALETTE_RGB, SHAPES  # noqa: E402
from streamgen.video import to_uint8  # noqa: E402

OBJECT_RGB_DISTANCE = 60.0  # a clean frame's pixel this far from the backdrop colour is on the object (rims excluded)


def blend_colours(frame: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per masked pixel of ``frame`` ``[H, W, 3]``: the palette index whose blend with ``background``
    (``a * colour + (1 - a) * background``, a in (0.1, 1]) is nearest, or -1 (no colour: a <= 0.1). A posterior
    mean at high noise is such a blend (the object's position is uncertain), so the nearest palette colour
    of the pixel itself would name a third colour."""
    d = frame[mask].astype(np.float32) - background  # [N, 3]
    u = PALETTE_RGB.astype(np.float32) - background  # [C, 3]
    norm = (u**2).sum(-1)
    a = np.clip(d @ u.T / np.maximum(norm, 1e-6), 0.0, 1.0)  # [N, C]
    resid = ((d[:, None, :] - a[..., None] * u[None]) ** 2).sum(-1)
    resid[:, norm < 1e-6] = np.inf  # the background itself
    best = resid.argmin(1)
    return np.where(a[np.arange(len(best)), best] > 0.1, best, -1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "teacher_toy.yaml"))
    ap.add_argument("--stills", type=int, default=32)
    ap.add_argument("--sigma", type=float, action="append", default=None)
    ap.add_argument("--seed", type=int, default=91)
    ap.add_argument("--coarse", type=int, default=0,
                    help="noise the stills' first COARSE latent channels only, as train.coarse_input does (0 = all)")
    ap.add_argument("--source", type=float, default=0.0,
                    help="build each input as path correction does: the own-caption estimate from this level, noised "
                         "back down (0 = the real still, noised)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    sigmas = args.sigma or [0.5, 0.7, 0.8, 0.9]
    cfg = load_config([args.config], args.overrides, schema=TeacherRunConfig)
    model, vae, text = load_teacher_parts(cfg, args.weights)
    names = list(COLOURS)
    batch = toy_batch(vae, args.stills, 1, args.seed, 0, paraphrase_prob=0.0)
    rng = np.random.default_rng(args.seed)
    own_colour = [names.index(s.colour) for s in batch.specs]
    own_shape = [SHAPES.index(s.shape) for s in batch.specs]
    colour_swap = [dataclasses.replace(s, colour=str(rng.choice([c for c in names if c not in (s.colour, s.background)])))
                   for s in batch.specs]
    shape_swap = [dataclasses.replace(s, shape=str(rng.choice([c for c in SHAPES if c != s.shape]))) for s in batch.specs]
    prompts = {  # caption -> the attribute it asks for
        "own caption": ([canonical_caption(s) for s in batch.specs], own_colour, own_shape),
        "colour swapped": ([canonical_caption(s) for s in colour_swap], [names.index(s.colour) for s in colour_swap], own_shape),
        "shape swapped": ([canonical_caption(s) for s in shape_swap], own_colour, [SHAPES.index(s.shape) for s in shape_swap]),
        "empty caption": ([""] * args.stills, own_colour, own_shape),
    }
    contexts = {k: model.encode_context(text.encode(c)) for k, (c, _, _) in prompts.items()}
    x0 = batch.latents
    # the object's pixels in the clean frame (decoded, as the estimates are) and the true backdrop colour
    bgs = [PALETTE_RGB[names.index(s.background)].astype(np.float32) for s in batch.specs]
    masks = [((to_uint8(vae.decode(x0[i : i + 1]))[0].astype(np.float32) - bgs[i]) ** 2).sum(-1) > OBJECT_RGB_DISTANCE**2
             for i in range(args.stills)]
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(x0.shape, generator=g)
    print(f"{args.stills} still frames, one-step conditional x0 estimate. Colour: object pixels in the prompt's colour / in the "
          f"frame's own. Shape: stills whose one detected object has the prompt's shape / the frame's own.")
    cols = ["colour: own caption", "colour: colour swapped", "colour: empty caption", "shape: own caption",
            "shape: shape swapped", "shape: empty caption"]
    print(f"{'sigma':>6}  " + "  ".join(f"{c:>22}" for c in cols))
    def estimate(x, s, ctx):  # one-step conditional x0 estimate at levels s [B]
        return x0_from_flow(x, model(x, timestep(s), ctx), s.view(-1, 1, 1, 1, 1))

    with torch.no_grad():
        for sigma in sigmas:
            s = torch.full((args.stills,), sigma)
            x = (1 - sigma) * (coarse_latents(x0, args.coarse) if args.coarse else x0) + sigma * noise
            if args.source and args.source > sigma:  # a sampler's state: the model's own estimate from higher up
                x, _ = path_correction_input(x0, noise, s, torch.full((args.stills,), args.source),
                                             lambda x, s_from: estimate(x, s_from, contexts["own caption"]))
            est = {k: estimate(x, s, contexts[k]) for k in prompts}
            frames = {k: [to_uint8(vae.decode(e[i : i + 1].float()))[0] for i in range(args.stills)] for k, e in est.items()}
            cells = []
            for k in ("own caption", "colour swapped", "empty caption"):
                c = [blend_colours(f, masks[i], bgs[i]) for i, f in enumerate(frames[k])]
                a = np.array([((c[i] == prompts[k][1][i]).mean(), (c[i] == own_colour[i]).mean()) for i in range(args.stills)])
                cells.append(f"{a[:, 0].mean():.2f} / {a[:, 1].mean():.2f}")
            for k in ("own caption", "shape swapped", "empty caption"):
                det = detect_frames(np.stack(frames[k]))
                shape = np.where(det.present, det.shape, -1)
                cells.append(f"{np.mean(shape == prompts[k][2]):.2f} / {np.mean(shape == own_shape):.2f}")
            print(f"{sigma:6.2f}  " + "  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
