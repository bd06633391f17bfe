"""Checks of chapter 6: functions checked on inputs the check makes up; typed-in numbers and sorting fail."""

from __future__ import annotations

import numpy as np
import pytest

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch06 import check_feature_memory, check_last_vs_best, check_paper_mean
from uflow_lib.reproduce import PAPER_RESULTS


def stub(*args):
    raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- 6.1
def mean_pixel_auroc(results):
    return sum(v[0] for v in results.values()) / len(results)


@pytest.mark.parametrize("solution", [
    mean_pixel_auroc,
    lambda r: np.mean([v[0] for v in r.values()]),  # a numpy float
    lambda r: np.float32(np.mean([v[0] for v in r.values()])),
])
def test_paper_mean_passes(solution, capsys):
    check_paper_mean(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 6.1" in out and "98.7" not in out  # the success line does not give the paper's mean


@pytest.mark.parametrize("wrong,match", [
    (lambda r: 98.74, "expected"),  # the paper's mean typed in
    (lambda r: mean_pixel_auroc(PAPER_RESULTS), "expected"),
    (lambda r: sum([v[0] for v in r.values()][:-1]) / 14, "expected"),
    (lambda r: sum([v[0] for v in r.values()][:-1]) / (len(r) - 1), "leaves one out"),
    (lambda r: mean_pixel_auroc(r) / 100, "percent"),
    (lambda r: sum(v[1] for v in r.values()) / len(r), "FIRST entry"),
    (lambda r: r.popitem()[1][0], "changed the table"),
    (lambda r: None, "expected one number"),
    (98.74, "expected your function"),
    (stub, "not written yet"),
])
def test_paper_mean_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_paper_mean(wrong)


# ---------------------------------------------------------------------------------------------------- 6.2
def feature_megabytes(n_images, scales):
    return n_images * sum(c * s * s for c, s in scales) * 4 / 1e6


@pytest.mark.parametrize("solution", [
    feature_megabytes,
    lambda n, scales: np.int64(n) * sum(c * s**2 for c, s in scales) * np.dtype(np.float32).itemsize / 10**6,
])
def test_feature_memory_passes(solution, capsys):
    check_feature_memory(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 6.2" in out and "1059" not in out


@pytest.mark.parametrize("wrong,match", [
    (lambda n, scales: 1059, "expected"),  # the hazelnut answer typed in
    (lambda n, scales: 1059.3, "expected"),
    (lambda n, scales: feature_megabytes(1, scales), "expected"),  # n_images = 1
    (lambda n, scales: feature_megabytes(391, scales), "expected"),
    (lambda n, scales: feature_megabytes(n, scales) / 4, "4 bytes"),
    (lambda n, scales: feature_megabytes(n, scales) * 1e6 / 2**20, "MiB"),
    (lambda n, scales: feature_megabytes(n, scales[:1]), "every scale counts"),
    (lambda n, scales: n * sum(c * s for c, s in scales) * 4 / 1e6, "s × s"),
    (stub, "not written yet"),
])
def test_feature_memory_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_feature_memory(wrong)


# ---------------------------------------------------------------------------------------------------- 6.3
def last_and_best(history):
    return history[-1]["test_pixel_auroc"], max(history, key=lambda h: h["test_pixel_auroc"])["epoch"]


def _sorts_in_place(history):  # the mistake the exercise warns against: sort by test AUROC, report the "last"
    history.sort(key=lambda h: h["test_pixel_auroc"])
    return history[-1]["test_pixel_auroc"], history[-1]["epoch"]


def _sorts_then_restores_values(history):  # sorts in place, but returns the right numbers: still caught
    last = history[-1]["test_pixel_auroc"]
    history.sort(key=lambda h: h["test_pixel_auroc"])
    return last, history[-1]["epoch"]


def _sorted_copy(history):  # reports the best as "last"
    best = sorted(history, key=lambda h: h["test_pixel_auroc"])[-1]
    return best["test_pixel_auroc"], best["epoch"]


@pytest.mark.parametrize("solution", [
    last_and_best,
    lambda h: (np.float64(h[-1]["test_pixel_auroc"]),
               np.int64(h[int(np.argmax([e["test_pixel_auroc"] for e in h]))]["epoch"])),
    lambda h: [h[-1]["test_pixel_auroc"], sorted(h, key=lambda e: e["test_pixel_auroc"])[-1]["epoch"]],
])
def test_last_vs_best_passes(solution, capsys):
    check_last_vs_best(solution)
    assert "✓ Exercise 6.3" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (_sorts_in_place, "changed the history"),
    (_sorts_then_restores_values, "changed the history"),
    (_sorted_copy, "final epoch"),
    (lambda h: (0.9541, 4), "expected"),  # the chapter's numbers typed in
    (lambda h: (h[-1]["test_pixel_auroc"], int(np.argmax([e["test_pixel_auroc"] for e in h])) + 1), "position"),
    (lambda h: (h[-1]["test_pixel_auroc"], 1.5), "expected an epoch number"),
    (lambda h: h[-1]["test_pixel_auroc"], "two values"),
    (stub, "not written yet"),
])
def test_last_vs_best_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_last_vs_best(wrong)
