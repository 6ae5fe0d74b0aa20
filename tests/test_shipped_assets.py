"""What the repository ships fits together: configs load, the shipped teacher loads into the model the
distillation config builds, and assets/ stays under its size budget."""
from pathlib import Path

import pytest
import torch

from streamgen import distill as D
from streamgen.config import DistillRunConfig, StreamGenConfig, TeacherRunConfig, load_config
from streamgen.model import CausalWanModel

ROOT = Path(__file__).resolve().parents[1]
ASSETS_BUDGET_MB = 60  # issue 4: keep the whole of assets/ under 60 MB


@pytest.mark.parametrize("name, schema", [("teacher_toy", TeacherRunConfig), ("distill_toy", DistillRunConfig),
                                          ("tiny", StreamGenConfig), ("wan2.1_t2v_1.3b", StreamGenConfig)])
def test_shipped_configs_load(name, schema):
    load_config([ROOT / "configs" / f"{name}.yaml"], schema=schema)


def test_distillation_config_names_the_shipped_teacher_and_it_loads():
    cfg = load_config([ROOT / "configs" / "distill_toy.yaml"], schema=DistillRunConfig)
    src = ROOT / cfg.distill.teacher
    assert src.is_dir(), f"configs/distill_toy.yaml names {cfg.distill.teacher}, which is not shipped"
    teacher = load_config([src / "config.yaml"], schema=TeacherRunConfig)
    assert teacher.model == cfg.model  # the student, critic and teacher share the teacher's shape
    model = CausalWanModel(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    D.load_weights(model, src, cfg.distill.teacher_module)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)  # really loaded, not left at init


def test_assets_fit_the_budget():
    size = sum(p.stat().st_size for p in (ROOT / "assets").rglob("*") if p.is_file())
    assert size < ASSETS_BUDGET_MB * 2**20, f"assets/ is {size / 2**20:.1f} MB (budget {ASSETS_BUDGET_MB} MB)"
