"""book/cpu_outputs.py: chapter outputs compared exactly on the CPU that made them, within a tolerance elsewhere."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from uflow_lib.runtime import cpu_model, cpu_signature

BOOK = Path(__file__).resolve().parents[1] / "book"
sys.path.insert(0, str(BOOK))
try:
    import cpu_outputs
finally:
    sys.path.remove(str(BOOK))


@pytest.mark.parametrize("reference,test", [
    # pairs nbval reported between two CPUs (an AVX-512/AMX Xeon's output and the committed one, in either order)
    ("26,508 parameters; NLL at the start (the identity flow): 2.84, after training: 1.29 nats per point",
     "26,508 parameters; NLL at the start (the identity flow): 2.84, after training: 1.39 nats per point"),
    ("  stain    IoU 0.54 → 0.00; area ratio 0.7 → 0.0", "  stain    IoU 0.59 → 0.00; area ratio 0.8 → 0.0"),
    ("mean z² per image, defective: 48.8", "mean z² per image, defective: 48.9"),
    ("MSFlow z |  32 |        1.063 |         50.9% |     0.404 |",
     "MSFlow z |  32 |        1.066 |         51.7% |     0.399 |"),
    ("| 9.9 | x", "| 10.0 | x"),  # a column widens with the number
    ("offset −0.50", "offset -0.51"),  # the minus sign and ASCII hyphen-minus are the same sign
    ("gap 1e-05", "gap 2e-05"),  # one unit of the last printed digit
])
def test_numbers_from_another_cpu_agree(reference, test):
    assert cpu_outputs.numbers_agree(reference, test)


@pytest.mark.parametrize("reference,test", [
    ("after training: 1.29 nats per point", "after training: 1.60 nats per point"),  # 19 % off
    ("after training: 1.29 nats per point", "after training: 1.29 bits per point"),  # other words
    ("IoU 0.54 → 0.00", "IoU 0.54 → 0.00 → 0.01"),  # another count of numbers
    ("0 of 10 images", "3 of 10 images"),  # 3 units of the last digit and more than 15 %
    ("offset −0.50", "offset 0.50"),  # the sign
    ("a scale of 1.29", "a scale of 12.9"),  # the decimal point moved
])
def test_other_outputs_disagree(reference, test):
    assert not cpu_outputs.numbers_agree(reference, test)


def test_largest_difference_is_relative_to_the_larger_number():
    assert cpu_outputs.largest_difference("IoU 0.54 → 0.00; ratio 0.7", "IoU 0.59 → 0.00; ratio 0.8") == \
        pytest.approx(0.1 / 0.8)
    assert cpu_outputs.largest_difference("48.8", "48.8") == 0.0
    assert cpu_outputs.largest_difference("48.8 nats", "48.8 bits") == 0.0  # not comparable: numbers_agree says no


def test_printed_numbers_are_read_with_the_unit_of_their_last_digit():
    assert cpu_outputs._value("1,234.50") == (1234.5, pytest.approx(0.01))
    assert cpu_outputs._value("\u22122.5e-3") == (-0.0025, pytest.approx(1e-4))
    assert cpu_outputs._value("17") == (17.0, 1.0)


def test_cpu_signature_names_family_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                    "flags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(info) == "AMD EPYC with AVX-512"
    assert cpu_signature(info).endswith(", AMD EPYC with AVX-512 (family 25, model 17)")
    assert cpu_signature(tmp_path / "missing").endswith(", unknown CPU")
    metadata: dict = {"kernelspec": {}}
    assert cpu_outputs.made_on(metadata) is None
    cpu_outputs.record_made_on(metadata, "CPU A")
    assert cpu_outputs.made_on(metadata) == "CPU A" and metadata["uflow"] == {"outputs_made_on": "CPU A"}


def test_readme_states_the_tolerance():
    readme = (BOOK.parent / "README.md").read_text()
    assert f"every number within {cpu_outputs.RTOL * 100:.0f} %" in readme


def test_every_chapter_records_the_cpu_its_outputs_were_made_on():
    chapters = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    assert len(chapters) == 7
    for path in chapters:
        assert cpu_outputs.made_on(nbformat.read(path, as_version=4).metadata), \
            f"{path.name}: no CPU recorded; execute it with .ci/execute_chapters.py"


def _notebook(path: Path, made_on: str, committed: list[str], printed: list[str]) -> None:
    """A notebook whose cell i prints ``printed[i]`` while its committed output says ``committed[i]``."""
    nb = nbformat.v4.new_notebook()
    for count, (old, new) in enumerate(zip(committed, printed), start=1):
        cell = nbformat.v4.new_code_cell(f"print({new!r})", execution_count=count)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=old + "\n")]
        nb.cells.append(cell)
    cpu_outputs.record_made_on(nb.metadata, made_on)
    nbformat.write(nb, path)


def test_nbval_compares_exactly_on_the_same_cpu_and_within_the_tolerance_elsewhere(tmp_path):
    """One pytest --nbval run over two notebooks with the book's comparison installed: the digits that differ fail
    in the notebook made on this CPU and pass in the one made on another; other words fail in both."""
    digits = ("after training: 1.29 nats", "after training: 1.39 nats")
    words = ("after training: 1.29 nats", "after training: 1.29 bits")
    _notebook(tmp_path / "here.ipynb", cpu_signature(), *zip(digits, words, digits))
    _notebook(tmp_path / "elsewhere.ipynb", "x86_64, CPU B with AVX2", *zip(digits, words, digits))
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(BOOK)!r})\nimport cpu_outputs\ncpu_outputs.install()\n\n"
        "def pytest_terminal_summary(terminalreporter):\n"
        "    for line in cpu_outputs.summary_lines():\n        terminalreporter.write_line(line)\n")
    report = tmp_path / "report.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
                          "-q", f"--junitxml={report}", "here.ipynb", "elsewhere.ipynb"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    outcomes = {f'{case.get("classname")}::{case.get("name")}': "passed" if case.find("failure") is None else "failed"
                for case in ET.parse(report).getroot().iter("testcase")}
    assert sorted(outcomes.values()) == ["failed"] * 4 + ["passed"] * 2, run.stdout
    assert [n for n, o in outcomes.items() if o == "passed"] == ["elsewhere.ipynb::Cell 0", "elsewhere.ipynb::Cell 2"]
    assert "elsewhere.ipynb: made on x86_64, CPU B with AVX2; this is " in run.stdout
    assert "2 cells differed in their digits only (largest relative difference 7.2%): 0, 2" in run.stdout
    assert "  here.ipynb:" not in run.stdout, run.stdout  # compared exactly: not in the summary
