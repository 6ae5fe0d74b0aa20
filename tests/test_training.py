"""Training infrastructure: SIGKILL + resume reproduces the uninterrupted loss trajectory; 2-process run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny_pca_vae

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TINY = """
model: {num_attention_heads: 2, attention_head_dim: 12, in_channels: 8, out_channels: 8, text_dim: 384, freq_dim: 16, ffn_dim: 32, num_layers: 2}
video: {height: 32, width: 32, fps: 16}
train: {steps: STEPS, batch_size: 2, lr: 3.0e-4, warmup_steps: 2, latent_frames: 2, image_every: 3, crop: 2, crop_every: 2, path_correction: 0.5, path_sigma_range: [0.5, 0.9], log_every: 1, ckpt_every: 4, eval_every: 0}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tiny_pca_vae(8).save(d / "vae")
    return d


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]  # a resumed run re-logs steps after its checkpoint: keep the last
    return out


def flags(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if key in r}


def cmd(setup, run_dir, steps, launcher=(sys.executable,)):
    cfg = setup / f"tiny_{steps}.yaml"
    cfg.write_text(TINY.replace("STEPS", str(steps)))
    return [*launcher, str(ROOT / "train" / "teacher.py"), "--config", str(cfg), f"train.run_dir={run_dir}", f"vae_path={setup / 'vae'}"]


