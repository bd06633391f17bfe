"""benchmarks/gpu_check.py, the prepared GPU check, run on the CPU with tiny sizes (``--device cpu --quick``).

The section list and the numbers each section must report are written out here, not read from the script, so a
section that disappears or stops reporting a number fails the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

#: section key → its row label in the Markdown table
SECTIONS = {"a_methods": "(a)", "b_extraction": "(b)", "c_uflow_training": "(c)", "d_checkpoint": "(d)",
            "e_evaluation": "(e)"}
METHODS = ("uflow", "msflow", "sanflow")


def _run(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The script as an operator runs it, single-threaded (a shared CPU), writing into ``out``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), "--threads", "1", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _numbers_or_error(rows: dict, keys: tuple[str, ...]) -> list[str]:
    """What is wrong with ``rows`` (name → dict): each row needs every key as a finite number, or an error string."""
    problems = []
    for name, row in rows.items():
        if isinstance(row.get("error"), str) and row["error"]:
            continue
        problems += [f"{name}.{k} = {row.get(k)!r}" for k in keys if not _number(row.get(k))]
    return problems


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc


def test_every_section_reports_numbers_or_an_error(quick_run):
    data, _, _ = quick_run
    sections = data["sections"]
    assert list(sections) == list(SECTIONS)
    for key, sec in sections.items():
        assert sec["status"] in ("ok", "partial", "error"), (key, sec)  # nothing skipped within the budget
        assert _number(sec["seconds"]), (key, sec)
        if sec["status"] == "error":
            assert isinstance(sec["error"], str) and sec["error"], (key, sec)
            continue
        res = sec["result"]
        if key == "a_methods":
            assert set(res["methods"]) == set(METHODS)
            assert not _numbers_or_error(res["methods"], ("train_s", "eval_device_s", "eval_cpu_s", "max_abs_diff",
                                                          "mean_z2_rel_diff"))
        elif key == "b_extraction":
            assert set(res["modes"]) == {"fp32", "tf32", "bf16_autocast"}
            assert not _numbers_or_error(res["modes"], ("images_per_s", "ms_per_batch"))
            for mode, row in res["modes"].items():
                if "error" not in row:
                    assert len(row["drift"]) == 2 and all(_number(d["max_rel"]) for d in row["drift"]), mode
        elif key == "c_uflow_training":
            assert {row["tf32"] for row in res["variants"].values()} == {False, True}
            assert not _numbers_or_error(res["variants"], ("ms_per_image", "ms_per_step", "last_loss"))
        elif key == "d_checkpoint":
            assert res["places"]
            assert not _numbers_or_error(res["places"], ("size_mb", "save_s_median", "load_s"))
        elif key == "e_evaluation":
            assert set(res["stages_s"]) == {"decode", "extraction", "flow", "scoring", "nfa", "metrics"}
            assert all(_number(v) and v >= 0 for v in res["stages_s"].values())
            assert _number(res["metrics"]["pixel_auroc"])


def test_nothing_fails_on_the_cpu(quick_run):
    """On the CPU every part runs: an error here is a bug of the script (or of the library's CPU path)."""
    data, _, _ = quick_run
    errors = {k: s["error"] for k, s in data["sections"].items() if s["status"] != "ok"}
    assert not errors, errors
    methods = data["sections"]["a_methods"]["result"]["methods"]
    # the same checkpoint evaluated twice on the CPU, the backbone rebuilt from the same seed: identical metrics
    assert all(m["max_abs_diff"] == 0.0 and m["mean_z2_rel_diff"] == 0.0 for m in methods.values()), methods
    e = data["sections"]["e_evaluation"]["result"]
    assert e["max_abs_diff_vs_predict_maps"] < 1e-9  # the split timing computes what predict_maps computes


def test_markdown_has_a_row_per_section_and_the_device(quick_run):
    data, md, proc = quick_run
    rows = [line for line in md.splitlines() if line.startswith("| (")]
    for key, label in SECTIONS.items():
        matching = [r for r in rows if r.startswith(f"| {label} ")]
        assert len(matching) == 1, (label, rows)
        assert f"| {data['sections'][key]['status']} |" in matching[0]
    assert data["meta"]["device_name"] in md and data["meta"]["torch"] in md and data["meta"]["date"] in md
    assert "quick mode" in md
    for key in SECTIONS:  # progress lines: each section's start and end with seconds
        assert f"{key}: start" in proc.stdout and f"{key}: ok in " in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (its folder on ``sys.path`` for its ``common`` import)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


def test_sections_past_the_budget_are_skipped_with_a_note(tmp_path, gpu_check):
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--budget-minutes", "0"]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(data["sections"]) == list(SECTIONS)
    for sec in data["sections"].values():
        assert sec["status"] == "skipped" and "skipped" in sec["note"], sec
    md = (tmp_path / "gpu_check.md").read_text()
    assert sum(line.startswith("| (") and "| skipped |" in line for line in md.splitlines()) == len(SECTIONS)


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, gpu_check):
    """One section raising leaves a one-line error in the JSON; the following sections run."""

    def boom(ctx):
        raise RuntimeError("CUDA out of memory\nsecond line")

    def fine(ctx):
        return dict(value=1.0)

    monkeypatch.setattr(gpu_check, "RUNNERS", {k: (boom if k == "b_extraction" else fine) for k in SECTIONS})
    monkeypatch.setattr(gpu_check, "summary", lambda key, res: "fine")
    monkeypatch.setattr(gpu_check, "details", lambda key, res: ["fine"])
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["b_extraction"]["status"] == "error"
    assert sections["b_extraction"]["error"] == "RuntimeError: CUDA out of memory"
    assert [s["status"] for k, s in sections.items() if k != "b_extraction"] == ["ok"] * 4
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| error |" in md and "RuntimeError: CUDA out of memory" in md
