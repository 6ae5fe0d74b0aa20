"""Generate a video from a prompt or a prompt timeline (the `streamgen generate` command).

    python infer/generate.py --timeline assets/timelines/demo.yaml --out outputs/demo.mp4
    python infer/generate.py --prompt "a red circle moving right on a black background" --seconds 10 --model DIR

Same flags as `streamgen generate --help`; this script exists so the repository runs without installing the
console script (`pip install -e .` provides `streamgen`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
