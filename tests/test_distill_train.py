"""2-process CPU (gloo) runs of the distillation trainers: ODE pairs + regression, and DMD with a hard
kill mid-run, resume, and the loss trajectory of an uninterrupted run.

Processes are forked from the test process (no re-import: seconds instead of a torchrun start-up
per launch) and join a gloo group through the usual torchrun environment variables; each child
uses one thread. ``train/distill.py`` under ``torchrun --nproc_per_node=2`` is the same code path.
"""
import importlib.util
import json
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from distill_helpers import write_smoke_setup

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_train_{name}", ROOT / "train" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, script: str, argv: list, crash_at_step):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()
    mod = _script(script)
    if crash_at_step is not None and rank == 0:  # die like `kill -9` at the start of that step
        plan = mod.D.plan_rollout

        def crashing(d, T, C, K, seed, step):
            if step == crash_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return plan(d, T, C, K, seed, step)

        mod.D.plan_rollout = crashing
    mod.main(argv)


def launch(script: str, argv: list, world: int = 2, crash_at_step=None, timeout: float = 120) -> list:
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, script, argv, crash_at_step)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout
    if crash_at_step is not None:
        procs[0].join(timeout)
        for p in procs[1:]:  # its peer is stuck in (or failing) a collective: kill it too
            p.join(1.0)
            if p.is_alive():
                p.kill()
    for p in procs:
        p.join(max(deadline - time.time(), 1))
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def records(run_dir: Path) -> dict[int, dict]:
    """The last logged record of every step (a resumed run re-logs steps after its checkpoint)."""
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec and ("critic_loss" in rec or "loss" in rec):
            out[rec["step"]] = rec
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_smoke_setup(tmp_path_factory.mktemp("distill"), reward_beta=1.0)


def test_ode_pairs_and_regression_two_processes(setup):
    root = setup.parent
    assert launch("ode_init", ["pairs", "--config", str(setup)]) == [0, 0]
    shards = sorted((root / "pairs").glob("shard_*.safetensors"))
    assert len(shards) == 2  # 3 pairs in shards of 2, one shard per process
    pairs = _script("ode_init").load_pairs(root / "pairs", json.loads((root / "pairs" / "pairs.json").read_text())["sigmas"])
    assert pairs[0].shape == (3, 5, 8, 3, 4, 4) and len(pairs[1]) == 3 and torch.isfinite(pairs[0]).all()
    assert launch("ode_init", ["regress", "--config", str(setup)]) == [0, 0]
    rec = records(root / "ode_run")
    assert sorted(rec) == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rec.values())
    assert (root / "ode_run" / "student" / "transformer.safetensors").is_file()


def test_dmd_two_processes_kill_and_resume_repeats_the_uninterrupted_run(setup):
    root = setup.parent
    ref_dir, killed_dir = root / "ref", root / "killed"
    assert launch("distill", ["--config", str(setup), f"train.run_dir={ref_dir}"]) == [0, 0]
    codes = launch("distill", ["--config", str(setup), f"train.run_dir={killed_dir}"], crash_at_step=5)
    assert codes[0] == -signal.SIGKILL
    assert (killed_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert max(records(killed_dir)) == 5  # steps 1..5 logged, killed at the start of the 6th
    assert launch("distill", ["--config", str(setup), f"train.run_dir={killed_dir}"]) == [0, 0]

    ref, got = records(ref_dir), records(killed_dir)
    assert sorted(ref) == sorted(got) == list(range(1, 9))
    log = (killed_dir / "log.jsonl").read_text()
    assert '"resumed"' in log and '"step": 4' in log
    for s in ref:
        for key in ("critic_loss", "dmd_loss", "dmd_grad", "reward", "windows", "switch", "exit_step"):
            assert (key in ref[s]) == (key in got[s])
            if key in ref[s]:
                assert got[s][key] == ref[s][key], (s, key, got[s][key], ref[s][key])
    gen_steps = [s for s in ref if "dmd_loss" in ref[s]]
    assert gen_steps == [1, 3, 5, 7]  # dfake_gen_update_ratio 2: generator on steps 0, 2, 4, 6
    assert any(ref[s]["switch"] >= 0 for s in ref) and any(ref[s]["windows"] > 1 for s in ref)
    evals = [json.loads(line) for line in (ref_dir / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [8] and evals[0]["eval"][0]["clips"] == 1  # streamed + scored
    assert (ref_dir / "eval" / "step_0000008.txt").is_file()
    from streamgen.video import read_video

    clip = read_video(ref_dir / "eval" / "step_0000008.mp4")  # the scored clip, as a video beside the table
    assert clip.shape[0] > 0 and clip.std() > 0
    # the exported EMA student is a model directory the inference pipeline reads
    from streamgen.config import load_config
    from streamgen.loaders import load_wan_weights
    from streamgen.model import CausalWanModel

    export = ref_dir / "student"
    cfg = load_config([export / "config.yaml"])
    load_wan_weights(CausalWanModel(cfg.model), export / "transformer.safetensors")
    assert cfg.cache.window_frames == 3 and (export / "vae" / "config.json").is_file()


def test_export_default_writes_a_model_card_and_float16_weights_the_pipeline_loads(setup, tmp_path):
    root = setup.parent
    student = root / "ref" / "student"
    if not student.is_dir():  # run alone: make the student the DMD test makes
        assert launch("distill", ["--config", str(setup), f"train.run_dir={root / 'ref'}"]) == [0, 0]
    out = tmp_path / "default"
    _script("export_default").main(["--student", str(student), "--out", str(out), "--prompts", "1",
                                    "--seconds", "0.5", "--long-seconds", "0", "--about", "smoke run"])
    card = (out / "README.md").read_text()
    for row in ("train/canonical", "train/paraphrase", "heldout/canonical", "switch (1 attribute)", "smoke run"):
        assert row in card
    assert card.count("smoke run") == 1  # the command line in the card does not repeat the --about text
    # the tiny student's VAE is not assets/vae, so it travels with the weights
    assert (out / "vae" / "config.json").is_file() and f"`{out.as_posix()}/vae`" in card  # the card names it
    from safetensors.torch import load_file

    from streamgen.pipeline import StreamingPipeline

    assert all(v.dtype == torch.float16 for v in load_file(str(out / "transformer.safetensors")).values())
    ref, got = StreamingPipeline.from_pretrained(student), StreamingPipeline.from_pretrained(out)
    assert got.config == ref.config
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), got.model.state_dict().items()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-4), k  # float16 rounding only


def test_ode_init_takes_overrides_after_the_stage_and_config():
    """`ode_init.py pairs --config X key=value` (the docstring's order) parses; plain argparse refused it."""
    args = _script("ode_init").parse(["pairs", "--config", "a.yaml", "distill.teacher=runs/t", "ode.steps=5"])
    assert (args.stage, args.config, args.overrides) == ("pairs", ["a.yaml"], ["distill.teacher=runs/t", "ode.steps=5"])
