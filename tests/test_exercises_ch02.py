"""Chapter 2 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch02 import (
    _saturated_block_coupling_logdet,
    check_affine_log_density,
    check_clamp_bound,
    check_coupling_inverse,
    check_density_1d,
    coupling_forward,
)


def stub(*args):
    raise NotImplementedError


# ------------------------------------------------------------------------------------------ 2.1 1-D density
def density_x(x):
    return stats.norm.pdf(x**3 + x) * np.abs(3 * x**2 + 1)


def test_density_1d_passes_on_solution(capsys):
    check_density_1d(density_x)
    out = capsys.readouterr().out
    assert "✓ Exercise 2.1" in out and "0.574" not in out  # the success line gives no value away  # φ(0.625)·1.75 = 0.574282


@pytest.mark.parametrize("wrong,match", [
    (lambda x: stats.norm.pdf(x**3 + x), r"multiply by \|f'\(x\)\|"),
    (lambda x: stats.norm.pdf(x**3 + x) / (3 * x**2 + 1), "you divided by f'"),
    (lambda x: stats.norm.logpdf(x**3 + x) + np.log(3 * x**2 + 1), "log-density"),
    (lambda x: float(np.sum(density_x(x))), "one value per input point"),
    (lambda x: None, "returned None"),
    (None, "define `def density_x"),
    (stub, "not written yet"),
])
def test_density_1d_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_density_1d(wrong)


# --------------------------------------------------------------------------------- 2.2 affine log-density
def affine_log_density(x, A, b):
    z = x @ A.T + b
    return -0.5 * (z**2).sum(1) - 0.5 * x.shape[1] * np.log(2 * np.pi) + np.linalg.slogdet(A)[1]


def test_affine_passes_on_solution(capsys):
    check_affine_log_density(affine_log_density)
    assert "Exercise 2.2" in capsys.readouterr().out


def test_affine_golden_value():
    # statement's example by hand: z = A·[1, -0.5] + b = [1.45, -1.6], det A = 3.25
    want = -0.5 * (1.45**2 + 1.6**2) - math.log(2 * math.pi) + math.log(3.25)
    got = affine_log_density(np.array([[1.0, -0.5]]), np.array([[1.5, 0.5], [-0.5, 2.0]]), np.array([0.2, -0.1]))
    assert got[0] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("wrong,match", [
    (lambda x, A, b: affine_log_density(x, A, b) - np.linalg.slogdet(A)[1], "left out the volume term"),
    (lambda x, A, b: affine_log_density(x, A, b) - 2 * np.linalg.slogdet(A)[1], "sign of the volume term"),
    (lambda x, A, b: affine_log_density(x, A, b) - np.linalg.slogdet(A)[1] + np.log(np.linalg.det(A)),
     "ABSOLUTE value"),
    (lambda x, A, b: affine_log_density(x, A, b) + 0.5 * x.shape[1] * np.log(2 * np.pi), "normalising constant"),
    (stub, "not written yet"),
])
def test_affine_fails_helpfully(wrong, match):
    with np.errstate(invalid="ignore"), pytest.raises(ExerciseFailed, match=match):  # log(det < 0) is NaN
        check_affine_log_density(wrong)


# ------------------------------------------------------------------------------------ 2.3 coupling inverse
def coupling_inverse(y, st):
    d1 = y.shape[1] - y.shape[1] // 2
    y1, y2 = y[:, :d1], y[:, d1:]
    s, t = st(y1)
    return torch.cat([y1, (y2 - t) * torch.exp(-s)], dim=1)


def test_coupling_forward_is_inverted_by_solution():
    st = lambda x1: (torch.tanh(x1[:, :1]), x1[:, :1] ** 2)  # noqa: E731
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    y, log_det = coupling_forward(x, st)
    torch.testing.assert_close(coupling_inverse(y, st), x)
    torch.testing.assert_close(log_det, torch.tanh(x[:, 0]))


def test_coupling_inverse_passes_on_solution(capsys):
    check_coupling_inverse(coupling_inverse)
    assert "Exercise 2.3" in capsys.readouterr().out


def _wrong_order(y, st):
    d1 = y.shape[1] - y.shape[1] // 2
    s, t = st(y[:, :d1])
    return torch.cat([y[:, :d1], y[:, d1:] * torch.exp(-s) - t], dim=1)


def _wrong_sign(y, st):
    d1 = y.shape[1] - y.shape[1] // 2
    s, t = st(y[:, :d1])
    return torch.cat([y[:, :d1], (y[:, d1:] - t) * torch.exp(s)], dim=1)


def _floor_split(y, st):
    d1 = y.shape[1] // 2
    s, t = st(y[:, :d1])
    return torch.cat([y[:, :d1], (y[:, d1:] - t) * torch.exp(-s)], dim=1)


def _in_place(y, st):
    d1 = y.shape[1] - y.shape[1] // 2
    s, t = st(y[:, :d1])
    y[:, d1:] = (y[:, d1:] - t) * torch.exp(-s)
    return y


@pytest.mark.parametrize("wrong,match", [
    (_wrong_order, "subtract t BEFORE"),
    (_wrong_sign, r"multiply by exp\(−s\)"),
    (_floor_split, "D=3, st expects the first"),
    (_in_place, "in place"),
    (lambda y, st: y, "does not give y back"),
    (stub, "not written yet"),
    (None, "define `def coupling_inverse"),
])
def test_coupling_inverse_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_coupling_inverse(wrong)


def test_coupling_check_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_coupling_inverse(coupling_inverse)
    torch.testing.assert_close(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------- 2.4 clamp bound
def max_coupling_logdet(C, H, W, clamp):
    return float(clamp * (C // 2) * H * W)


def test_saturated_block_reference_is_golden():
    # hand value: 2.0 · 408 channels · 784 pixels; and an odd channel count transforms floor(C/2) channels
    assert _saturated_block_coupling_logdet(816, 28, 28, 2.0) == pytest.approx(639_744, rel=1e-9)
    assert _saturated_block_coupling_logdet(5, 3, 4, 1.5) == pytest.approx(1.5 * 2 * 12, rel=1e-9)


@pytest.mark.parametrize("solution", [
    max_coupling_logdet,
    lambda C, H, W, clamp: torch.tensor(clamp * (C // 2) * H * W),  # a 0-d tensor
    lambda C, H, W, clamp: np.float32(clamp) * (C // 2) * H * W,
    lambda C, H, W, clamp: clamp * (C // 2) * H * W,  # an int times a float
])
def test_clamp_bound_passes_on_solution(solution, capsys):
    check_clamp_bound(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 2.4" in out and "639" not in out


@pytest.mark.parametrize("wrong,match", [
    (lambda C, H, W, clamp: clamp * C * H * W, "only the second half"),
    (lambda C, H, W, clamp: clamp * (C - C // 2) * H * W, "floor"),
    (lambda C, H, W, clamp: (C // 2) * H * W, "multiply by it"),
    (lambda C, H, W, clamp: clamp * (C // 2), "multiply by H·W"),
    (lambda C, H, W, clamp: "639744", "expected one number"),
    (stub, "not written yet"),
])
def test_clamp_bound_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_clamp_bound(wrong)
