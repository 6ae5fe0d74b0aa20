"""End to end through the command line on a tiny model: mp4 frame counts, kills leave playable files, clear errors."""
import os
import signal
import subprocess
import sys
import time

import pytest

from streamgen.video import read_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
PROMPT = "a red circle moving right on a black background"


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "streamgen", *args], capture_output=True, text=True, env=ENV, timeout=300, **kw)


def test_generate_writes_the_right_number_of_frames(tiny_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    tl = tmp_path / "tl.yaml"
    tl.write_text(f"- {{at: 0, prompt: {PROMPT}}}\n- {{at: 1.0, prompt: a blue square moving up on a white background}}\n")
    r = run_cli("generate", "--timeline", str(tl), "--seconds", "2", "--out", str(out), "--model", str(tiny_model_dir))
    assert r.returncode == 0, r.stderr
    assert "wrote 32 frames" in r.stdout and "FPS" in r.stdout and "first frame after" in r.stdout
    frames = read_video(out)
    assert frames.shape == (32, 32, 32, 3)


def test_infer_script_is_the_cli(tiny_model_dir, tmp_path):
    """``infer/generate.py`` (no install needed, any working directory) makes the CLI's video, byte for byte."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    a, b = tmp_path / "cli.mp4", tmp_path / "script.mp4"
    args = ["--prompt", PROMPT, "--seconds", "1", "--model", str(tiny_model_dir)]
    assert run_cli("generate", *args, "--out", str(a)).returncode == 0
    r = subprocess.run([sys.executable, str(root / "infer" / "generate.py"), *args, "--out", str(b)],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (read_video(a) == read_video(b)).all() and read_video(b).shape[0] == 16
    r = subprocess.run([sys.executable, str(root / "infer" / "eval.py"), str(b), "--prompt", PROMPT],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "colour" in r.stdout, r.stderr


def test_bad_inputs_are_clear_errors(tiny_model_dir, tmp_path):
    r = run_cli("generate", "--prompt", PROMPT, "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mp4"), "cache.windw=3")
    assert r.returncode == 2 and "unknown config key" in r.stderr and "window_frames" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {at: 0, prompt: a}\n- {at: 9, prompt: b}\n")
    r = run_cli("generate", "--timeline", str(bad), "--seconds", "2", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mp4"))
    assert r.returncode == 2 and "entry 2" in r.stderr and "outside the video" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_leaves_a_playable_mp4(tiny_model_dir, tmp_path, sig):
    out = tmp_path / "killed.mp4"
    p = subprocess.Popen([sys.executable, "-m", "streamgen", "generate", "--prompt", PROMPT, "--seconds", "600",
                          "--out", str(out), "--model", str(tiny_model_dir)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.5)
    assert out.exists(), "the writer never started"
    p.send_signal(sig)
    stdout, _ = p.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "interrupted; kept" in stdout
    time.sleep(1.0)  # ffmpeg finishes the file after its input pipe closes
    frames = read_video(out)
    assert len(frames) >= 16 and frames.shape[1:] == (32, 32, 3)
