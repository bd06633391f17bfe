"""Numbers quoted from benchmarks/results: chapter 7's table, the validated defaults, and every paragraph anywhere
that cites a results file (its decimal numbers must be in that file)."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _markdown(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")  # a cell ends a paragraph


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
    quoted = (f"mIoU {c['scale 1 (16²)']['miou_auto']:.4f}, against {c['all scales']['miou_auto']:.4f} with both "
              f"scales and {c['scale 0 (32²)']['miou_auto']:.4f} with the fine one")
    text = " ".join(_markdown(REPO / "book" / "05_a_contrario_nfa.ipynb").split())
    assert quoted in text
    assert all(r["chosen"] == r["rule"] for r in rows.values()), "validation disagrees with default_nfa_scales"


# --- every quote of a results file, everywhere ------------------------------------------------------------------
# A paragraph (a block between blank lines; a table is one block) of the book, the READMEs or a docstring/comment of
# uflow_lib that names `benchmarks/results/NAME.md` quotes that file: every decimal number in it must be in the file.

_CITED = re.compile(r"benchmarks/results/([\w.\-]+\.md)")
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\d])")


def _blocks(text: str) -> list[str]:
    """Paragraphs of Markdown/docstring ``text`` (split at blank lines), fenced code blocks left out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [b for b in re.split(r"\n\s*\n", text) if b.strip()]


def _python_prose(path: Path) -> str:
    """Docstrings and comments of a Python file, each as its own paragraphs."""
    source = path.read_text()
    parts = [ast.get_docstring(node) or "" for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    comments = [line.split("#", 1)[1] if line.lstrip().startswith("#") else "" for line in source.splitlines()]
    return "\n\n".join(parts + ["\n".join(comments)])  # a code line ends a block of comment lines


@functools.lru_cache(maxsize=1)
def _prose_sources() -> dict[str, str]:
    out = {str(p.relative_to(REPO)): _markdown(p) for p in sorted((REPO / "book").glob("*.ipynb"))}
    for p in [*sorted((REPO / "book").glob("*.md")), REPO / "README.md", REPO / "benchmarks" / "README.md"]:
        out[str(p.relative_to(REPO))] = p.read_text()
    for p in sorted((REPO / "uflow_lib").rglob("*.py")):
        out[str(p.relative_to(REPO))] = _python_prose(p)
    return out


def _occurs(number: str, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", text) is not None


def unquoted_numbers(block: str) -> list[str]:
    """Decimal numbers of ``block`` missing from every results file it cites (or the cited files that are missing)."""
    files = sorted(set(_CITED.findall(block)))
    missing = [f"{f} (no such file)" for f in files if not (REPO / "benchmarks" / "results" / f).is_file()]
    texts = "\n".join((REPO / "benchmarks" / "results" / f).read_text() for f in files
                      if (REPO / "benchmarks" / "results" / f).is_file())
    return missing + [n for n in _DECIMAL.findall(block) if not _occurs(n, texts)]


def test_the_quote_rule_catches_a_wrong_number():
    good = "U-Flow reaches 0.9479 (`benchmarks/results/methods_bottle.md`)."
    assert unquoted_numbers(good) == []
    assert unquoted_numbers(good.replace("0.9479", "0.95")) == ["0.95"]  # a rounding is not the file's number
    assert unquoted_numbers("0.5 in `benchmarks/results/nothing.md`") == ["nothing.md (no such file)", "0.5"]


@pytest.mark.parametrize("source", sorted(_prose_sources()))
def test_results_files_are_cited_by_their_path(source):
    """A results file named without ``benchmarks/results/`` would escape the check below."""
    names = "|".join(re.escape(p.name) for p in (REPO / "benchmarks" / "results").glob("*.md"))
    bare = sorted(set(re.findall(rf"(?<!benchmarks/results/)\b({names})", _prose_sources()[source])))
    assert not bare, f"{source}: write `benchmarks/results/NAME.md` for {bare}"


@pytest.mark.parametrize("source", sorted(_prose_sources()))
def test_every_quoted_number_is_in_the_results_file_it_cites(source):
    text = _prose_sources()[source]
    wrong = {b.strip()[:90]: unquoted_numbers(b) for b in _blocks(text) if _CITED.search(b) and unquoted_numbers(b)}
    assert not wrong, (f"{source}: paragraphs citing benchmarks/results quote numbers that are not in the cited "
                       f"file (re-run the benchmark and copy its numbers, or move other numbers to another "
                       f"paragraph): {wrong}")
