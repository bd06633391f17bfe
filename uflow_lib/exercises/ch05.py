r"""Checks for the exercises of chapter 5 (the a contrario NFA).

Each ``check_*`` calls the student's function on cases it builds itself and compares the result with an
*independent* reference, never with the formula the exercise asks for:

* 5.1, the NFA of a region: the Markov (Chernoff) bound minimised over :math:`\lambda` numerically
  (``scipy.optimize.minimize_scalar``) instead of its closed form;
* 5.2, the number of tests: exact decimal arithmetic (``decimal``, 60 digits, no logarithm trick);
* 5.3, the least detectable level: Lambert's :math:`W_{-1}` function (``scipy.special.lambertw``);
* 5.4, the binomial tail of the block NFA: an exact rational sum (``fractions``, ``math.comb``).

A wrong, missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import optimize, special

from ..nfa import POLYOMINO_ALPHA, POLYOMINO_BETA
from . import (ExerciseFailed, apart, as_finite_number, call_student, counts_attempts, passed, require,
               require_function, tiered)

__all__ = ["check_region_log10_nfa", "check_log10_num_tests", "check_min_level", "check_block_log10_tail"]

LN10 = math.log(10)


def _call(fn: Callable, name: str, *args) -> Any:
    """:func:`~uflow_lib.exercises.call_student`, with a hint of its own for an OverflowError (huge numbers)."""

    def guarded(*a):
        try:
            return fn(*a)
        except OverflowError as err:
            raise ExerciseFailed(f"calling `{name}` raised OverflowError: {err}\n"
                                 f"Hint: the numbers here have hundreds of digits; work with logarithms all the way "
                                 f"(e.g. scipy.special.logsumexp to add terms given by their logs).") from err

    return call_student(guarded, name, *args)


def _as_float(value: Any, call: str) -> float:
    """The student's return value as a finite float, or a helpful failure."""
    return as_finite_number(value, call, "an overflow? Work with logarithms all the way (the numbers here have "
                                         "hundreds of digits).")


def _close(got: float, want: float, rel: float = 1e-6, abs_: float = 1e-9) -> bool:
    return math.isclose(got, want, rel_tol=rel, abs_tol=abs_)


def _failed(call: str, got: float, want: float, hint: str) -> ExerciseFailed:
    """The failure of ``call``: both numbers with enough digits to differ, and the hint."""
    g, w = apart(got, want)
    return ExerciseFailed(f"{call} = {g}, expected {w}\nHint: {hint}")


# ---------------------------------------------------------------------------------------------------- 5.1
def _chernoff_ln_numeric(x: float, C: int) -> float:
    r"""ln of :math:`\min_{0 \le \lambda < 1/2} E[e^{\lambda X}] e^{-\lambda x}` for :math:`X \sim \chi^2_C`."""
    res = optimize.minimize_scalar(lambda lam: -C / 2 * math.log1p(-2 * lam) - lam * x, bounds=(0.0, 0.5 - 1e-12),
                                   method="bounded", options=dict(xatol=1e-13))
    return min(0.0, float(res.fun))  # λ = 0 gives 1: the bound never exceeds a probability of 1


def _region_reference(m: np.ndarray, region: np.ndarray, C: int, log10_nt: float) -> float:
    x = C * float(m[region].min())
    return log10_nt + int(region.sum()) * _chernoff_ln_numeric(x, C) / LN10


def _region_cases() -> list[tuple[np.ndarray, np.ndarray, int, float, str]]:
    rng = np.random.default_rng(5)
    m = rng.chisquare(16, size=(9, 11)) / 16  # a mean-z² map with C = 16 channels
    m[2:5, 3:7] += 3.0  # a bright blob
    blob = np.zeros_like(m, dtype=bool)
    blob[2:5, 3:7] = True
    pixel = np.zeros_like(blob)
    pixel[3, 4] = True
    low = np.zeros_like(blob)
    low[7:9, 0:3] = True
    m2 = m.copy()
    m2[7:9, 0:3] = 0.5  # a "too normal" region: t < 1
    return [(m, blob, 16, 50.0, "the blob"), (m, pixel, 16, 50.0, "one pixel"),
            (m2, low, 16, 50.0, "a region with mean z² 0.5"), (m * 2, blob, 200, 120.0, "the blob, C = 200")]


