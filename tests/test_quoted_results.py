"""Chapter 7 quotes the real-bottle comparison as a static table: it must be the one the benchmark wrote last."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _markdown(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _first_table(lines: list[str]) -> list[str]:
    """The rows (header included, separator left out) of the first Markdown table in ``lines``."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [line for line in lines[start:end] if "---" not in line]


def test_chapter7_bottle_table_is_the_benchmarks_current_one():
    results = (REPO / "benchmarks" / "results" / "methods_bottle.md").read_text().splitlines()
    runs = {r["run"] for r in json.loads((REPO / "benchmarks" / "results" / "methods_bottle.json").read_text())}
    table = _first_table(results)
    assert len(table) == 1 + len(runs) >= 6, "the summary should hold the header and one row per method"
    text = _markdown(REPO / "book" / "07_beyond_uflow.ipynb")
    missing = [line for line in table if line not in text]
    assert not missing, (f"chapter 7 quotes an old table; copy these lines of benchmarks/results/methods_bottle.md "
                         f"into its Markdown: {missing}")


def test_mobilenet_defaults_are_the_ones_validation_chose():
    """The flows' defaults with MobileNetV2 are the tries benchmarks/select_recipes.py chose on validation."""
    from uflow_lib.config import TrainConfig
    from uflow_lib.methods import get_method, resolve

    chosen = json.loads((REPO / "benchmarks" / "results" / "recipe_validation.json").read_text())["chosen"]
    assert set(chosen) == {"uflow", "msflow", "sanflow"}
    for method, c in chosen.items():
        r = resolve(TrainConfig(data="d", category="bottle", out="o", backbone="mobilenetv2", method=method))
        assert (r.epochs, r.batch_size, r.lr) == (c["epochs"], c["batch_size"], c["lr"]), method
        # other CNNs keep the paper's recipe: only MobileNetV2 was validated
        other = resolve(TrainConfig(data="d", category="bottle", out="o", backbone="resnet18", method=method))
        paper = get_method(method).recipe("bottle")
        assert (other.epochs, other.batch_size, other.lr) == (paper.epochs, paper.batch_size, paper.lr), method


def test_chapter5_quotes_the_validation_choice_of_the_nfa_scale():
    """Chapter 5's validation mIoUs for U-Flow are those of benchmarks/results/nfa_scale_validation.json."""
    rows = {r["run"]: r for r in json.loads((REPO / "benchmarks" / "results" / "nfa_scale_validation.json").read_text())}
    uflow = rows["uflow"]
    assert uflow["chosen"] == uflow["rule"] == "scale 1 (16²)"
    c = uflow["candidates"]
    quoted = (f"mIoU {c['scale 1 (16²)']['miou_auto']:.3f}, against {c['all scales']['miou_auto']:.3f} with both "
              f"scales and {c['scale 0 (32²)']['miou_auto']:.3f} with the fine one")
    text = " ".join(_markdown(REPO / "book" / "05_a_contrario_nfa.ipynb").split())
    assert quoted in text
    assert all(r["chosen"] == r["rule"] for r in rows.values()), "validation disagrees with default_nfa_scales"