def test_sigkill_then_resume_matches_uninterrupted(setup):
    steps = 40
    ref_dir, killed_dir = setup / "ref", setup / "killed"
    for d in (ref_dir, killed_dir):
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run(cmd(setup, ref_dir, steps), env=ENV, check=True, capture_output=True, timeout=300)
    p = subprocess.Popen(cmd(setup, killed_dir, steps), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        log = killed_dir / "log.jsonl"
        if log.exists() and max(losses(killed_dir), default=0) >= 10:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = max(losses(killed_dir))
    assert p.returncode == -signal.SIGKILL and done < steps, "the run finished before it could be killed"
    subprocess.run(cmd(setup, killed_dir, steps), env=ENV, check=True, capture_output=True, timeout=300)
    ref, got = losses(ref_dir), losses(killed_dir)
    assert sorted(got) == list(range(1, steps + 1))
    assert any('"resumed"' in line for line in (killed_dir / "log.jsonl").read_text().splitlines())
    assert [got[s] for s in sorted(got)] == [ref[s] for s in sorted(ref)]  # bit-exact trajectory
    # every 3rd step trained on still frames (batch 2 x 2 latent frames -> 4 one-frame clips)
    assert [s for s, im in flags(killed_dir, "image").items() if im] == list(range(3, steps + 1, 3))
    # every 2nd step of each kind trained on object crops (2x2 of the 4x4 latent positions, 4x the clips)
    assert [s for s, c in flags(killed_dir, "crop").items() if c] == [s for s in range(1, steps + 1) if (s - 1) // 3 % 2]
    # about half the steps trained on path-corrected inputs (the model's own estimates), resumed exactly too
    assert 0.2 < sum(flags(killed_dir, "path").values()) / steps < 0.8


def test_two_process_training_smoke(setup):
    run_dir = setup / "ddp"
    shutil.rmtree(run_dir, ignore_errors=True)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517")
    r = subprocess.run(cmd(setup, run_dir, 4, launcher), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es)" in r.stdout
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"


def test_export_teacher_writes_a_loadable_model_card(setup, tmp_path):
    run_dir = setup / "export"
    shutil.rmtree(run_dir, ignore_errors=True)
    evals = ["train.eval_every=2", "train.eval_prompts=3", "train.eval_steps=2"]
    subprocess.run(cmd(setup, run_dir, 2) + evals, env=ENV, check=True, capture_output=True, timeout=300)
    from streamgen.video import read_video

    # the training eval's samples: 3 clips of 5 frames (2 latent frames), 32x32, tiled 3 across
    assert read_video(run_dir / "eval" / "step_0000002.mp4").shape == (5, 32, 96, 3)
    assert (run_dir / "eval" / "step_0000002.txt").is_file()
    cfg = setup / "tiny_2.yaml"
    out = tmp_path / "teacher"
    r = subprocess.run([sys.executable, str(ROOT / "train" / "export_teacher.py"), "--config", str(cfg), "--out", str(out),
                        "--prompts", "1", "--steps", "2", "--about", "warm-started from run X", f"train.run_dir={run_dir}",
                        f"vae_path={setup / 'vae'}"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = (out / "README.md").read_text()
    assert "2 steps of batch 2" in card and "heldout" in card and "paraphrase" in card
    assert card.count("warm-started from run X") == 1  # its own section; the quoted command names it instead
    from safetensors.torch import load_file

    from streamgen.config import TeacherRunConfig, load_config
    from streamgen.model import CausalWanModel

    c = load_config([out / "config.yaml"], schema=TeacherRunConfig)
    CausalWanModel(c.model).load_state_dict(load_file(str(out / "transformer.safetensors")), strict=True)
    # an earlier checkpoint by name; a directory that is not a checkpoint is refused by name
    subprocess.run(cmd(setup, run_dir, 4), env=ENV, check=True, capture_output=True, timeout=300)
    base = [sys.executable, str(ROOT / "train" / "export_teacher.py"), "--config", str(cfg), "--prompts", "1", "--steps", "2",
            f"train.run_dir={run_dir}", f"vae_path={setup / 'vae'}"]
    old = run_dir / "checkpoints" / "step_0000002"
    r = subprocess.run(base + ["--out", str(tmp_path / "t2"), "--checkpoint", str(old)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "2 steps of batch 2" in (tmp_path / "t2" / "README.md").read_text(), r.stderr[-2000:]
    from safetensors.torch import load_file as lf

    assert torch_equal_half(lf(str(tmp_path / "t2" / "transformer.safetensors")), lf(str(old / "ema.safetensors")))
    r = subprocess.run(base + ["--out", str(tmp_path / "t3"), "--checkpoint", str(tmp_path)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "not a teacher checkpoint" in r.stderr
    # --average: the mean of two checkpoints' EMA weights, said so in the card
    new = run_dir / "checkpoints" / "step_0000004"
    r = subprocess.run(base + ["--out", str(tmp_path / "t4"), "--checkpoint", str(new), "--average", str(old)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, a, b = (lf(str(p)) for p in (tmp_path / "t4" / "transformer.safetensors", new / "ema.safetensors",
                                      old / "ema.safetensors"))
    assert torch_equal_half(got, {k: (a[k] + b[k]) / 2 for k in a})
    assert not torch_equal_half(got, a) and "averaged uniformly with the EMA weights of" in (tmp_path / "t4" / "README.md").read_text()


def test_average_weights_refuses_checkpoints_of_different_models(tmp_path):
    import pytest
    import torch
    from safetensors.torch import save_file

    from streamgen.checkpoint import average_weights

    for name, shape in (("a", (2, 3)), ("b", (2, 3)), ("c", (3, 3))):
        (tmp_path / name).mkdir()
        save_file({"w": torch.full(shape, float(ord(name)))}, str(tmp_path / name / "ema.safetensors"))
    assert average_weights([tmp_path / "a", tmp_path / "b"])["w"].tolist() == [[97.5] * 3] * 2
    with pytest.raises(ValueError, match="'w' is \\(3, 3\\)"):
        average_weights([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(FileNotFoundError, match="has no ema.safetensors"):
        average_weights([tmp_path / "a", tmp_path])


def torch_equal_half(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k].half()).all() for k in a)


def test_resume_uses_the_configs_learning_rate(setup):
    """A changed ``train.lr`` on resume takes effect (the checkpoint's stored base LR used to win, silently),
    and an unchanged one resumes on the stored schedule exactly."""
    run_dir = setup / "relr"
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run(cmd(setup, run_dir, 4), env=ENV, check=True, capture_output=True, timeout=300)
    r = subprocess.run(cmd(setup, run_dir, 6) + ["train.lr=1e-4"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "using the config's" in r.stdout, r.stderr[-2000:]
    lr = flags(run_dir, "lr")
    assert [lr[s] for s in (4, 5, 6)] == pytest.approx([3e-4, 1e-4, 1e-4])  # past the 2-step warm-up
    r = subprocess.run(cmd(setup, run_dir, 8) + ["train.lr=1e-4"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "using the config's" not in r.stdout
    assert flags(run_dir, "lr")[8] == pytest.approx(1e-4)


def test_weights_only_snapshot_restores_and_training_continues(setup, tmp_path):
    run_dir = setup / "snap_src"
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run(cmd(setup, run_dir, 4), env=ENV, check=True, capture_output=True, timeout=300)
    snap, resumed = tmp_path / "snap", tmp_path / "resumed"
    for args in (("save", run_dir, snap), ("restore", snap, resumed)):
        subprocess.run([sys.executable, str(ROOT / "train" / "snapshot.py"), *map(str, args)], env=ENV, check=True, timeout=120)
    assert not any("optim" in k for k in __import__("torch").load(snap / "step_0000004" / "state.pt", weights_only=True))
    # a cool-down that started at step 3: the restored run continues it (LR of the global step)
    decay = ["train.lr_decay_start=3", "train.lr_decay_steps=4", "train.lr_min_ratio=0.5"]
    r = subprocess.run(cmd(setup, resumed, 6) + decay, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "fresh optimizer" in r.stdout, r.stderr[-2000:]
    assert sorted(losses(resumed)) == [5, 6]  # continued from step 4
    assert flags(resumed, "lr") == pytest.approx({5: 3e-4 * 0.75, 6: 3e-4 * 0.625})


def test_ema_warmup_tracks_early_weights():
    import torch

    from streamgen.trainer import EMA

    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.999)
    w0 = ema.module.weight.clone()
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, step=0)  # decay min(0.999, 1/10) = 0.1: mostly the new weights
    assert torch.allclose(ema.module.weight, 0.1 * w0 + 0.9 * m.weight)
    before = ema.module.weight.clone()
    ema.update(m, step=10**6)  # warmed up: the configured decay
    assert torch.allclose(ema.module.weight, 0.999 * before + 0.001 * m.weight)


@pytest.mark.parametrize("kind,above_095,below_03", [("uniform", 0.136, 0.125), ("logit_normal", 0.032, 0.025)])
def test_teacher_noise_levels(kind, above_095, below_03):
    """Shifted training noise levels: the high-noise share (where the prompt decides the background)
    and the low-noise share (detail), against the closed form for shift 3."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("teacher_script", ROOT / "train" / "teacher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s = mod.sample_sigmas(200_000, 3.0, torch.Generator().manual_seed(0), kind)
    assert 0 < float(s.min()) and float(s.max()) < 1
    assert abs(float((s > 0.95).float().mean()) - above_095) < 0.005
    assert abs(float((s < 0.3).float().mean()) - below_03) < 0.005


def test_lr_schedule_warmup_stable_decay():
    from streamgen.trainer import warmup_lambda

    f = warmup_lambda(10, decay_start=100, decay_steps=50, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(99) == 1.0
    assert f(125) == pytest.approx(1 - 0.9 * 25 / 50)  # halfway down the linear cool-down
    assert f(150) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
    assert warmup_lambda(10)(10_000) == 1.0  # no decay configured: constant


def test_self_conditioned_teacher_trains_on_its_own_estimate_half_the_time(setup):
    """``model.self_conditioning``: about half the steps (seeded per step) feed the model's own x0 estimate."""
    run_dir = setup / "self_cond"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = subprocess.run(cmd(setup, run_dir, 12) + ["model.self_conditioning=true"], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    sc = flags(run_dir, "self_cond")
    assert sorted(sc) == list(range(1, 13)) and 0 < sum(sc.values()) < 12
    assert all(v == v and v < 1e3 for v in losses(run_dir).values())


def test_path_correction_on_image_steps_only(setup):
    """``train.path_correction_images_only``: path-corrected inputs only on still-image steps (every 3rd here);
    ``train.coarse_input`` takes the steps without path correction."""
    run_dir = setup / "path_images"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = subprocess.run(cmd(setup, run_dir, 6) + ["train.path_correction=1.0", "train.path_correction_images_only=true",
                                                 "train.coarse_input=1.0"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    path, image, coarse = flags(run_dir, "path"), flags(run_dir, "image"), flags(run_dir, "coarse")
    assert sorted(path) == list(range(1, 7)) and path == image and sum(path.values()) == 2
    assert coarse == {s: 1.0 - v for s, v in path.items()}  # train.coarse_input: every step without path correction


def test_counterfactual_inputs_on_the_steps_without_other_substitutes(setup):
    """``train.swap_input``: captioned samples of steps without path correction or coarse input are noised from
    their clip with another shape, motion, a false bounce or a second copy, one per sample (tests/test_counterfactual.py checks the
    renders)."""
    run_dir = setup / "swap"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = subprocess.run(cmd(setup, run_dir, 6) + ["train.path_correction=0", "train.crop=0", "train.crop_every=0",
                                                 "train.coarse_input=0.5", "train.swap_input=1.0",
                                                 "train.swap_attributes=[shape, motion, bounce, count]",
                                                 "train.swap_one_at_a_time=true"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    swap, coarse = flags(run_dir, "swap"), flags(run_dir, "coarse")
    assert sorted(swap) == list(range(1, 7))
    assert all(swap[s] == 0 for s in swap if coarse[s]) and any(swap[s] > 0 for s in swap if not coarse[s])
    assert all(v == v and v < 1e3 for v in losses(run_dir).values())


def test_track_loss_weight_needs_a_tracked_vae(setup):
    """``train.track_loss_weight`` on a VAE without track channels (the tiny PCA VAE) stops before training and
    names the fix."""
    run_dir = setup / "track_weight"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = subprocess.run(cmd(setup, run_dir, 2) + ["train.track_loss_weight=8"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "train.track_loss_weight=1" in r.stderr, r.stderr[-2000:]
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
