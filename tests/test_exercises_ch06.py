"""Checks of chapter 6: solutions pass; typical wrong answers fail with their hint; no answer is printed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch06 import (check_best_of_n, check_paired_difference, check_select_on_validation,
                                      expected_max_normal)


def stub(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------- reference
def test_expected_max_of_normals_known_values():
    assert expected_max_normal(1) == pytest.approx((0.0, 1.0), abs=1e-9)
    assert expected_max_normal(2)[0] == pytest.approx(1 / math.sqrt(math.pi), rel=1e-9)  # E max(X, Y) = 1/√π
    assert expected_max_normal(3)[0] == pytest.approx(1.5 / math.sqrt(math.pi), rel=1e-9)  # 3/(2√π)
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((200_000, 10)).max(axis=1)
    mean, sd = expected_max_normal(10)
    assert sim.mean() == pytest.approx(mean, abs=5 * sd / math.sqrt(len(sim)))
    assert sim.std() == pytest.approx(sd, rel=0.01)


# ---------------------------------------------------------------------------------------------------- 6.1
def best_of_n_inflation(true_value, sigma, n, trials, rng):
    scores = true_value + sigma * rng.standard_normal((trials, n))
    return (scores.max(axis=1) - true_value).mean()


def _loop(true_value, sigma, n, trials, rng):  # plain Python, rng.normal
    total = 0.0
    for _ in range(trials):
        total += max(rng.normal(true_value, sigma) for _ in range(n)) - true_value
    return total / trials


@pytest.mark.parametrize("solution", [best_of_n_inflation, _loop])
def test_best_of_n_passes(solution, capsys):
    check_best_of_n(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 6.1" in out and not any(ch.isdigit() for ch in out.split("correct")[1])


@pytest.mark.parametrize("wrong,match", [
    (lambda t, s, n, k, rng: (t + s * rng.standard_normal((k, n))).mean(axis=1).mean() - t, "averaged"),
    (lambda t, s, n, k, rng: ((t + s * rng.standard_normal((k, n))).min(axis=1) - t).mean(), "min"),
    (lambda t, s, n, k, rng: (t + s * rng.standard_normal((k, n))).max(axis=1).mean(), "reported − true_value"),
    (lambda t, s, n, k, rng: (rng.standard_normal((k, n))).max(axis=1).mean(), "sigma"),
    (lambda t, s, n, k, rng: (t + s * rng.standard_normal((k, n))).max() - t, "average those maxima"),
    (lambda t, s, n, k, rng: (t + s * np.random.standard_normal((k, n))).max(axis=1).mean() - t, "you are given"),
    (lambda t, s, n, k, rng: 0.0025, "expected about"),  # a number typed in
    (lambda t, s, n, k, rng: None, "expected one number"),
    (0.0025, "expected your function"),
    (stub, "not written yet"),
])
def test_best_of_n_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_best_of_n(wrong)


# ---------------------------------------------------------------------------------------------------- 6.2
def select_then_report(val_scores, test_scores):
    chosen = int(np.argmax(val_scores))
    return chosen, test_scores[chosen]


@pytest.mark.parametrize("solution", [
    select_then_report,
    lambda v, t: (np.argmax(v), np.float64(t[int(np.argmax(v))])),  # numpy types
    lambda v, t: [max(range(len(v)), key=v.__getitem__), t[max(range(len(v)), key=v.__getitem__)]],
])
def test_select_on_validation_passes(solution, capsys):
    check_select_on_validation(solution)
    assert "✓ Exercise 6.2" in capsys.readouterr().out


def _sorts(v, t):
    v.sort()
    return len(v) - 1, t[-1]


@pytest.mark.parametrize("wrong,match", [
    (lambda v, t: (int(np.argmax(t)), max(t)), "best TEST score"),
    (lambda v, t: (int(np.argmin(v)), t[int(np.argmin(v))]), "largest validation"),
    (lambda v, t: (int(np.argmax(v)), v[int(np.argmax(v))]), "validation score of the chosen"),
    (lambda v, t: (int(np.argmax(v)), max(t)), "CHOSEN setting"),
    (lambda v, t: (-1, t[int(np.argmax(v))]), "largest"),
    (lambda v, t: (float(np.argmax(v)), t[int(np.argmax(v))]), "index of a setting"),
    (_sorts, "changed the lists"),
    (lambda v, t: int(np.argmax(v)), "two values"),
    (stub, "not written yet"),
])
def test_select_on_validation_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_select_on_validation(wrong)


# ---------------------------------------------------------------------------------------------------- 6.3
def paired_difference(a, b):
    d = np.subtract(a, b)
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d))


@pytest.mark.parametrize("solution", [
    paired_difference,
    lambda a, b: (float(np.mean(np.subtract(a, b))), float(stats.sem(np.subtract(a, b)))),
])
def test_paired_difference_passes(solution, capsys):
    check_paired_difference(solution)
    assert "✓ Exercise 6.3" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda a, b: (np.mean(np.subtract(a, b)), np.std(np.subtract(a, b)) / np.sqrt(len(a))), "ddof"),
    (lambda a, b: (np.mean(np.subtract(a, b)), np.std(np.subtract(a, b), ddof=1)), "√n"),
    (lambda a, b: (np.mean(a) - np.mean(b), math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))),
     "independent samples"),
    (lambda a, b: paired_difference(b, a), "sign"),
    (lambda a, b: (np.mean(a), paired_difference(a, b)[1]), "expected"),
    (lambda a, b: (0.004, 0.0005), "expected"),  # numbers typed in
    (lambda a, b: paired_difference(a, b)[0], "two values"),
    (stub, "not written yet"),
])
def test_paired_difference_fails(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_paired_difference(wrong)
