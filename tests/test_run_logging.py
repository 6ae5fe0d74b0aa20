"""Run.loop logs each metric averaged over the steps since the last log that reported it, so a metric
that only some steps report (the DMD generator's, every k-th step) is logged whatever log_every is."""
import json

import torch

from streamgen.config import TrainConfig
from streamgen.trainer import Run


def test_loop_averages_metrics_since_the_last_log(tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=10, batch_size=1, log_every=4, ckpt_every=100, eval_every=0)
    m = torch.nn.Linear(1, 1)
    run = Run(cfg, {"train": {"steps": 10}}, {"m": m}, {"m": torch.optim.SGD(m.parameters(), lr=0.1)})

    def step_fn(step):  # "loss" = step on every step; "gen" = 100 * step on every 3rd (steps 0, 3, 6, 9)
        return {"loss": float(step), **({"gen": 100.0 * step} if step % 3 == 0 else {})}

    run.loop(step_fn)
    recs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in recs] == [4, 8, 10]
    assert [r["loss"] for r in recs] == [1.5, 5.5, 8.5]  # mean of steps 0-3, 4-7, 8-9
    assert [r.get("gen") for r in recs] == [150.0, 600.0, 900.0]  # steps {0, 3}, {6}, {9}
