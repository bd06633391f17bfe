"""The table of bad inputs and faults: every case of ``tests/fault_cases.py`` through the command line.

Builds the cases' world (tiny generated data, two 1-epoch runs with random MobileNetV2 weights, bad weights
files and checkpoints, image folders) in a temporary folder, runs each case as ``python -m uflow_lib ...`` in
its own process (``--in-process``: through ``uflow_lib.cli.main``, faster), checks its exit status and message
as ``tests/test_faults.py`` does, and writes the table: case, command, the one line it prints now.

``--before DIR`` (a copy of the library before these checks, e.g. ``git archive <commit> | tar -x -C DIR``)
adds a column with what that code did with each case: its exit status and the last line of its stderr (a
traceback's last line, or nothing for a silent success). Those runs use a world of their own, whose runs,
caches and outputs are restored before every case, since the old code may change them.

Run from the repository root::

    python benchmarks/fault_table.py            # writes benchmarks/results/fault_table.md (~5 min on 2 CPUs)
    git archive a60024a | (mkdir -p runs/before && tar -x -C runs/before)
    python benchmarks/fault_table.py --before runs/before --before-label "commit a60024a"   # ~15 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from fault_cases import CASES, build_world, check_output, make_read_only, prepare, undo_read_only  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _run(argv: list[str], in_process: bool, repo: Path = REPO) -> tuple[int, str]:
    """Exit status and stderr of ``python -m uflow_lib *argv`` (the library of ``repo``)."""
    if in_process:
        from uflow_lib.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue()
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "uflow_lib", *argv], env=env, capture_output=True, text=True,
                       timeout=600, cwd=repo)
    return p.returncode, p.stderr


#: What a case may change in its world (restored before each run of the old code).
_MUTABLE = ("runs", "cache_bad", "predicted", "new")


def _before(before: Path, tmp: Path) -> dict[str, str]:
    """Case id → ``"<status>: <last stderr line>"`` of the code in ``before``, each case on a restored world."""
    root = tmp / "B"
    paths = build_world(root)
    pristine = tmp / "B_pristine"
    for name in _MUTABLE[:-1]:
        shutil.copytree(root / name, pristine / name)
    read_only_ok = make_read_only(Path(paths["ro"]))
    results = {}
    try:
        for case in CASES:
            for name in _MUTABLE:
                shutil.rmtree(root / name, ignore_errors=True)
                if (pristine / name).exists():
                    shutil.copytree(pristine / name, root / name)
            if case.id == "out-read-only" and not read_only_ok:
                continue
            code, err = _run(prepare(case, paths, str(root / "new" / case.id)), False, before)
            last = err.strip().splitlines()[-1] if err.strip() else "(nothing on stderr)"
            results[case.id] = f"{code}: " + last.replace(f"{root}/", "").replace(str(root), "W")[:300]
            print(f"{'before':>10} {case.id:>28}  {results[case.id][:90]}", flush=True)
    finally:
        undo_read_only(Path(paths["ro"]))
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "fault_table.md"))
    ap.add_argument("--in-process", action="store_true", help="call uflow_lib.cli.main instead of a new process")
    ap.add_argument("--before", type=Path, help="a copy of the library before the checks: add its behaviour")
    ap.add_argument("--before-label", help="how the table names that code (default: the folder's name)")
    a = ap.parse_args()
    rows, failures = [], []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        world_root = Path(tmp) / "W"
        paths = build_world(world_root)
        read_only_ok = make_read_only(Path(paths["ro"]))
        try:
            for case in CASES:
                if case.id == "out-read-only" and not read_only_ok:
                    rows.append((case, "", "(skipped: cannot make a read-only folder here)", ""))
                    continue
                new = str(world_root / "new" / case.id)
                argv = prepare(case, paths, new)
                code, err = _run(argv, a.in_process)
                try:
                    line = check_output(case, code, err, paths, new)
                    status = "ok"
                except AssertionError as e:
                    line, status = err.strip().replace("\n", " / ")[:400], f"FAILED: {e}"[:200]
                    failures.append(case.id)
                short = lambda s: s.replace(f"{world_root}/", "").replace(str(world_root), "W")  # noqa: E731
                command = "python -m uflow_lib " + " ".join(short(x) for x in argv)
                rows.append((case, command, short(line), status))
                print(f"{case.id:>28}  {code}  {status}", flush=True)
        finally:
            undo_read_only(Path(paths["ro"]))
        before = _before(a.before, Path(tmp)) if a.before else {}
    minutes = (time.monotonic() - t0) / 60
    n_err = sum(c.code == 2 for c, *_ in rows)
    lines = [
        "# Bad inputs and faults: what the command line says now",
        "",
        f"Written by `{shlex.join(['python', 'benchmarks/fault_table.py', *sys.argv[1:]])}` "
        f"({'uflow_lib.cli.main in this process' if a.in_process else 'each case in its own process'}) on "
        f"{time.strftime('%Y-%m-%d')}, {platform.platform()}, torch {torch.__version__}, "
        f"{minutes:.1f} min. The cases are `tests/fault_cases.py`; `tests/test_faults.py` runs the same ones "
        f"(status, message, and that nothing was written). Paths are relative to the cases' temporary world: "
        f"`data/` (generated, 64 px), `runs/random` (1 epoch, `--random-weights`), `runs/weights_a` (1 epoch, "
        f"a weights file), `bad/` (damaged files), `new/<case>` (a path that did not exist).",
        "",
        f"{n_err} cases end with exit status 2 and one `error:` line (no traceback; `--debug` shows it); "
        f"{len(rows) - n_err} are faults the command survives, with a `warning:` line and exit status 0. "
        f"Cases checked: {len(rows) - len(failures)} of {len(rows)} as expected"
        + (f"; FAILED: {', '.join(failures)}" if failures else "") + ".",
        "",
    ]
    if before:
        label = a.before_label or a.before.name
        lines += [f"The last column is what the code before these checks ({label}) did: exit status, then the "
                  f"last line of stderr (0 with nothing: a silent success).", ""]
    head = "| # | case | what | status | command | message |" + (" before |" if before else "")
    lines += [head, "|---" * head.count(" | ") + "|---|"]
    for i, (case, command, line, status) in enumerate(rows, 1):
        lines.append(f"| {i} | {case.id} | {_cell(case.what)} | {case.code} | `{_cell(command)}` | {_cell(line)} |"
                     + (f" {_cell(before.get(case.id, ''))} |" if before else ""))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}; {len(failures)} unexpected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
