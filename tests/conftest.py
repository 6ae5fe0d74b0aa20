import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from helpers import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def minilm():
    from streamgen.text import MiniLMEncoder

    return MiniLMEncoder()


@pytest.fixture
def tiny_pipe(tiny_model_dir, minilm, monkeypatch):
    """A fresh pipeline on the tiny model directory, sharing the session's MiniLM encoder."""
    import streamgen.pipeline as P

    monkeypatch.setattr(P, "load_text_encoder", lambda *a, **k: minilm)
    return P.StreamingPipeline.from_pretrained(tiny_model_dir)
