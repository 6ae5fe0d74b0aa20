"""Stream the fixed toy-world prompts and timelines and print one eval table (the `streamgen suite` command).

    python infer/suite.py --prompts 8

Same flags as `streamgen suite --help`; this script exists so the repository runs without installing the
console script (`pip install -e .` provides `streamgen`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgen.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["suite", *sys.argv[1:]]))
