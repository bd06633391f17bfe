"""Chapter 7 quotes the real-bottle comparison as a static table: it must be the one the benchmark wrote last."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _markdown(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_chapter7_bottle_table_is_the_benchmarks_current_one():
    results = (REPO / "benchmarks" / "results" / "methods_bottle.md").read_text().splitlines()
    rows = [line for line in results if line.startswith("| ") and "---" not in line]
    table = rows[: 1 + len(json.loads((REPO / "benchmarks" / "results" / "methods_bottle.json").read_text()))]
    assert len(table) >= 4, "the results file should hold the header and one row per run"
    text = _markdown(REPO / "book" / "07_beyond_uflow.ipynb")
    missing = [line for line in table if line not in text]
    assert not missing, (f"chapter 7 quotes an old table; copy these lines of benchmarks/results/methods_bottle.md "
                         f"into its Markdown: {missing}")
