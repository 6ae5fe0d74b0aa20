"""Copy a run's latest checkpoint as a small weights-only snapshot (for git), or restore one.

    python train/snapshot.py save runs/teacher checkpoints/teacher      # weights + step, no optimizer state
    python train/snapshot.py restore checkpoints/teacher runs/teacher   # then train/teacher.py resumes from it

A run directory stays out of git; a snapshot lets the next session (possibly on a new machine)
continue a long run. Resuming from a snapshot restarts the optimizer moments, so it is not
bit-exact like resuming from the run's own checkpoints.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.checkpoint import latest_checkpoint  # noqa: E402


def save(run_dir: Path, out: Path) -> Path:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {run_dir}/checkpoints")
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    shutil.rmtree(out, ignore_errors=True)
    dst = out / ckpt.name
    dst.mkdir(parents=True)
    for f in ckpt.glob("*.safetensors"):
        shutil.copy2(f, dst / f.name)
    torch.save({"step": int(state["step"])}, dst / "state.pt")
    (out / "latest").write_text(ckpt.name)
    return dst


def restore(snapshot: Path, run_dir: Path) -> Path:
    name = (snapshot / "latest").read_text().strip()
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    if latest_checkpoint(run_dir) is not None:
        raise SystemExit(f"{run_dir} already has checkpoints: it resumes from those; delete them to restore the snapshot")
    shutil.copytree(snapshot / name, root / name)
    (root / "latest").write_text(name)
    return root / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    print((save if a.action == "save" else restore)(a.src, a.dst))


if __name__ == "__main__":
    main()
