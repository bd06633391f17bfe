"""``reproduce --workers N``: the categories dealt to spawned processes give the table one process writes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from uflow_lib.cli import main
from uflow_lib.reproduce import WorkerError, deal_categories, reproduce, worker_devices

# caller's order differs from the folders' alphabetical order, so a merge that sorts folders is caught
CATEGORIES = ["tiles", "texture"]
SETTINGS = dict(backbone="mobilenetv2", pretrained=False, epochs=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory) -> Path:
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("workers")
    for category, defect in zip(CATEGORIES, ["crack", "hole"]):
        make_dataset(root, seed=5, category=category, image_size=64, n_train=4, n_test_good=1, n_test_defect=1,
                     defect_types=[defect])
    return root


def _tables(out: Path) -> tuple[str, list[dict]]:
    """results.md text and results.csv rows of a reproduce output folder."""
    with open(out / "results.csv", newline="") as f:
        return (out / "results.md").read_text(), list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_and_two(two_categories, tmp_path_factory) -> tuple[Path, Path]:
    """Output folders of the same reproduce run with one worker and with two."""
    one, two = tmp_path_factory.mktemp("one_worker"), tmp_path_factory.mktemp("two_workers")
    for out, workers in ((one, 1), (two, 2)):
        reproduce(two_categories, out, CATEGORIES, workers=workers, log=lambda s: None, **SETTINGS)
    return one, two


def test_two_workers_write_the_table_of_one(two_categories, one_and_two):
    one, two = one_and_two
    md_one, csv_one = _tables(one)
    assert _tables(two) == (md_one, csv_one)  # exact: every run is seeded
    assert [r["category"] for r in csv_one] == CATEGORIES
    assert {p.name for p in two.glob("worker*.log")} == {"worker0.log", "worker1.log"}
    assert "texture: epoch 1" in (two / "worker1.log").read_text() + (two / "worker0.log").read_text()
    # the rows come from each category's metrics.json: a rerun with another N (all resumed) writes the same table
    reproduce(two_categories, two, CATEGORIES, workers=1, log=lambda s: None, **SETTINGS)
    assert _tables(two) == (md_one, csv_one)


def test_a_failing_worker_is_one_line_naming_category_and_log(two_categories, one_and_two, tmp_path, capsys):
    out = tmp_path / "fail"
    shutil.copytree(one_and_two[1] / "texture", out / "texture")  # finished: the worker only reads it back
    argv = ["reproduce", "--data", str(two_categories), "--out", str(out), "--categories", "texture", "missing",
            "--backbone", "mobilenetv2", "--random-weights", "--epochs", "1", "--device", "cpu", "--no-progress",
            "--workers", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: category 'missing' failed in worker ")
    log = Path(err.split("see ")[1].split(";")[0])
    assert log.parent == out and log.name.startswith("worker") and "Traceback" in log.read_text()
    # the category that finished keeps its results, and the table holds its row
    assert (out / "texture" / "metrics.json").is_file()
    assert [r["category"] for r in _tables(out)[1]] == ["texture"]


def test_worker_count_is_checked_and_clamped(monkeypatch):
    with pytest.raises(ValueError, match="at least 1") as exc:
        worker_devices(0, 3, "cpu")
    assert "\n" not in str(exc.value)
    assert worker_devices(5, 2, "cpu") == ["cpu", "cpu"]  # clamped to the number of categories
    assert worker_devices(3, 1, "cuda:1") == ["cuda:1"]  # one category: in-process, on the device as given
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(2, 15, "auto") == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="--workers 2 or fewer") as exc:
        worker_devices(3, 15, "auto")
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="--device cuda"):
        worker_devices(2, 15, "cuda:1")
    assert worker_devices(4, 15, "cpu") == ["cpu"] * 4  # CPU workers: no GPU limit
    with pytest.raises(ValueError, match="--workers 2 or fewer"):  # refused before anything runs
        reproduce("nowhere", "nowhere", ["a", "b", "c"], workers=3, progress=False)


def test_categories_are_balanced_by_cost():
    cats = ["a", "b", "c", "d", "e"]
    shares = deal_categories(cats, [10, 1, 6, 5, 1], 2)
    assert shares == [["a", "b", "e"], ["c", "d"]]  # loads 12 and 11; round-robin would give 17 and 6
    assert deal_categories(cats, [1] * 5, 3) == [["a", "d"], ["b", "e"], ["c"]]
