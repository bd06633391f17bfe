"""Course assignments: generated copies are current, contain no solution, checks pass on solutions, fail on stubs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from uflow_lib.assignments import BEGIN, END, _exercises, _stub_source, generate, grade_notebook, student_copy

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def _solution_lines(source: str) -> list[str]:
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip().startswith(BEGIN):
            inside = True
        elif line.strip().startswith(END):
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


def test_committed_copies_are_current(tmp_path):
    written = generate(BOOK, tmp_path)
    assert written, "no chapter with exercises found"
    for path in written:
        committed = REPO / "assignments" / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed.relative_to(REPO)} is missing: run `make assignments`"
        assert committed.read_text() == path.read_text(), (
            f"{committed.relative_to(REPO)} differs from what the chapters generate: run `make assignments`")
    stale = {p.name for p in (REPO / "assignments" / "student").glob("*.ipynb")} - {p.name for p in written}
    assert not stale, f"student copies without a chapter: {stale}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_has_no_solution_and_every_exercise_is_complete(chapter):
    nb = nbformat.read(chapter, as_version=4)
    exercises = _exercises(nb)
    assert len(exercises) >= 3, f"{chapter.name}: {len(exercises)} exercises, the book promises at least 3"
    student = student_copy(nb)
    for name, _, sol, check in exercises:
        stub = student.cells[sol].source
        assert "raise NotImplementedError" in stub and BEGIN not in stub
        for line in _solution_lines(nb.cells[sol].source):
            assert line not in stub, f"{chapter.name} {name}: solution line {line!r} is in the student copy"
        assert not student.cells[sol].outputs and not student.cells[check].outputs


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_check_passed_in_the_committed_solutions(chapter):
    # nbval re-executes the chapters and compares these outputs, so they are current
    nb = nbformat.read(chapter, as_version=4)
    for name, _, _, check in _exercises(nb):
        outs = nb.cells[check].outputs
        assert outs and not any(o.output_type == "error" for o in outs), f"{chapter.name} {name}: check cell failed"
        assert "✓" in "".join(o.get("text", "") for o in outs), f"{chapter.name} {name}: no success line"


def test_stub_keeps_indentation_and_code_outside_markers():
    src = f"def f(x):\n    {BEGIN}\n    return 2 * x\n    {END}\n\ny = f(1)"
    stub = _stub_source(src, "Exercise 9.9")
    assert "return 2 * x" not in stub and "y = f(1)" in stub
    assert '    raise NotImplementedError("Exercise 9.9: not written yet")' in stub
    compile(stub, "<stub>", "exec")
    with pytest.raises(ValueError, match="without"):
        _stub_source(f"{BEGIN}\nx = 1", "Exercise 9.9")


def test_grading_scores_solutions_full_and_stubs_zero_with_messages(tmp_path):
    """Execute chapter 2 (the fastest) as solution and as student stub, as a teacher's grading run would."""
    os.environ.setdefault("UFLOW_BOOK_MODE", "ci")
    chapter = BOOK / "02_normalizing_flows.ipynb"
    stub = tmp_path / chapter.name
    nbformat.write(student_copy(nbformat.read(chapter, as_version=4)), stub)
    stub_results = grade_notebook(stub, cwd=BOOK)
    assert stub_results and not any(r.passed for r in stub_results)
    for r in stub_results:
        assert "Hint" in r.message or "not written yet" in r.message, f"{r.exercise}: unhelpful message {r.message!r}"
    solution_results = grade_notebook(chapter, cwd=BOOK)
    assert all(r.passed for r in solution_results), [r for r in solution_results if not r.passed]
