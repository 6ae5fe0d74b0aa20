"""Score a toy-world video with the detector (the `streamgen eval` command).

    python infer/eval.py outputs/demo.mp4 --timeline assets/timelines/demo.yaml

Same flags as `streamgen eval --help`; this script exists so the repository runs without installing the
console script (`pip install -e .` provides `streamgen`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
