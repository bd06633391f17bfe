r"""Checks for the exercises of chapter 6 (reproducing MVTec AD: the protocol behind a table).

Each exercise is a function, checked on inputs the check makes up itself (seeded, never printed), against an
*independent* reference:

* 6.1, how much reporting the best of N test evaluations inflates a table: the student's Monte Carlo simulation
  against the exact expectation of the maximum of N normals,
  :math:`\sigma\int x\,N\varphi(x)\Phi(x)^{N-1}dx` (``scipy.integrate.quad``), within a few Monte Carlo standard
  errors;
* 6.2, choosing a setting on validation and reporting the test score there: random score lists whose validation
  and test winners differ, against ``numpy.argmax``;
* 6.3, a paired comparison of two variants over seeds: the mean difference and its standard error (ddof 1),
  against ``scipy.stats.ttest_rel`` (mean / t statistic).

A wrong, missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import integrate, stats

from . import (ExerciseFailed, apart, as_finite_number, as_integer, call_student, counts_attempts, passed,
               require, require_function, tiered)

__all__ = ["check_best_of_n", "check_select_on_validation", "check_paired_difference", "expected_max_normal"]


def _number(value: Any, call: str) -> float:
    return as_finite_number(value, call, "return a plain number (check for a division by zero or an empty list).")


# ---------------------------------------------------------------------------------------------------- 6.1
def expected_max_normal(n: int) -> tuple[float, float]:
    r"""Mean and standard deviation of the maximum of ``n`` independent N(0, 1) values, by quadrature of its
    density :math:`n\varphi(x)\Phi(x)^{n-1}` (``scipy.integrate.quad``)."""
    density = lambda x: n * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1)  # noqa: E731
    m1 = integrate.quad(lambda x: x * density(x), -np.inf, np.inf, epsabs=1e-12)[0]
    m2 = integrate.quad(lambda x: x * x * density(x), -np.inf, np.inf, epsabs=1e-12)[0]
    return m1, math.sqrt(max(m2 - m1 * m1, 0.0))


#: (true_value, sigma, n, trials, seed) of the made-up cases
_BEST_CASES = [(0.95, 0.003, 5, 10000, 610), (0.8, 0.02, 40, 10000, 611), (0.0, 1.0, 3, 10000, 612),
               (0.6, 0.05, 1, 10000, 613), (0.97, 0.0015, 100, 4000, 614)]


@counts_attempts("Exercise 6.1")
def check_best_of_n(fn: Callable[[float, float, int, int, np.random.Generator], float]) -> None:
    r"""Exercise 6.1: ``fn(true_value, sigma, n, trials, rng)`` → the mean over ``trials`` simulated tables of
    (max of ``n`` scores ``true_value + sigma·N(0, 1)``) − ``true_value``.

    The reference is ``sigma`` · E[max of n N(0, 1)] (:func:`expected_max_normal`); the tolerance is 5 Monte
    Carlo standard errors of the student's mean over ``trials``.
    """
    require_function(fn, "best_of_n_inflation", "(true_value, sigma, n, trials, rng)")
    name = "best_of_n_inflation"
    for true, sigma, n, trials, seed in _BEST_CASES:
        call = f"{name}(true_value={true}, sigma={sigma}, n={n}, trials={trials}, rng)"
        got = _number(call_student(fn, name, true, sigma, n, trials, np.random.default_rng(seed)), call)
        if seed == _BEST_CASES[0][-1]:  # the same seeded rng must give the same simulation
            again = _number(call_student(fn, name, true, sigma, n, trials, np.random.default_rng(seed)), call)
            require(got == again, f"{call} gave {got} and then {again} with the same seeded rng",
                    "draw every random number from the `rng` you are given (rng.standard_normal or rng.normal), "
                    "not from np.random or torch: then the same rng gives the same simulation.")
        mean, sd = expected_max_normal(n)
        want = sigma * mean
        tol = 5 * sigma * sd / math.sqrt(trials) + 1e-12
        if abs(got - want) <= tol:
            continue
        if n > 1 and abs(got) <= tol:
            hint = ("about 0: you averaged the n scores of a table. The table reports the BEST of its n scores "
                    "(max over axis 1), and the inflation is that maximum minus the true value.")
        elif n > 1 and abs(got + want) <= tol:
            hint = "that is the worst of the n scores (min): the table reports the best one, the max."
        elif abs(got - true - want) <= tol + 1e-9 and true != 0:
            hint = "that is the reported score itself; the inflation is reported − true_value."
        elif sigma != 1 and abs(got - mean) <= 5 * sd / math.sqrt(trials):
            hint = "the scores scatter with standard deviation sigma: draw true_value + sigma · N(0, 1)."
        elif n > 1 and got > want + tol and got > sigma * (mean + 3 * sd):
            hint = ("far above what one table gains: take the max of each table (its n scores), then average those "
                    "maxima over the trials, not one max over every score of every trial.")
        else:
            hint = tiered("simulate `trials` tables, each of n scores scattered around true_value; each table "
                          "reports its best score; return the average of (best − true_value).",
                          "scores = true_value + sigma * rng.standard_normal((trials, n)); "
                          "return (scores.max(axis=1) − true_value).mean()")
        g, w = apart(got, want, 3)
        raise ExerciseFailed(f"{call} = {g}, expected about {w} (± {tol:.2g})\nHint: {hint}")
    passed("Exercise 6.1", "your simulation agrees with the exact expectation of the maximum on every made-up case")


# ---------------------------------------------------------------------------------------------------- 6.2
def _selection_cases() -> list[tuple[list[float], list[float]]]:
    """(validation scores, test scores) of K settings: correlated, distinct, the two winners always differ."""
    rng = np.random.default_rng(62)
    cases = []
    for k in (5, 12, 2, 30, 7):
        while True:
            quality = rng.uniform(0.85, 0.99, k)
            val = np.round(quality + rng.normal(0, 0.01, k), 6)
            test = np.round(quality + rng.normal(0, 0.01, k), 6)
            best_val, best_test = int(np.argmax(val)), int(np.argmax(test))
            # the winners differ; with k > 2 the validation loser is not the test winner (each mistake its hint)
            if (best_val != best_test and len(set(val)) == k and len(set(test)) == k
                    and (k == 2 or int(np.argmin(val)) != best_test)):
                cases.append((val.tolist(), test.tolist()))
                break
    return cases


@counts_attempts("Exercise 6.2")
def check_select_on_validation(fn: Callable[[Sequence[float], Sequence[float]], tuple[int, float]]) -> None:
    """Exercise 6.2: ``fn(val_scores, test_scores)`` → ``(chosen, reported)``: the index of the best validation
    score, and the test score of that setting."""
    require_function(fn, "select_then_report", "(val_scores, test_scores)")
    name = "select_then_report"
    for val, test in _selection_cases():
        given_val, given_test = list(val), list(test)
        call = f"{name}(val_scores, test_scores) with {len(val)} settings"
        got = call_student(fn, name, given_val, given_test)
        require(isinstance(got, (tuple, list)) and len(got) == 2, f"{call} returned {got!r}",
                "return two values: `return chosen, reported`.")
        require(given_val == val and given_test == test, f"{call} changed the lists it was given",
                "read the scores without sorting or editing them: their order is the order of the settings.")
        chosen = as_integer(got[0])
        require(chosen is not None, f"{call}: chosen is {got[0]!r}, expected the index of a setting (int)",
                "return the position of the chosen setting, e.g. int(np.argmax(val_scores)).")
        reported = _number(got[1], f"{call}: reported")
        want = int(np.argmax(val))
        if chosen != want:
            if chosen == int(np.argmax(test)):
                hint = ("you chose the setting with the best TEST score: that is model selection on the test set. "
                        "Choose on the validation scores only.")
            elif chosen == int(np.argmin(val)):
                hint = "higher is better here (AUROC-like scores): choose the largest validation score."
            else:
                hint = tiered("the chosen setting is the one whose validation score is largest.",
                              "chosen = int(np.argmax(val_scores))")
            raise ExerciseFailed(f"{call}: chosen = {chosen}, expected {want}\nHint: {hint}")
        if not math.isclose(reported, test[want], rel_tol=1e-12):
            if math.isclose(reported, val[want], rel_tol=1e-12):
                hint = ("that is the validation score of the chosen setting; report its TEST score (the validation "
                        "score is biased upwards: it was used to choose).")
            elif math.isclose(reported, max(test), rel_tol=1e-12):
                hint = "that is the best test score of any setting; report the test score of the CHOSEN setting."
            else:
                hint = tiered("report the test score of the chosen setting.", "reported = test_scores[chosen]")
            g, w = apart(reported, test[want])
            raise ExerciseFailed(f"{call}: reported = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 6.2", "you choose on validation and report the test score of that choice, on every made-up case")


# ---------------------------------------------------------------------------------------------------- 6.3
def _paired_cases() -> list[tuple[list[float], list[float]]]:
    """(a, b): a metric of two variants over the same seeds; a large seed effect, a small difference."""
    rng = np.random.default_rng(63)
    cases = []
    for n, gap in ((3, 0.004), (5, -0.002), (8, 0.001), (2, 0.01), (10, 0.0)):
        seed_effect = rng.normal(0.95, 0.004, n)
        a = seed_effect + gap + rng.normal(0, 0.0008, n)
        b = seed_effect + rng.normal(0, 0.0008, n)
        cases.append((np.round(a, 6).tolist(), np.round(b, 6).tolist()))
    return cases


@counts_attempts("Exercise 6.3")
def check_paired_difference(fn: Callable[[Sequence[float], Sequence[float]], tuple[float, float]]) -> None:
    """Exercise 6.3: ``fn(a, b)`` → ``(mean, sem)`` of the per-seed differences ``a[i] − b[i]``: their mean and
    its standard error ``std(d, ddof=1) / sqrt(n)``. The reference standard error is the mean divided by
    ``scipy.stats.ttest_rel(a, b)``'s t statistic."""
    require_function(fn, "paired_difference", "(a, b)")
    name = "paired_difference"
    for a, b in _paired_cases():
        given_a, given_b = list(a), list(b)
        n = len(a)
        call = f"{name}(a, b) over {n} seeds"
        got = call_student(fn, name, given_a, given_b)
        require(isinstance(got, (tuple, list)) and len(got) == 2, f"{call} returned {got!r}",
                "return two values: `return mean, sem`.")
        require(given_a == a and given_b == b, f"{call} changed the lists it was given",
                "the i-th entries of a and b belong to the same seed: do not sort or edit them.")
        mean, sem = _number(got[0], f"{call}: mean"), _number(got[1], f"{call}: sem")
        d = np.subtract(a, b)
        t = stats.ttest_rel(a, b).statistic
        want_mean = float(d.mean())
        want_sem = float(want_mean / t)
        if not math.isclose(mean, want_mean, rel_tol=1e-9, abs_tol=1e-12):
            hint = ("the sign: the difference is a − b (variant a minus variant b)."
                    if math.isclose(mean, -want_mean, rel_tol=1e-9, abs_tol=1e-12) else
                    tiered("the mean over seeds of the per-seed differences a[i] − b[i].",
                           "d = np.subtract(a, b); mean = d.mean()"))
            g, w = apart(mean, want_mean)
            raise ExerciseFailed(f"{call}: mean = {g}, expected {w}\nHint: {hint}")
        if math.isclose(sem, want_sem, rel_tol=1e-6):
            continue
        sd1, sd0 = float(d.std(ddof=1)), float(d.std(ddof=0))
        unpaired = math.sqrt(np.var(a, ddof=1) / n + np.var(b, ddof=1) / n)
        if math.isclose(sem, sd0 / math.sqrt(n), rel_tol=1e-6):
            hint = ("ddof: the spread is estimated around the sample's own mean, so divide the sum of squares by "
                    "n − 1 (np.std(d, ddof=1)); np.std's default divides by n and underestimates it.")
        elif math.isclose(sem, sd1, rel_tol=1e-6) or math.isclose(sem, sd0, rel_tol=1e-6):
            hint = "that is the spread of one seed's difference; the standard error of their MEAN divides it by √n."
        elif math.isclose(sem, unpaired, rel_tol=1e-6):
            hint = ("that treats a and b as independent samples. Seed i gives both variants the same initialisation "
                    "and data order: pair them, take the differences d = a − b first, then d's standard error.")
        else:
            hint = tiered("the standard error of the mean of the n per-seed differences.",
                          "np.std(d, ddof=1) / np.sqrt(len(d))")
        g, w = apart(sem, want_sem)
        raise ExerciseFailed(f"{call}: sem = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 6.3", "your paired mean and standard error agree with scipy's paired t-test on every made-up case")