@counts_attempts("Exercise 5.1")
def check_region_log10_nfa(fn: Callable[[np.ndarray, np.ndarray, int, float], float]) -> None:
    r"""Exercise 5.1: ``fn(m, region, C, log10_nt)`` → :math:`\log_{10}\mathrm{NFA}(R)` with the valid bound.

    The reference minimises the Markov bound :math:`E[e^{\lambda X}]e^{-\lambda x}` over :math:`\lambda`
    numerically at :math:`x = C \min_R m` (it never uses the closed form).
    """
    require_function(fn, "region_log10_nfa", "(m, region, C, log10_nt)")
    for m, region, C, log10_nt, what in _region_cases():
        call = f"region_log10_nfa(m, region, C={C}, log10_nt={log10_nt}) for {what}"
        got = _as_float(_call(fn, "region_log10_nfa", m.copy(), region.copy(), C, log10_nt), call)
        want = _region_reference(m, region, C, log10_nt)
        if _close(got, want, rel=1e-5, abs_=1e-4):
            continue
        t_min, t_mean = m[region].min(), m[region].mean()
        area = int(region.sum())
        per_pixel = sum(_chernoff_ln_numeric(C * v, C) for v in m[region]) / LN10
        if t_min <= 1 and got < log10_nt:
            hint = ("below the χ² mean (t ≤ 1) the Chernoff bound is not a bound: use log10 P = 0 there "
                    "(the 'valid' form), so the NFA is N_T itself.")
        elif _close(got, want - log10_nt, rel=1e-6, abs_=1e-6):
            hint = "the NFA is N_T · P: add log10_nt to log10 P(R)."
        elif _close(got, log10_nt + area * _chernoff_ln_numeric(C * t_mean, C) / LN10, rel=1e-6, abs_=1e-6):
            hint = "use the region's minimum of m, not its mean: every pixel of R has q ≥ C · min_R m."
        elif _close(got, log10_nt + per_pixel, rel=1e-6, abs_=1e-6):
            hint = ("the tree NFA bounds the event 'every pixel of R has q ≥ x' with x = C · min_R m, the same x "
                    "for all |R| pixels: log10 P(R) = |R| · (bound at x).")
        else:
            hint = tiered("the NFA is the number of tests times the probability that every pixel of R is at least "
                          "as extreme as R's least extreme pixel under H0, bounded with the valid Chernoff bound.",
                          "log10 NFA = log10_nt + |R| · (−C/2) · (t − 1 − ln t) / ln 10 with t = min_R m (0 "
                          "instead of the bound when t ≤ 1).")
        raise _failed(call, got, want, hint)
    passed("Exercise 5.1", "your NFA matches the numerically minimised bound on every region of the check")


# ---------------------------------------------------------------------------------------------------- 5.2
def _log10_num_tests_exact(sizes: Sequence[tuple[int, int]], positions: bool = True) -> float:
    r""":math:`\log_{10}\sum_s h_s w_s \sum_r \alpha\beta^r/r` with 60-digit decimals (no overflow, no log trick).

    ``positions=False`` drops the factor :math:`h_s w_s` (a common mistake the check recognises).
    """
    with localcontext() as ctx:
        ctx.prec = 60
        alpha, beta = Decimal(repr(POLYOMINO_ALPHA)), Decimal(repr(POLYOMINO_BETA))
        total = Decimal(0)
        for h, w in sizes:
            power, inner = Decimal(1), Decimal(0)
            for r in range(1, h * w + 1):
                power *= beta
                inner += alpha * power / r
            total += (h * w if positions else 1) * inner
        return float(total.log10())


