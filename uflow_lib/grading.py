"""Grading submitted notebooks with the book's own checks, never the student's.

A submission runs cell by cell in one kernel (errors do not stop it). Right after the cells of each exercise the
grader runs that exercise's check cell *as it stands in the solution chapter*, on freshly imported checkers: every
``uflow_lib`` module of the kernel is set aside, the check imports its own copies, and the student's modules are put
back afterwards, so a checker replaced or patched from the notebook has no effect. An exercise scores 1 only when
this fresh check prints its ``✓ Exercise N.k`` line and raises nothing.

Besides the score, each exercise reports (CSV columns):

- ``check_cell``: ``ok``, ``edited`` (its source differs from the book's: commented out, changed arguments, ...)
  or ``missing``;
- ``review``, for the teacher and not scored: calls of the functions the exercise asks the student to write
  (:mod:`uflow_lib.exercises.references`), a solution (nearly) identical to the book's, and code anywhere in the
  notebook that assigns to attributes of modules (a monkeypatch; the fresh check ignores ``uflow_lib``'s, but
  not one of numpy or torch).
"""

from __future__ import annotations

import csv
import difflib
import re
import secrets
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .assignments import _exercises, exercise_name, student_copy
from .exercises.references import code_without_comments, reference_calls

__all__ = ["ExerciseResult", "grade_notebook", "grade", "fresh_check_source", "review_flags", "patches", "COLUMNS"]

COLUMNS = ["notebook", "exercise", "score", "check_cell", "review", "message"]
#: Similarity (difflib ratio of the code lines, comments dropped) from which an answer counts as the book's own.
COPY_SIMILARITY = 0.9
#: Names that usually hold modules in the chapters (aliases imported by the student are added).
_MODULES = ("np", "numpy", "torch", "F", "nn", "math", "scipy", "stats", "special", "ndimage", "sklearn", "builtins",
            "uflow_lib", "exercises", "metrics", "nfa", "reproduce", "inverse_gamma", "msflow", "sanflow", "uflow",
            "FrEIA", "Fm", "Ff", "random")
_IMPORTED = re.compile(r"^\s*(?:import\s+[\w.]+\s+as\s+(\w+)|import\s+(\w+)|from\s+[\w.]+\s+import\s+(.+))$",
                       re.MULTILINE)


@dataclass
class ExerciseResult:
    notebook: str
    exercise: str
    passed: bool
    message: str
    check_cell: str = "ok"
    review: list[str] = field(default_factory=list)

    def row(self) -> list[str | int]:
        """The CSV row of this exercise (columns :data:`COLUMNS`)."""
        return [self.notebook, self.exercise, int(self.passed), self.check_cell, "; ".join(self.review), self.message]


@dataclass
class _Located:
    """Where one exercise sits in a submission: cell indices (``None`` when absent)."""

    statement: int | None = None
    solution: int | None = None
    check: int | None = None

    def anchor(self) -> int | None:
        """The cell after which the fresh check runs: the check cell, else the solution, else the statement."""
        for i in (self.check, self.solution, self.statement):
            if i is not None:
                return i
        return None


def fresh_check_source(check: str, token: str = "") -> str:
    """Code that runs ``check`` (a check cell of the book) on freshly imported ``uflow_lib`` modules.

    The kernel's own ``uflow_lib`` modules (possibly patched) are set aside before and restored after. ``token``
    is printed when the check returned normally (the student's code cannot know it, so it cannot fake an end).
    """
    body = textwrap.indent((check.strip() or "pass") + (f"\nprint({token!r})" if token else ""), "    ")
    return (
        "import sys as _grader_sys\n"
        "_grader_own = [_k for _k in _grader_sys.modules if _k == 'uflow_lib' or _k.startswith('uflow_lib.')]\n"
        "_grader_saved = {_k: _grader_sys.modules.pop(_k) for _k in _grader_own}\n"
        "try:\n"
        f"{body}\n"
        "finally:\n"
        "    for _k in [_k for _k in _grader_sys.modules if _k == 'uflow_lib' or _k.startswith('uflow_lib.')]:\n"
        "        del _grader_sys.modules[_k]\n"
        "    _grader_sys.modules.update(_grader_saved)\n"
        "    del _grader_own, _grader_saved, _grader_sys\n")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _check_function(source: str) -> str | None:
    m = re.search(r"\b(check_\w+)\s*\(", source)
    return m.group(1) if m else None


