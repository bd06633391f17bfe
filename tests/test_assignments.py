"""Course assignments: generated copies are current, contain no solution, checks pass on solutions, fail on stubs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from uflow_lib.assignments import BEGIN, END, _exercises, _stub_source, answer_key, generate, student_copy, think_pairs
from uflow_lib.grading import COLUMNS, fresh_check_source, grade, grade_notebook, patches, review_flags

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


@pytest.fixture()
def kernel_imports_this_checkout(monkeypatch):
    """Kernels started by the grader import this checkout's uflow_lib (not another installed copy)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("UFLOW_BOOK_MODE", os.environ.get("UFLOW_BOOK_MODE", "ci"))


def test_grading_scores_solutions_full_and_stubs_zero_with_messages(tmp_path, kernel_imports_this_checkout):
    """Execute chapter 2 (the fastest) as solution and as student stub, as a teacher's grading run would."""
    chapter = BOOK / "02_normalizing_flows.ipynb"
    stub = tmp_path / chapter.name
    nbformat.write(student_copy(nbformat.read(chapter, as_version=4)), stub)
    stub_results = grade_notebook(stub, cwd=BOOK)
    assert stub_results and not any(r.passed for r in stub_results)
    for r in stub_results:
        assert "Hint" in r.message or "not written yet" in r.message, f"{r.exercise}: unhelpful message {r.message!r}"
    solution_results = grade_notebook(chapter, cwd=BOOK)
    assert all(r.passed for r in solution_results), [r for r in solution_results if not r.passed]


# ----------------------------------------------------------------------------------------- attacks on the grader
def test_fresh_check_restores_the_kernels_own_modules():
    import sys

    import uflow_lib.exercises.ch06 as mine

    patched = mine.check_best_of_n
    namespace: dict = {}
    source = fresh_check_source("from uflow_lib.exercises.ch06 import check_best_of_n\nfresh = check_best_of_n",
                                token="done")
    exec(compile(source, "<fresh>", "exec"), namespace)
    assert namespace["fresh"] is not patched  # the check ran on a fresh import ...
    assert sys.modules["uflow_lib.exercises.ch06"] is mine  # ... and the kernel got its own modules back


def test_review_flags_reference_calls_copies_and_patches():
    stub = "def latent_shapes_by_hand(channels, sizes):\n    raise NotImplementedError"
    book = "def f():\n    ### BEGIN SOLUTION\n    return sum(v[0] for v in results.values())\n    ### END SOLUTION"
    assert review_flags("Exercise 3.2", stub.replace("raise NotImplementedError", "return latent_shapes(channels, "
                                                     "sizes)  # latent_shapes"), stub, book) == ["calls latent_shapes"]
    assert review_flags("Exercise 3.1", "return F.pixel_unshuffle(x, 2)", "", book) == ["calls F.pixel_unshuffle"]
    assert review_flags("Exercise 4.1", "s = anomaly_score_map(latents, size, combine='product')", "", book) == [
        "calls anomaly_score_map"]
    assert review_flags("Exercise 3.2", "# latent_shapes is not used\nreturn [(1, 2, 2)]", "", book) == []
    copied = review_flags("Exercise 6.1", "def f():\n  return sum(v[0] for v in results.values())  # mine!",
                          "def f():", book)
    assert copied == ["same as the book's solution (similarity 1.00)"]
    assert patches("import numpy as xp\nxp.allclose = lambda *a, **k: True\nx.shape == (1,)") == ["xp.allclose"]


def _row(results, notebook: str, exercise: str):
    (row,) = [r for r in results if r.notebook == notebook and r.exercise == exercise]
    return row


def test_attacks_score_zero_or_are_flagged(tmp_path, kernel_imports_this_checkout):
    """Copy, monkeypatch, edited or deleted check cells, sorting, typed-in constants and reference calls."""
    import csv

    from attack_submissions import build

    book, subs = build(tmp_path)
    results = grade([subs], csv_path=tmp_path / "grades.csv", book=book)
    with open(tmp_path / "grades.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS and len(rows) == 1 + len(results) == 1 + 5 * 3 + 2
    print("\n".join(",".join(r[:5]) for r in rows))  # the CSV, for the record (pytest -s)

    honest = [r for r in results if r.notebook == "06_alice_honest.ipynb"]
    assert all(r.passed and r.check_cell == "ok" and not r.review for r in honest), honest
    for r in (r for r in results if r.notebook == "06_bob_copy.ipynb"):  # copied from the book: passes, flagged
        assert r.passed and any("same as the book's solution" in f for f in r.review), r
    carol = [r for r in results if r.notebook == "06_carol_monkeypatch.ipynb"]
    for r in carol[:2]:  # her patched checker and her own "✓" print do not count
        assert not r.passed and any("patches library code" in f for f in r.review), r
    assert "_ch06.check_best_of_n" in carol[0].review[-1] and "expected" in carol[0].message
    dave = {r.exercise: r for r in results if r.notebook == "06_dave_check_cells.ipynb"}
    assert dave["Exercise 6.2"].check_cell == "edited" and not dave["Exercise 6.2"].passed
    assert dave["Exercise 6.3"].check_cell == "missing" and dave["Exercise 6.3"].passed  # the book's check ran
    for r in (r for r in results if r.notebook == "06_erin_typed_and_sorted.ipynb"):
        assert not r.passed, r
    assert "changed the lists" in _row(results, "06_erin_typed_and_sorted.ipynb", "Exercise 6.3").message
    frank = [r for r in results if r.notebook == "03_frank_reference_calls.ipynb"]
    assert [r.review for r in frank] == [["calls F.pixel_unshuffle"], ["calls latent_shapes"]]


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, tags in cells:
        new = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(new(source, metadata={"tags": tags} if tags else {}))
    return nb


_ANSWER = ":::{admonition} Answer\n:class: dropdown\nBecause $a > b$.\n:::"


def test_think_answers_go_to_the_key_and_leave_the_student_copy():
    nb = _nb(("md", "Text.\n\n> **Think!** Why is $a$\n> larger?\n\nMore text.", []),
             ("md", _ANSWER, ["think-answer"]), ("code", "x = 1", []))
    assert think_pairs(nb) == [("**Think!** Why is $a$\nlarger?", "Because $a > b$.")]
    student = student_copy(nb)
    assert len(student.cells) == 3 and student.cells[1].source == "" and "think-answer" not in str(student.cells[1])
    assert "Because $a > b$." not in str(student)
    key = answer_key({"01_x": nb})
    assert "### Think! questions" in key and "**Think!** Why is $a$\nlarger?" in key and "> **Answer.** Because" in key


@pytest.mark.parametrize("cells, message", [
    ([("md", "**Think!** Why?", [])], "without a 'think-answer'"),
    ([("md", "**Think!** Why?", []), ("md", "Because.", ["think-answer"])], "must be Markdown of the form"),
    ([("md", "Text.", []), ("md", _ANSWER, ["think-answer"])], "asks no Think! question"),
    ([("md", "**Think!** A? **Think!** B?", []), ("md", _ANSWER, ["think-answer"])], "asks 2 Think! questions"),
])
def test_think_without_a_well_formed_answer_is_refused(cells, message):
    with pytest.raises(ValueError, match=message):
        think_pairs(_nb(*cells))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_think_of_the_book_has_its_answer(chapter):
    nb = nbformat.read(chapter, as_version=4)
    asked = sum(c.source.count("**Think!**") for c in nb.cells if c.cell_type == "markdown")
    assert len(think_pairs(nb)) == asked
    assert not any("{admonition} Answer" in c.source for c in student_copy(nb).cells)
