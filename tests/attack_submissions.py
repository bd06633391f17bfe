"""Submissions that try to fool the grader, built from the exercises of the real chapters 3 and 6.

``build(root)`` writes ``root/book/`` (two short solution chapters: the exercises of chapters 3 and 6 with the
imports they need) and ``root/submissions/`` (student copies of them, filled in as a cheating or lazy student
would), and returns the two folders. ``python tests/attack_submissions.py DIR`` writes them for a grading run
by hand:

    python tests/attack_submissions.py runs/attack
    python -m uflow_lib.assignments grade runs/attack/submissions --book runs/attack/book --csv runs/attack/grades.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from uflow_lib.assignments import _exercises, student_copy  # noqa: E402

PREAMBLE = {
    "03_u_shaped_flow.ipynb": "import math\nimport torch\nimport torch.nn.functional as F\n"
                              "from uflow_lib.methods.uflow import build_uflow, latent_shapes\n\n"
                              "def split_sizes(v):\n    up = v // 8 * 4\n    return up, v - up",
    "06_reproducing_mvtec.ipynb": "import math\nimport numpy as np",
}
KEEP = {"03_u_shaped_flow.ipynb": ("Exercise 3.1", "Exercise 3.2"),
        "06_reproducing_mvtec.ipynb": ("Exercise 6.1", "Exercise 6.2", "Exercise 6.3")}

# ---- answers (the code of a solution cell, whole) ---------------------------------------------------------------
HONEST_61 = """def best_of_n_inflation(true_value, sigma, n, trials, rng):
    total = 0.0
    for _ in range(trials):
        total += max(rng.normal(true_value, sigma, size=n)) - true_value
    return total / trials"""
HONEST_62 = """def select_then_report(val_scores, test_scores):
    chosen = 0
    for k in range(len(val_scores)):
        if val_scores[k] > val_scores[chosen]:
            chosen = k
    return chosen, test_scores[chosen]"""
HONEST_63 = """def paired_difference(a, b):
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n)"""
TYPED_61 = "def best_of_n_inflation(true_value, sigma, n, trials, rng):\n    return 0.0035"
MONKEYPATCH_61 = TYPED_61 + """

import uflow_lib.exercises.ch06 as _ch06
from uflow_lib import exercises as _ex
_ch06.check_best_of_n = lambda fn: print("✓ Exercise 6.1: correct")
_ex.require = lambda *args, **kwargs: None"""
TYPED_62 = "def select_then_report(val_scores, test_scores):\n    return 3, 0.9512"
FAKE_PRINT_62 = TYPED_62 + '\n\nprint("✓ Exercise 6.2: correct")'
SORT_63 = """def paired_difference(a, b):
    a.sort()                                              # "line the seeds up"
    b.sort()
    d = np.subtract(a, b)
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d))"""
REFERENCE_31 = 'def pixel_unshuffle(x):\n    """(B, C, 2H, 2W) → (B, 4C, H, W)."""\n    return F.pixel_unshuffle(x, 2)'
REFERENCE_32 = "def latent_shapes_by_hand(channels, sizes):\n    return latent_shapes(channels, sizes)"


def _mini_chapter(chapter: Path) -> nbformat.NotebookNode:
    """The chapter's preamble and the cells (statement to check) of the exercises in :data:`KEEP`."""
    nb = nbformat.read(chapter, as_version=4)
    cells = [nbformat.v4.new_code_cell(PREAMBLE[chapter.name])]
    for name, statement, _, check in _exercises(nb):
        if name in KEEP[chapter.name]:
            cells += [nb.cells[i] for i in range(statement, check + 1)
                      if nb.cells[i].cell_type == "markdown" or {"solution", "check"} & set(nb.cells[i].metadata.get("tags", []))]
    mini = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    for cell in mini.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return mini


def _submission(solution: nbformat.NotebookNode, answers: dict[str, str], checks: dict[str, str | None]
                ) -> nbformat.NotebookNode:
    """The student copy of ``solution`` with ``answers`` in solution cells; ``checks`` edits (None: delete)."""
    nb = student_copy(solution)
    drop = []
    for name, _, sol, check in _exercises(solution):
        if name in answers:
            nb.cells[sol].source = answers[name]
        if name in checks:
            if checks[name] is None:
                drop.append(check)
            else:
                nb.cells[check].source = checks[name]
    nb.cells = [c for i, c in enumerate(nb.cells) if i not in drop]
    return nb


def _book_answers(solution: nbformat.NotebookNode) -> dict[str, str]:
    return {name: solution.cells[sol].source for name, _, sol, _ in _exercises(solution)}


def build(root: Path) -> tuple[Path, Path]:
    """Write the mini book and the submissions under ``root``; returns (book folder, submissions folder)."""
    book, subs = root / "book", root / "submissions"
    book.mkdir(parents=True, exist_ok=True)
    subs.mkdir(parents=True, exist_ok=True)
    minis = {}
    for name in KEEP:
        minis[name] = _mini_chapter(REPO / "book" / name)
        nbformat.write(minis[name], book / name)
    ch6, ch3 = minis["06_reproducing_mvtec.ipynb"], minis["03_u_shaped_flow.ipynb"]
    commented = ("# from uflow_lib.exercises.ch06 import check_select_on_validation\n"
                 "# check_select_on_validation(select_then_report)")
    variants = {
        "06_alice_honest.ipynb": _submission(ch6, {"Exercise 6.1": HONEST_61, "Exercise 6.2": HONEST_62,
                                                   "Exercise 6.3": HONEST_63}, {}),
        "06_bob_copy.ipynb": _submission(ch6, _book_answers(ch6), {}),
        "06_carol_monkeypatch.ipynb": _submission(ch6, {"Exercise 6.1": MONKEYPATCH_61, "Exercise 6.2": FAKE_PRINT_62},
                                                  {}),
        "06_dave_check_cells.ipynb": _submission(ch6, {"Exercise 6.3": _book_answers(ch6)["Exercise 6.3"]},
                                                 {"Exercise 6.2": commented, "Exercise 6.3": None}),
        "06_erin_typed_and_sorted.ipynb": _submission(ch6, {"Exercise 6.1": TYPED_61, "Exercise 6.2": TYPED_62,
                                                            "Exercise 6.3": SORT_63}, {}),
        "03_frank_reference_calls.ipynb": _submission(ch3, {"Exercise 3.1": REFERENCE_31,
                                                            "Exercise 3.2": REFERENCE_32}, {}),
    }
    for name, nb in variants.items():
        nbformat.write(nb, subs / name)
    return book, subs


if __name__ == "__main__":
    for folder in build(Path(sys.argv[1])):
        print(f"wrote {folder}")