def _locate(nb, book_checks: dict[str, str]) -> dict[str, _Located]:
    """Find each exercise in a submission by its statement, then its tagged (or recognisable) cells."""
    found: dict[str, _Located] = {}
    current = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and re.search(r"\*\*Exercise\s+\d+\.\d+", cell.source):
            current = exercise_name(cell.source)
            found.setdefault(current, _Located(statement=i))
            continue
        if cell.cell_type != "code" or current is None:
            continue
        where = found[current]
        function = _check_function(book_checks.get(current, "")) or "\0"
        if "solution" in _tags(cell) and where.solution is None:
            where.solution = i
        elif where.check is None and ("check" in _tags(cell) or re.search(rf"\b{function}\b", cell.source)):
            where.check = i
    return found


def _normalised_lines(code: str) -> list[str]:
    return [" ".join(line.split()) for line in code_without_comments(code).splitlines() if line.strip()]


def student_lines(answer: str, stub: str) -> str:
    """The lines of the student's solution cell that are not in the stub they were given."""
    given = {line.strip() for line in stub.splitlines()}
    return "\n".join(line for line in answer.splitlines() if line.strip() not in given)


def _solution_block(source: str) -> str:
    m = re.search(r"### BEGIN SOLUTION\n(.*?)\n\s*### END SOLUTION", source, re.S)
    return m.group(1) if m else ""


def patches(code: str) -> list[str]:
    """Assignments in ``code`` to attributes of modules (``np.allclose = ...``, ``ch06.check_x = ...``), to
    ``check_*`` names, and uses of ``setattr``, ``sys.modules`` or ``builtins``: ways to change what a check sees."""
    code = code_without_comments(code)
    names = set(_MODULES)
    for m in _IMPORTED.finditer(code):
        if m.group(3):
            names |= {part.split(" as ")[-1].strip(" ()") for part in m.group(3).split(",")}
        else:
            names.add(m.group(1) or m.group(2))
    alternatives = "|".join(sorted(re.escape(n) for n in names if n))
    pattern = re.compile(rf"^\s*((?:{alternatives})(?:\.\w+)+|check_\w+)\s*=(?!=)|\b(setattr|sys\.modules|builtins)\b",
                         re.MULTILINE)
    return sorted({m.group(1) or m.group(2) for m in pattern.finditer(code)})


def review_flags(exercise: str, answer: str, stub: str, book_solution: str) -> list[str]:
    """What the teacher should look at in one answer (empty when nothing): reference calls, a copy of the book."""
    mine = student_lines(answer, stub)
    flags = [f"calls {name}" for name in reference_calls(exercise, mine)]
    a, b = _normalised_lines(mine), _normalised_lines(_solution_block(book_solution))
    if a and b:
        ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
        if ratio >= COPY_SIMILARITY:
            flags.append(f"same as the book's solution (similarity {ratio:.2f})")
    return flags


def _added_code(nb, given) -> str:
    """Every line of the submission's code cells that is not in the student copy it started from."""
    lines = {line.strip() for cell in given.cells if cell.cell_type == "code" for line in cell.source.splitlines()}
    return "\n".join(line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()
                     if line.strip() not in lines)


def _has_error(cell) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def _output_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif o.get("output_type") == "error":
            parts.append(f"{o.get('ename')}: {o.get('evalue')}")
    return "".join(parts).strip()


