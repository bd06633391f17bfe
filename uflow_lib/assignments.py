"""Course assignments generated from the book's solution notebooks, and grading of submitted notebooks.

The chapters in ``book/`` are the single source of truth. An exercise is three cells:

- a Markdown statement starting ``**Exercise N.k — title.**``;
- a code cell tagged ``solution`` whose solution lines sit between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` (nbgrader's markers; code outside them, such as a function signature, stays);
- a code cell tagged ``check`` that calls a check function of :mod:`uflow_lib.exercises`.

A ``**Think!**`` question is answered in the Markdown cell right after it, tagged ``think-answer`` (a folded
``{admonition} Answer`` with ``:class: dropdown`` in the teachers' edition).

``generate`` writes, outside the rendered book:

- ``assignments/student/<chapter>.ipynb``: each solution block replaced by a stub that says what to write and
  raises ``NotImplementedError``; outputs of solution and check cells removed; Think! answers emptied;
- ``assignments/answer_key.md``: every exercise's statement and solution, and every Think! question with its
  answer, for instructors.

``grade`` executes submissions and scores each exercise with the book's own check cell, run on freshly imported
checkers (:mod:`uflow_lib.grading`); a folder of submissions becomes a CSV.

    python -m uflow_lib.assignments generate [--book book] [--out assignments]
    python -m uflow_lib.assignments grade SUBMISSIONS... --csv grades.csv [--book book]
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

__all__ = ["BEGIN", "END", "THINK_TAG", "student_copy", "answer_key", "generate", "exercise_name", "think_pairs"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_EXERCISE = re.compile(r"\*\*Exercise\s+(\d+\.\d+)")
#: Tag of the Markdown cell that answers the Think! question of the cell before it.
THINK_TAG = "think-answer"
_THINK = "**Think!**"
_ADMONITION = re.compile(r"^:::\{admonition\} Answer\n:class: dropdown\n(?P<body>.*)\n:::\s*$", re.S)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercise_name(statement: str) -> str:
    """``"**Exercise 3.2 — shapes.** ..."`` → ``"Exercise 3.2"``."""
    m = _EXERCISE.search(statement)
    return f"Exercise {m.group(1)}" if m else "Exercise"


def _stub_source(source: str, name: str) -> str:
    """Replace every BEGIN/END SOLUTION block by an indented stub that raises NotImplementedError."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE: write the solution of {name} (see the statement above),",
                    f"{indent}# then run the check cell below.",
                    f'{indent}raise NotImplementedError("{name}: not written yet")']
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{name}: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{name}: '{BEGIN}' without '{END}'")
    return "\n".join(out)


def _exercises(nb, strict: bool = True) -> list[tuple[str, int, int, int]]:
    """(name, statement cell, solution cell, check cell) indices, in order.

    ``strict``: solution cells must hold the markers (a solution notebook); ``False`` for student copies.
    """
    found, name, statement = [], None, None
    solution = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and _EXERCISE.search(cell.source):
            name, statement, solution = exercise_name(cell.source), i, None
        elif cell.cell_type == "code" and "solution" in _tags(cell):
            if strict and BEGIN not in cell.source:
                raise ValueError(f"cell {i} is tagged 'solution' but has no '{BEGIN}' marker")
            solution = i
        elif cell.cell_type == "code" and "check" in _tags(cell):
            if name is None or solution is None:
                raise ValueError(f"check cell {i} has no exercise statement and solution cell before it")
            found.append((name, statement, solution, i))
            solution = None
    return found


def _think_question(source: str) -> str:
    """The Think! paragraph of a Markdown cell (from ``**Think!**`` to the next blank line), blockquote marks off."""
    start = source.index(_THINK)
    para = source[start:].split("\n\n")[0]
    return "\n".join(line.removeprefix("> ").removeprefix(">") for line in para.splitlines()).strip()


