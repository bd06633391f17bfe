"""Shared fixtures: the generated dataset, paths of the real data/weights beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MVTEC_ROOT = SHARED / "data" / "mvtec_ad"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenetv2_100_imagenet_from_tflite.pth"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"offline MobileNetV2 weights not found at ../shared/weights ({MOBILENET_WEIGHTS.name}); "
                    f"this test needs the shared folder beside the repository")
    return MOBILENET_WEIGHTS


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    if not (MVTEC_ROOT / "bottle").is_dir():
        pytest.skip("real MVTec AD bottle not found at ../shared/data/mvtec_ad; this test needs the shared folder")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory) -> Path:
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("generated")
    make_dataset(root, seed=0)
    return root


# ----------------------------------------------------------------------------------------------- browser test
BROWSER_TESTS = "test_rendered_book.py"
BROWSER_SKIPPED = "browser tests SKIPPED"  # a key of its own in the summary line: "…, 14 browser tests SKIPPED in …"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly when the browser tests (tests/test_rendered_book.py) were skipped.

    Without Chromium they skip outside CI (``CI=true`` makes them fail), and ``make browser`` does not stop on a
    failed install outside CI, so a run could look green with the rendered book never opened. This adds one
    ``BROWSER TEST SKIPPED: <reason>`` line just above the summary line, and a count of its own in that line
    (which also turns it from green to yellow).
    """
    skipped = [rep for rep in terminalreporter.stats.get("skipped", [])
               if rep.nodeid.split("::")[0].endswith(BROWSER_TESTS)]
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        terminalreporter.write_sep("!", f"BROWSER TEST SKIPPED: {n} test(s) of tests/{BROWSER_TESTS}: {reason}",
                                   yellow=True, bold=True)
    terminalreporter.stats.setdefault(BROWSER_SKIPPED, []).extend(skipped)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny generated category ``texture`` (128 px; 6 train, 2 good and 2 per defect in test), made once."""
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root, seed=3, image_size=128, n_train=6, n_test_good=2, n_test_defect=2)
    return root


@pytest.fixture(autouse=True)
def _fresh_exercise_attempts():
    """Each test starts like a fresh kernel: no failed exercise attempt counted yet (the hints are tiered)."""
    from uflow_lib.exercises import reset_attempts

    reset_attempts()
