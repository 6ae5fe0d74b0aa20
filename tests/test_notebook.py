"""Execute notebooks/interactive.ipynb headless with a scripted prompt switch."""
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "interactive.ipynb"
NEW = "a blue square moving up on a white background"


def test_notebook_switches_prompt_live(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("STREAMGEN_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("STREAMGEN_SECONDS", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NB, as_version=4)
    # the scripted user: wait for two chunks, type a prompt, press the button, wait for the end
    nb.cells.append(nbformat.v4.new_code_cell(
        "while len(log) < 2: time.sleep(0.05)\n"
        f"prompt.value = {NEW!r}\n"
        "button.click()\n"
        "switched_at = len(log)\n"
        "worker.join(timeout=240)\n"
        "assert not worker.is_alive()\n"
        f"prompts = [p for _, p in log]\n"
        f"assert prompts[0] != {NEW!r} and prompts[-1] == {NEW!r}, prompts\n"
        f"first_new = prompts.index({NEW!r})\n"
        "assert switched_at <= first_new <= switched_at + 1, (switched_at, first_new)\n"
        "assert len(image.value) > 0\n"
        "print('OK', len(log), first_new)"))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}})
    client.execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert out.startswith("OK"), out