@counts_attempts("Exercise 5.2")
def check_log10_num_tests(fn: Callable[[Sequence[tuple[int, int]]], float]) -> None:
    r"""Exercise 5.2: ``fn(sizes)`` → :math:`\log_{10} N_T` for the tree NFA, compared with exact decimals."""
    require_function(fn, "log10_num_tests", "(sizes)")
    cases = [[(1, 1)], [(1, 2), (1, 1)], [(3, 3)], [(7, 5)], [(16, 16)], [(28, 28), (14, 14)],
             [(64, 64), (32, 32), (16, 16)]]
    for sizes in cases:
        call = f"log10_num_tests({sizes})"
        got = _call(fn, "log10_num_tests", [tuple(s) for s in sizes])
        require(got is None or not (isinstance(got, float) and math.isinf(got)),
                f"{call} returned {got}", "β^r overflows a float beyond r ≈ 500: add logarithms "
                "(scipy.special.logsumexp of ln α + r ln β − ln r) instead of adding the terms themselves.")
        got = _as_float(got, call)
        want = _log10_num_tests_exact(sizes)
        if not _close(got, want, rel=1e-5):  # float32 (numpy or torch) welcome
            no_positions = _log10_num_tests_exact(sizes, positions=False)
            if _close(got, want * LN10, rel=1e-5):
                hint = "the answer must be a log10: divide a natural log by ln 10."
            elif _close(got, no_positions, rel=1e-5) and not _close(no_positions, want, rel=1e-3):
                hint = "each region shape can sit at any of the h·w positions: multiply the inner sum by h·w."
            else:
                hint = tiered("count every region shape of every size r at every position of every scale, with "
                              "the polyomino count α β^r / r for the shapes of size r; the sizes run up to the "
                              "whole map, so add the terms through their logarithms.",
                              "N_T = Σ_s h_s w_s Σ_{r=1}^{h_s w_s} α β^r / r with α, β = "
                              "uflow_lib.nfa.POLYOMINO_ALPHA, POLYOMINO_BETA.")
            raise _failed(call, got, want, hint)
    passed("Exercise 5.2", "your count matches exact 60-digit arithmetic on every set of scales of the check")


# ---------------------------------------------------------------------------------------------------- 5.3
def _min_level_reference(area: int, C: int, log10_nt: float) -> float:
    r"""Smallest :math:`t` with :math:`|R| \frac C2 (t - 1 - \ln t) = \log N_T`: :math:`t = -W_{-1}(-e^{-1-a})`."""
    a = log10_nt * LN10 / (area * C / 2)
    return float(-special.lambertw(-math.exp(-1.0 - a), k=-1).real)


@counts_attempts("Exercise 5.3")
def check_min_level(fn: Callable[[int, int, float], float]) -> None:
    r"""Exercise 5.3: ``fn(area, C, log10_nt)`` → the smallest region minimum :math:`t` that is detected (ε = 1).

    The reference solves :math:`t - 1 - \ln t = a` with Lambert's :math:`W_{-1}` (the branch above 1).
    """
    require_function(fn, "min_level", "(area, C, log10_nt)")
    cases = [(1, 48, 155.48), (10, 48, 155.48), (100, 44, 623.04), (784, 816, 476.92), (5, 2, 3.0), (30, 8, 1.0)]
    for area, C, log10_nt in cases:
        call = f"min_level({area}, {C}, {log10_nt})"
        got = _as_float(_call(fn, "min_level", area, C, log10_nt), call)
        want = _min_level_reference(area, C, log10_nt)
        if not _close(got, want, rel=1e-5):
            no_ln10 = _min_level_reference(area, C, log10_nt / LN10)  # a with ln N_T := log10 N_T
            if got <= 1.0:
                hint = ("the bound is informative only above the χ² mean: look for t > 1 (t − 1 − ln t is 0 at "
                        "t = 1 and also grows again below 1; that root is not the one you want).")
            elif _close(got, no_ln10, rel=1e-4):
                hint = ("a base mismatch: the bound is in natural logs, N_T in log10. Solve "
                        "area·(C/2)·(t − 1 − ln t) = log10_nt · ln 10.")
            else:
                hint = tiered("the least detectable level is where the NFA of the region equals ε = 1: solve that "
                              "equation for t above the χ² mean, numerically.",
                              "solve area·(C/2)·(t − 1 − ln t)/ln 10 = log10_nt for t > 1, e.g. with "
                              "scipy.optimize.brentq on [1, 1 + 2a + 10] where a is the needed value of t − 1 − ln t.")
            raise _failed(call, got, want, hint)
    passed("Exercise 5.3", "your levels match Lambert's W on every case of the check")