def _book_chapter(path: Path, book: Path) -> Path:
    """The solution chapter of a submission: the same file name, else the same two-digit prefix."""
    if (book / path.name).is_file():
        return book / path.name
    matches = sorted(book.glob(f"{path.name[:2]}_*.ipynb"))
    if not matches:
        raise FileNotFoundError(f"no chapter in {book} for the submission {path.name}")
    return matches[0]


def _execute_with_fresh_checks(nb, after: dict[int, list[str]], book_checks: dict[str, str], timeout: int,
                               cwd: Path) -> dict[str, tuple[str, bool]]:
    """Run ``nb`` cell by cell (errors allowed); after cell ``i`` run the fresh checks of the exercises ``after[i]``.

    Returns, per exercise, the fresh check's output and whether it returned normally (its end token printed).
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    client.comm_open_handlers = {}  # nbclient's widget handler can stall execution until the timeout
    fresh: dict[str, tuple[str, bool]] = {}
    token = f"grader-{secrets.token_hex(8)}"
    with client.setup_kernel():
        client.reset_execution_trackers()
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)
            for name in after.get(i, []):
                probe = nbformat.v4.new_code_cell(fresh_check_source(book_checks[name], token))
                own = nb.cells[i]
                client.execute_cell(probe, i, store_history=False)
                nb.cells[i] = own  # nbclient stores the executed cell at the index it is given
                text = _output_text(probe)
                completed = token in text and not _has_error(probe)
                fresh[name] = ("\n".join(line for line in text.splitlines() if token not in line).strip(), completed)
    return fresh


def _check_cell_state(nb, located: _Located, book_check: str) -> str:
    """``ok``, ``edited`` or ``missing``: the submission's check cell compared with the book's."""
    if located.check is None:
        return "missing"
    return "ok" if nb.cells[located.check].source.strip() == book_check.strip() else "edited"


def grade_notebook(path: str | Path, timeout: int = 1200, cwd: str | Path | None = None,
                   book: str | Path | None = None) -> list[ExerciseResult]:
    """Execute a submission and score each exercise of its chapter with the book's check (see the module doc)."""
    path = Path(path)
    book = Path(book) if book is not None else Path(__file__).resolve().parents[1] / "book"
    solution = nbformat.read(_book_chapter(path, book), as_version=4)
    stubs = student_copy(solution)
    exercises = _exercises(solution)
    book_checks = {name: solution.cells[chk].source for name, _, _, chk in exercises}
    nb = nbformat.read(path, as_version=4)
    where = _locate(nb, book_checks)
    after: dict[int, list[str]] = {}
    for name, _, _, _ in exercises:
        anchor = where.get(name, _Located()).anchor()
        if anchor is not None:
            after.setdefault(anchor, []).append(name)
    fresh = _execute_with_fresh_checks(nb, after, book_checks, timeout, Path(cwd or path.parent))
    patched = patches(_added_code(nb, stubs))
    results = []
    for name, _, sol, _ in exercises:
        located = where.get(name, _Located())
        message, completed = fresh.get(name, (f"{name} is not in the notebook (its statement is missing)", False))
        answer = nb.cells[located.solution].source if located.solution is not None else ""
        review = review_flags(name, answer, stubs.cells[sol].source, solution.cells[sol].source)
        if patched:
            review.append(f"the notebook patches library code ({', '.join(patched)})")
        results.append(ExerciseResult(path.name, name, completed and f"✓ {name}:" in message, message,
                                      _check_cell_state(nb, located, book_checks[name]), review))
    return results


def grade(paths: list[str | Path], csv_path: str | Path | None = None, cwd: str | Path | None = None,
          book: str | Path | None = None) -> list[ExerciseResult]:
    """Grade notebooks (files or folders of ``*.ipynb``); write one CSV row per exercise when ``csv_path`` is given."""
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    results = [r for f in files for r in grade_notebook(f, cwd=cwd, book=book)]
    if csv_path is not None:
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(r.row() for r in results)
    return results
