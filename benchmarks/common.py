"""What the benchmark scripts share: the repository on ``sys.path`` and the real data and weights of ``../shared``.

Import it first in a script (``from common import ...``; the scripts' folder is on ``sys.path`` when run as
``python benchmarks/NAME.py``): it puts the repository on ``sys.path`` and sets ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from uflow_lib.features import MOBILENETV2_FILE  # noqa: E402
from uflow_lib.runtime import cpu_model  # noqa: E402,F401  (re-exported: the machine line names the CPU)

#: ``../shared`` beside the repository: real MVTec AD data and the offline MobileNetV2 (never copied here)
SHARED = REPO.parent / "shared"
MVTEC_ROOT = SHARED / "data" / "mvtec_ad"
WEIGHTS = SHARED / "weights" / MOBILENETV2_FILE
RESULTS = REPO / "benchmarks" / "results"


def have_bottle() -> bool:
    """Whether the real bottle category and the offline weights are there (else the script skips, saying why)."""
    if (MVTEC_ROOT / "bottle").is_dir() and WEIGHTS.is_file():
        return True
    print("skipped: ../shared/data/mvtec_ad/bottle or ../shared/weights not found beside the repository")
    return False


def machine_line(load: float | None = None) -> str:
    """``Machine: <arch> (<cpu model>), <n> CPUs, Python <v>, torch <v>`` (and the 1-minute load average at the
    start, when given; the machine is shared), for a results file."""
    import torch

    model = cpu_model()
    line = (f"Machine: {platform.processor() or platform.machine()}{f' ({model})' if model else ''}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}")
    return line + ("" if load is None else f"; load average {load:.2f} at the start")


def run_record() -> dict:
    """What a run records about where it ran, at its start: ``machine`` (:func:`machine_line`) and ``load`` (the
    1-minute load average). Reports assembled from saved runs read them back with :func:`runs_machine_line`."""
    return dict(machine=machine_line(), load=os.getloadavg()[0])


def runs_machine_line(runs: list[dict]) -> str:
    """The machine line of a report assembled from saved runs, from what each run recorded (:func:`run_record`):
    a report may be written later, or on another machine (``--report-only``), so the current machine would be the
    wrong one. Runs saved before runs recorded it are counted as such."""
    recorded = [r for r in runs if r.get("machine")]
    machines = list(dict.fromkeys(r["machine"].removeprefix("Machine: ") for r in recorded))
    if not machines:
        return "Machine: not recorded with these runs"
    line = ("Machine: " if len(machines) == 1 else "Machines: ") + "; ".join(machines)
    loads = [r.get("load", r.get("load_at_start")) for r in recorded]
    loads = [x for x in loads if x is not None]
    if loads:
        span = f"{min(loads):.2f}" if min(loads) == max(loads) else f"{min(loads):.2f}–{max(loads):.2f}"
        line += f"; load average {span} at the start of {'the run' if len(recorded) == 1 else 'each run'}"
    if len(recorded) < len(runs):
        line += f" ({len(runs) - len(recorded)} of {len(runs)} runs did not record theirs)"
    return line


def mean_std(values, digits: int = 4) -> str:
    """``mean ± std`` (ddof 1) of ``values`` for a results table; the value alone for one, ``—`` for none."""
    import numpy as np

    values = list(values)
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


#: Runs ``python -m uflow_lib`` with sys.argv set, then writes the process's peak resident set (KiB) to a file.
_WRAP = ("import atexit, os, resource, runpy, sys; sys.argv = ['uflow_lib', *sys.argv[1:]]; "
         "atexit.register(lambda: open(os.environ['BENCH_RSS_FILE'], 'w').write("
         "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))); runpy.run_module('uflow_lib', run_name='__main__')")


def run_cli(args: list[str], rss_file: Path) -> tuple[str, float, float]:
    """``python -m uflow_lib ARGS`` in a fresh 1-thread process → (stdout, wall seconds, its peak RSS in MB)."""
    import subprocess
    import time

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _WRAP, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                               "BENCH_RSS_FILE": str(rss_file)})
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"python -m uflow_lib {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout, wall, int(rss_file.read_text()) / 1024  # ru_maxrss is in KiB on Linux