# ---------------------------------------------------------------------------------------------------- 5.4
def _binomial_tail_exact(k_mean: float, n: int, p: float) -> float:
    r""":math:`\log_{10} P(\mathrm{Bin}(n, 1-p) \ge \lceil \bar k \rceil)` as an exact rational sum."""
    q = Fraction(1) - Fraction(p)  # the float p taken exactly
    k0 = max(0, math.ceil(Fraction(k_mean)))
    if k0 > n:
        return -math.inf
    total = sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(k0, n + 1))
    return (math.log10(total.numerator) - math.log10(total.denominator)) if total else -math.inf


@counts_attempts("Exercise 5.4")
def check_block_log10_tail(fn: Callable[[float, int, float], float]) -> None:
    r"""Exercise 5.4: ``fn(k_mean, n, p)`` → :math:`\log_{10} P(\mathrm{Bin}(n, 1-p) \ge \lceil \bar k\rceil)`."""
    require_function(fn, "block_log10_tail", "(k_mean, n, p)")
    cases = [(0.9, 9, 0.9), (2.0, 25, 0.9), (2.3, 25, 0.9), (0.0, 9, 0.9), (9.0, 9, 0.9), (7.5, 25, 0.9),
             (12.0, 15, 0.8), (3.0, 4, 0.9)]
    for k_mean, n, p in cases:
        call = f"block_log10_tail({k_mean}, {n}, {p})"
        got = _as_float(_call(fn, "block_log10_tail", k_mean, n, p), call)
        want = _binomial_tail_exact(k_mean, n, p)
        if _close(got, want, rel=1e-6, abs_=1e-9):  # float32 welcome
            continue
        if _close(got, _binomial_tail_exact(k_mean + 1, n, p), rel=1e-6, abs_=1e-12):
            hint = ("at an integer k̄ the event is Bin ≥ k̄, not Bin > k̄ (scipy's binom.sf(k) is P(X > k): pass "
                    "ceil(k̄) − 1).")
        elif _close(got, _binomial_tail_exact(math.floor(k_mean), n, p), rel=1e-6, abs_=1e-12):
            hint = "a count is an integer: P(Bin ≥ k̄) = P(Bin ≥ ceil(k̄)), not floor(k̄)."
        elif _close(got, want * LN10, rel=1e-6, abs_=1e-12):
            hint = "return a log10: divide scipy's natural-log logsf by ln 10."
        elif _close(got, _binomial_tail_exact(k_mean, n, 1 - p), rel=1e-6, abs_=1e-12):
            hint = "a hit has probability 1 − p under H0 (p is the probability of z² ≤ τ), not p."
        else:
            hint = tiered("under H0 the number of hits among n trials is binomial with the probability of one hit; "
                          "the window is as extreme as observed when it has at least ceil(k̄) hits.",
                          "log10 P(Bin(n, 1 − p) ≥ ceil(k̄)), e.g. scipy.stats.binom.logsf(ceil(k̄) − 1, n, 1 − p) "
                          "/ ln 10.")
        raise _failed(call, got, want, hint)
    passed("Exercise 5.4", "your tail matches an exact rational sum on every case of the check")
