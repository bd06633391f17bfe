"""Execute chapters in place as their committed outputs must be made: CI mode, pinned CPU code paths, fresh cache.

    .venv/bin/python .ci/execute_chapters.py                 # every chapter
    .venv/bin/python .ci/execute_chapters.py 03 07           # chapters 3 and 7

Each chapter runs in a new kernel with the environment of book/conftest.py (the one nbval compares under),
an empty chapter cache (``UFLOW_BOOK_CACHE`` in a temporary folder, so nothing trained earlier is reused), and
its ``metadata.execution`` timestamps stripped and consecutive stream outputs merged afterwards, and this CPU's
signature recorded in its metadata (``metadata.uflow.outputs_made_on``: nbval compares exactly on that CPU, within a
tolerance elsewhere; book/cpu_outputs.py). Prints each chapter's wall-clock time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parents[1] / "book"
sys.path.insert(0, str(BOOK))
from conftest import CPU_PINS  # noqa: E402  (also sets UFLOW_BOOK_MODE=ci and HF_HUB_OFFLINE=1)
from cpu_outputs import record_made_on  # noqa: E402


def coalesce_streams(nb: nbformat.NotebookNode) -> None:
    """Merge consecutive stdout (stderr) outputs of a cell into one, as a notebook front end shows them."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if merged and out.output_type == "stream" and merged[-1].output_type == "stream" \
                    and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        if "outputs" in cell:
            cell.outputs = merged


def execute(path: Path, cache: Path) -> float:
    """Run ``path`` top to bottom in place; returns seconds."""
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute(
        env={**os.environ, "UFLOW_BOOK_CACHE": str(cache)})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    coalesce_streams(nb)
    record_made_on(nb.metadata)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    os.environ.update(CPU_PINS)
    chapters = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if argv:
        chapters = [c for c in chapters if c.name[:2] in argv]
    with tempfile.TemporaryDirectory(prefix="uflow_book_cache_") as cache:
        for path in chapters:
            print(f"{path.name}: {execute(path, Path(cache)):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
