"""Checks of chapter 6: pass on right answers, fail with a message on wrong ones."""

from __future__ import annotations

import pytest

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch06 import check_feature_memory, check_last_vs_best, check_paper_mean


def test_paper_mean(capsys):
    check_paper_mean(98.7353)
    assert "✓" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match="percent"):
        check_paper_mean(0.9874)
    with pytest.raises(ExerciseFailed, match="98.74"):
        check_paper_mean(98.0)
    with pytest.raises(ExerciseFailed, match="None"):
        check_paper_mean(None)


def test_feature_memory():
    n = 209
    floats = 768 * 28 * 28 + 384 * 14 * 14
    check_feature_memory(n, n * floats * 4 / 1e6)
    with pytest.raises(ExerciseFailed, match="4 bytes"):
        check_feature_memory(n, n * floats / 1e6)
    with pytest.raises(ExerciseFailed, match="MiB"):
        check_feature_memory(n, n * floats * 4 / 2**20)
    with pytest.raises(ExerciseFailed, match="both scales"):
        check_feature_memory(n, n * 768 * 28 * 28 * 4 / 1e6)


def test_last_vs_best():
    h = [dict(epoch=1, test_pixel_auroc=0.90), dict(epoch=2, test_pixel_auroc=0.95), dict(epoch=3, test_pixel_auroc=0.93)]
    check_last_vs_best(h, 0.93, 2)
    with pytest.raises(ExerciseFailed, match="final epoch"):
        check_last_vs_best(h, 0.95, 2)
    with pytest.raises(ExerciseFailed, match="expected 2"):
        check_last_vs_best(h, 0.93, 1)
