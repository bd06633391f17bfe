"""Tiered hints: a recognised mistake is named at once; the formula of the fallback hint waits for attempt 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uflow_lib.exercises import FORMULA_FROM_ATTEMPT, ExerciseFailed, apart, as_integer, failed_attempts
from uflow_lib.exercises.ch01 import check_conv_output_size
from uflow_lib.exercises.ch03 import check_pixel_unshuffle
from uflow_lib.exercises.ch05 import check_block_log10_tail
from uflow_lib.exercises.ch06 import check_paired_difference
from uflow_lib.exercises.ch07 import check_standardise


def _messages(check, answer, n: int) -> list[str]:
    out = []
    for _ in range(n):
        with pytest.raises(ExerciseFailed) as err:
            check(answer)
        out.append(str(err.value))
    return out


@pytest.mark.parametrize("check,wrong,formula", [
    (check_conv_output_size, lambda n, k, s, p=0: n // k, "(size + 2·padding − kernel) // stride + 1"),
    (check_paired_difference, lambda a, b: (0.5, 0.1), "d = np.subtract(a, b)"),
    (check_standardise, lambda z, v: z / (v[:, None] + 1), "z / variance.sqrt()[:, None]"),
    (check_block_log10_tail, lambda k, n, p: -1.0, "binom.logsf"),
])
def test_formula_only_from_the_third_failed_attempt(check, wrong, formula):
    first, second, third, fourth = _messages(check, wrong, 4)
    assert formula not in first and formula not in second
    assert "From failed attempt 3 on" in first
    assert formula in third and formula in fourth
    assert FORMULA_FROM_ATTEMPT == 3


def test_attempts_are_counted_per_exercise():
    _messages(check_paired_difference, lambda a, b: (1.0, 1.0), 2)
    assert failed_attempts("Exercise 6.3") == 2 and failed_attempts("Exercise 1.1") == 0
    (msg,) = _messages(check_conv_output_size, lambda n, k, s, p=0: n // k, 1)
    assert "// stride" not in msg  # the other exercise's attempts do not count here


def test_a_recognised_mistake_is_named_on_the_first_attempt_without_the_code():
    def reordered(x):  # the right values in the wrong channel order
        B, C, H2, W2 = x.shape
        return x.reshape(B, C, H2 // 2, 2, W2 // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(B, 4 * C, H2 // 2, W2 // 2)

    first, _, third = _messages(check_pixel_unshuffle, reordered, 3)
    assert "another order" in first and "permute(0, 1, 3, 5, 2, 4)" not in first
    assert "permute(0, 1, 3, 5, 2, 4)" in third


@pytest.mark.parametrize("got,want", [(1 / 3, float(np.float32(1 / 3))), (-9.0, -9.0 - 1e-9), (0.5, 0.5 + 1e-13),
                                      (476.92, 476.92000001)])
def test_numbers_in_failure_messages_differ(got, want):
    a, b = apart(got, want)
    assert a != b and math.isclose(float(a), got, rel_tol=1e-6) and math.isclose(float(b), want, rel_tol=1e-6)


def test_block_tail_failure_shows_values_that_differ():
    from scipy import stats

    def close_but_wrong(k, n, p):  # off by a relative 1e-5, beyond the tolerance (1e-6)
        return stats.binom.logsf(math.ceil(k) - 1, n, 1 - p) / math.log(10) * (1 + 1e-5)

    (msg,) = _messages(check_block_log10_tail, close_but_wrong, 1)
    got, want = msg.split("\n")[0].rsplit(" = ", 1)[1].split(", expected ")
    assert got != want and float(got) != float(want)


@pytest.mark.parametrize("value,expected", [(3, 3), (np.int64(3), 3), (np.int32(7), 7), (torch.tensor(4), 4),
                                            (np.array(5), 5), (3.0, None), (True, None), (torch.tensor(2.0), None),
                                            ("3", None)])
def test_integer_like_values(value, expected):
    assert as_integer(value) == expected