def think_pairs(nb) -> list[tuple[str, str]]:
    """(question, answer) of every Think! of notebook ``nb``, in order.

    Raises ValueError, naming the cell, where a Think! cell is not followed by a well-formed answer cell, where an
    answer cell follows no Think!, or where a cell asks two questions.
    """
    pairs = []
    for i, cell in enumerate(nb.cells):
        if THINK_TAG in _tags(cell):
            prev = nb.cells[i - 1] if i else None
            if prev is None or prev.cell_type != "markdown" or _THINK not in prev.source:
                raise ValueError(f"cell {i} is tagged '{THINK_TAG}' but the cell before it asks no Think! question")
            continue
        if cell.cell_type != "markdown" or _THINK not in cell.source:
            continue
        if cell.source.count(_THINK) > 1:
            raise ValueError(f"cell {i} asks {cell.source.count(_THINK)} Think! questions: one per cell, each "
                             f"followed by its '{THINK_TAG}' cell")
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        if nxt is None or THINK_TAG not in _tags(nxt):
            raise ValueError(f"cell {i} asks a Think! question without a '{THINK_TAG}' Markdown cell after it")
        match = _ADMONITION.match(nxt.source.strip())
        if nxt.cell_type != "markdown" or not match or not match.group("body").strip():
            raise ValueError(f"cell {i + 1} ('{THINK_TAG}') must be Markdown of the form ':::{{admonition}} Answer' "
                             f"/ ':class: dropdown' / the answer / ':::'")
        pairs.append((_think_question(cell.source), match.group("body").strip()))
    return pairs


def student_copy(nb):
    """A copy of notebook ``nb`` with solutions stubbed, the outputs of solution and check cells removed and the
    Think! answer cells emptied (the answers go to the answer key)."""
    nb = copy.deepcopy(nb)
    for name, _, sol, check in _exercises(nb):
        nb.cells[sol].source = _stub_source(nb.cells[sol].source, name)
        for i in (sol, check):
            nb.cells[i].outputs, nb.cells[i].execution_count = [], None
    for cell in nb.cells:  # emptied, not removed: cell indices stay those of the book (grading relies on it)
        if THINK_TAG in _tags(cell):
            cell.source, cell.metadata["tags"] = "", [t for t in _tags(cell) if t != THINK_TAG]
    return nb


def answer_key(notebooks: dict[str, object]) -> str:
    """Markdown answer key: for each chapter, every exercise (statement and solution code) and every Think!
    question with its answer."""
    lines = ["# Answer key (instructors)", "", "Generated by `python -m uflow_lib.assignments generate` from the "
             "solution notebooks in `book/`; do not edit by hand.", ""]
    for chapter, nb in notebooks.items():
        exercises, thinks = _exercises(nb), think_pairs(nb)
        if not exercises and not thinks:
            continue
        lines += [f"## {chapter}", ""]
        for name, st, sol, _ in exercises:
            lines += [nb.cells[st].source.strip(), "", "```python", nb.cells[sol].source.strip(), "```", ""]
        if thinks:
            lines += ["### Think! questions", ""]
        for question, answer in thinks:
            quoted = [f"> {line}" if line else ">" for line in f"**Answer.** {answer}".splitlines()]
            lines += [question, "", *quoted, ""]
    return "\n".join(lines)


def _chapters(book: Path) -> list[Path]:
    return sorted(p for p in book.glob("[0-9][0-9]_*.ipynb"))


def generate(book: str | Path = "book", out: str | Path = "assignments") -> list[Path]:
    """Write student copies and the answer key; returns the written paths."""
    book, out = Path(book), Path(out)
    (out / "student").mkdir(parents=True, exist_ok=True)
    notebooks, written = {}, []
    for path in _chapters(book):
        nb = nbformat.read(path, as_version=4)
        notebooks[path.stem] = nb
        if _exercises(nb) or think_pairs(nb):
            target = out / "student" / path.name
            nbformat.write(student_copy(nb), target)
            written.append(target)
    key = out / "answer_key.md"
    key.write_text(answer_key(notebooks))
    return written + [key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uflow_lib.assignments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write student copies and the answer key")
    g.add_argument("--book", default="book")
    g.add_argument("--out", default="assignments")
    r = sub.add_parser("grade", help="execute notebooks and score each exercise with the book's check (1 = passed)")
    r.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    r.add_argument("--csv", help="write the scores here")
    r.add_argument("--cwd", help="folder to run the notebooks in (default: each notebook's folder)")
    r.add_argument("--book", help="folder of the solution chapters (default: the book beside uflow_lib)")
    a = ap.parse_args(argv)
    if a.command == "generate":
        for p in generate(a.book, a.out):
            print(f"wrote {p}")
        return 0
    from .grading import grade

    results = grade(a.paths, a.csv, a.cwd, a.book)
    for r_ in results:
        first = r_.message.splitlines()[0] if r_.message else ""
        review = f"  [review: {'; '.join(r_.review)}]" if r_.review else ""
        print(f"{r_.notebook:32s} {r_.exercise:13s} {int(r_.passed)} check cell {r_.check_cell:7s} {first}{review}")
    print(f"{sum(r_.passed for r_ in results)} of {len(results)} exercises passed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
