"""How long each chapter takes to run top to bottom in CI mode on this CPU (the "Run it" lines of the chapters).

Executes a COPY of each chapter (the book is not touched) in a fresh kernel, as ``.ci/execute_chapters.py`` does:
CI mode, the CPU pins of ``book/conftest.py``, an empty chapter cache; torch uses its default threads (all cores).
Times include the kernel start. The kernel talks over IPC sockets: when several notebook runs start at once on one
machine, the choice of TCP ports can race and leave a client waiting forever. The machine may be shared: the
1-minute load average before each chapter is recorded with its time (a time under load is an upper bound).

Writes benchmarks/results/chapter_times.md (+ .json); chapters named on the command line replace their rows and
the others are kept. Needs ../shared (the offline weights; skips with a message otherwise).

    python benchmarks/bench_chapters.py [NN ...]      (default: every chapter)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, have_bottle, machine_line

import nbformat  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

BOOK = REPO / "book"
sys.path.insert(0, str(BOOK))
from conftest import CPU_PINS  # noqa: E402  (also sets UFLOW_BOOK_MODE=ci and HF_HUB_OFFLINE=1)


def run_chapter(path: Path, cache: Path) -> float:
    """Seconds to execute a copy of the chapter at ``path`` in a new kernel (outputs discarded)."""
    nb = nbformat.read(path, as_version=4)
    sockets = Path(tempfile.mkdtemp(prefix="ipc_"))
    km = KernelManager(kernel_name="python3", transport="ipc", connection_file=str(sockets / "kernel.json"))
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, km=km, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(BOOK)}}).execute(env={**os.environ, "UFLOW_BOOK_CACHE": str(cache)})
        return time.perf_counter() - t0
    finally:
        if km.has_kernel:  # a kernel manager given to NotebookClient is not shut down by it
            km.shutdown_kernel(now=True)
        shutil.rmtree(sockets, ignore_errors=True)


def report(result: dict) -> str:
    rows = result["rows"]
    return "\n".join([
        "# Chapters in CI mode: wall-clock time of each, top to bottom, on a CPU", "",
        "Command: `python benchmarks/bench_chapters.py` (from the repository root).", "",
        f"{result['machine']}. CI mode (MobileNetV2 on the generated dataset), CPU pins of book/conftest.py, an empty "
        "chapter cache, a copy of each chapter run in a fresh kernel. The load average is the 1-minute one before "
        "the chapter (2 or more on 2 CPUs: the machine was shared, and the time is an upper bound).", "",
        "| chapter | wall time | load average before | date |", "|---|---|---|---|",
        *[f"| {r['chapter']} | {r['seconds'] / 60:.1f} min | {r['load_before']:.2f} | {r['date']} |" for r in rows],
        ""])


def main(argv: list[str]) -> int:
    if not have_bottle():
        return 0
    os.environ.update(CPU_PINS)
    chapters = [p for p in sorted(BOOK.glob("[0-9][0-9]_*.ipynb")) if not argv or p.name[:2] in argv]
    out = RESULTS / "chapter_times.json"
    old = {r["chapter"]: r for r in json.loads(out.read_text())["rows"]} if out.is_file() else {}
    for path in chapters:
        cache = Path(tempfile.mkdtemp(prefix="uflow_times_"))
        load = os.getloadavg()[0]
        try:
            seconds = run_chapter(path, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        old[path.name] = dict(chapter=path.name, seconds=round(seconds, 1), load_before=round(load, 2),
                              date=time.strftime("%Y-%m-%d"))
        print(old[path.name], flush=True)
    result = dict(machine=machine_line(), mode="ci", rows=[old[k] for k in sorted(old)])
    out.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "chapter_times.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
