"""Chapter 5 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from uflow_lib import nfa
from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch05 import (
    _binomial_tail_exact,
    _log10_num_tests_exact,
    _min_level_reference,
    check_block_log10_tail,
    check_log10_num_tests,
    check_min_level,
    check_region_log10_nfa,
)

LN10 = math.log(10)


def _stub(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------- references
def test_references_golden():
    # hand-checked: 28² + 14² gives the paper's 476.92; 1×1 is log10(α β)
    assert _log10_num_tests_exact([(28, 28), (14, 14)]) == pytest.approx(476.92, abs=0.005)
    assert _log10_num_tests_exact([(1, 1)]) == pytest.approx(math.log10(0.316915 * 4.062570), rel=1e-12)
    assert _log10_num_tests_exact([(16, 16)]) == pytest.approx(nfa.log10_num_tests_tree([(16, 16)]), rel=1e-12)
    # Lambert W root solves t − 1 − ln t = a
    t = _min_level_reference(10, 48, 155.48)
    assert t > 1 and 10 * 24 * (t - 1 - math.log(t)) / LN10 == pytest.approx(155.48, rel=1e-10)
    # exact binomial tails: P(Bin(9, 0.1) >= 1) = 1 − 0.9^9, a full window 0.1^9
    assert _binomial_tail_exact(0.9, 9, 0.9) == pytest.approx(math.log10(1 - 0.9**9), rel=1e-12)
    assert _binomial_tail_exact(9, 9, 0.9) == pytest.approx(-9, rel=1e-12)
    assert _binomial_tail_exact(0, 9, 0.9) == 0.0


# ------------------------------------------------------------------------------------------- 5.1
def region_log10_nfa(m, region, C, log10_nt):
    return log10_nt + region.sum() * nfa.chernoff_log10_tail(C * m[region].min(), C, "valid")


def test_region_log10_nfa_passes(capsys):
    check_region_log10_nfa(region_log10_nfa)
    assert "Exercise 5.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda m, r, C, nt: nt + r.sum() * nfa.chernoff_log10_tail(C * m[r].mean(), C, "valid"), "minimum"),
        (lambda m, r, C, nt: r.sum() * nfa.chernoff_log10_tail(C * m[r].min(), C, "valid"), "add log10_nt"),
        (lambda m, r, C, nt: nt + r.sum() * nfa.chernoff_log10_tail(C * m[r].min(), C, "paper"), "not a bound"),
        (lambda m, r, C, nt: nt + nfa.chernoff_log10_tail(C * m[r], C, "valid").sum(), "every pixel"),
    ],
)
def test_region_log10_nfa_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_region_log10_nfa(wrong)


# ------------------------------------------------------------------------------------------- 5.2
def log10_num_tests(sizes):
    logs = []
    for h, w in sizes:
        r = np.arange(1, h * w + 1)
        logs.append(special.logsumexp(math.log(nfa.POLYOMINO_ALPHA) + r * math.log(nfa.POLYOMINO_BETA) - np.log(r))
                    + math.log(h * w))
    return special.logsumexp(logs) / LN10


def log10_num_tests_torch32(sizes):  # torch, float32 throughout
    a, b = torch.tensor(nfa.POLYOMINO_ALPHA), torch.tensor(nfa.POLYOMINO_BETA)
    terms = []
    for h, w in sizes:
        r = torch.arange(1, h * w + 1, dtype=torch.float32)
        terms.append(torch.logsumexp(torch.log(a) + r * torch.log(b) - torch.log(r), 0) + math.log(h * w))
    return torch.logsumexp(torch.stack(terms), 0) / math.log(10)


@pytest.mark.parametrize("solution", [log10_num_tests, log10_num_tests_torch32])
def test_log10_num_tests_passes(solution, capsys):
    check_log10_num_tests(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 5.2" in out and "476" not in out


def test_log10_num_tests_small_error_is_not_called_missing_positions():
    with pytest.raises(ExerciseFailed) as err:
        check_log10_num_tests(lambda sizes: log10_num_tests(sizes) * (1 + 1e-4))
    assert "h·w" not in str(err.value)


def _no_positions(sizes):  # forgets the h·w positions of each shape
    return special.logsumexp([log10_num_tests([(h, w)]) * LN10 - math.log(h * w) for h, w in sizes]) / LN10


def _direct_sum(sizes):  # adds the terms themselves: β^r overflows (OverflowError) beyond r ≈ 500
    return math.log10(sum(h * w * sum(0.316915 * 4.062570**r / r for r in range(1, h * w + 1)) for h, w in sizes))


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda sizes: log10_num_tests(sizes) * LN10, "log10"),
        (_no_positions, "positions"),
        (_direct_sum, "overflow|logsumexp"),
        (lambda sizes: None, "expected one number"),
    ],
)
def test_log10_num_tests_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_log10_num_tests(wrong)


# ------------------------------------------------------------------------------------------- 5.3
def min_level(area, C, log10_nt):
    a = log10_nt * LN10 / (area * C / 2)
    return optimize.brentq(lambda t: t - 1 - math.log(t) - a, 1.0, 1.0 + 2 * a + 10, xtol=1e-14, rtol=1e-14)


def test_min_level_passes(capsys):
    check_min_level(min_level)
    assert "Exercise 5.3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda area, C, nt: min_level(area, C, nt / LN10), "natural logs"),  # forgot ln 10
        (lambda area, C, nt: -special.lambertw(-math.exp(-1 - nt * LN10 / (area * C / 2)), k=0).real, "above"),
        (None, "expected your function"),
        (_stub, "not written yet"),
    ],
)
def test_min_level_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_min_level(wrong)


# ------------------------------------------------------------------------------------------- 5.4
def block_log10_tail(k_mean, n, p):
    return stats.binom.logsf(math.ceil(k_mean) - 1, n, 1 - p) / LN10


def test_block_log10_tail_passes(capsys):
    check_block_log10_tail(block_log10_tail)
    assert "Exercise 5.4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda k, n, p: stats.binom.logsf(k, n, 1 - p) / LN10, "not Bin > k̄"),  # the authors' logsf(k̄)
        (lambda k, n, p: stats.binom.logsf(math.ceil(k) - 1, n, 1 - p), "log10"),
        (lambda k, n, p: stats.binom.logsf(math.ceil(k) - 1, n, p) / LN10, "1 − p"),
        (_stub, "not written yet"),
    ],
)
def test_block_log10_tail_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_block_log10_tail(wrong)
