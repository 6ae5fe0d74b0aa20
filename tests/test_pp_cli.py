"""``torchrun --nproc_per_node=2 -m streamgen generate --pp 2`` end to end: the real launch path
(env:// rendezvous, torchrun's store) writes the same video as the single-process pipeline."""
import os
import subprocess
import sys

import numpy as np

from streamgen.cli import main
from streamgen.timeline import Timeline
from streamgen.video import VideoWriter, read_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
A, B = "a red circle moving right on a black background", "a blue square moving up on a white background"


def test_torchrun_pp2_writes_the_single_process_video(tiny_model_dir, tiny_pipe, tmp_path):
    tl = tmp_path / "tl.yaml"
    tl.write_text(f"- {{at: 0, prompt: {A}}}\n- {{at: 1.0, prompt: {B}}}\n")
    out = tmp_path / "pp.mp4"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "streamgen", "generate", "--pp", "2", "--timeline", str(tl),
                        "--seconds", "2", "--seed", "5", "--out", str(out), "--model", str(tiny_model_dir)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 32 frames" in r.stdout and "2 pipeline ranks" in r.stdout
    fps = tiny_pipe.config.video.fps
    ref = tiny_pipe.generate(Timeline.load(tl, fps), num_frames=32, seed=5)
    with VideoWriter(tmp_path / "ref.mp4", fps) as w:  # the same encoder settings on the reference frames
        w.append(ref)
    got, want = read_video(out), read_video(tmp_path / "ref.mp4")
    assert got.shape == want.shape == (32, 32, 32, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 0.5


def test_pp_without_torchrun_is_a_clear_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(["generate", "--pp", "2", "--prompt", A, "--seconds", "1", "--model", str(tiny_model_dir),
               "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "torchrun --nproc_per_node=2" in capsys.readouterr().err
