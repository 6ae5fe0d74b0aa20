"""What the exporters' model cards share: the command line that made them."""
from __future__ import annotations

import shlex
import sys


def command_line(script: str, argv: list[str] | None) -> str:
    """``python <script> <argv>`` as a card quotes it; an ``--about`` text is the card's own section, so the
    command names it instead of repeating it."""
    words = list(argv if argv is not None else sys.argv[1:])
    for i, w in enumerate(words):
        if w == "--about" and i + 1 < len(words):
            words[i + 1] = "(the section above)"
        elif w.startswith("--about="):
            words[i] = "--about=(the section above)"
    return f"python {script} " + shlex.join(words)
