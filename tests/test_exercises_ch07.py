"""Chapter 7 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch07 import (
    _ig_expectation_numeric,
    _loss_variance_numeric,
    _parallel_reference,
    check_expected_log_normal,
    check_loss_variance,
    check_parallel_flow_parameters,
    check_standardise,
)
from uflow_lib.inverse_gamma import expected_normal_log_likelihood


def _stub(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------- references
def test_references_golden():
    # the module docstring's hand counts of MobileNetV2's parallel flows
    assert [_parallel_reference(c, n, 64) for c, n in ((24, 2), (32, 5), (96, 8))] == [137_400, 404_880, 1_682_304]
    # E[log N(z; 0, σ²)] for C = 1, z = 0, IG(α, β): −½ log 2π − ½ (log β − ψ(α)), by hand
    want = -0.5 * math.log(2 * math.pi) - 0.5 * (math.log(2.0) - special.digamma(3.0))
    assert _ig_expectation_numeric(np.zeros(1), 3.0, 2.0) == pytest.approx(want, rel=1e-9)
    # and it agrees with the library's closed form on a wider fibre
    z = np.random.default_rng(0).normal(0, 0.3, 16)
    lib = expected_normal_log_likelihood(torch.from_numpy(z)[None], torch.tensor([math.log(20.0)], dtype=torch.float64),
                                         torch.tensor([math.log(2.0)], dtype=torch.float64))
    assert _ig_expectation_numeric(z, 20.0, 2.0) == pytest.approx(float(lib), rel=1e-9)
    # β* = α q / (2k): mode q/C·α/(α+1) for k = C/2, half of it for k = C
    assert _loss_variance_numeric(3.2, 32, 59.5, 16.0) == pytest.approx(0.1 * 59.5 / 60.5, rel=1e-8)
    assert _loss_variance_numeric(3.2, 32, 59.5, 32.0) == pytest.approx(0.05 * 59.5 / 60.5, rel=1e-8)


# ------------------------------------------------------------------------------------------- 7.1
def parallel_flow_parameters(c, blocks, pos=64):
    d, out = math.ceil(c / 2) + pos, 2 * (c // 2)
    return blocks * ((9 * d * d + d) + 2 * d + (9 * d * out + out) + 2 * c)


def test_parallel_flow_parameters_passes(capsys):
    check_parallel_flow_parameters(parallel_flow_parameters)
    out = capsys.readouterr().out
    assert "✓ Exercise 7.1" in out and "2,224,584" not in out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda c, n, pos=64: parallel_flow_parameters(c, n, pos) - 2 * c * n, "global affine"),
        (lambda c, n, pos=64: parallel_flow_parameters(c, n, pos) - 2 * n * (math.ceil(c / 2) + pos), "LayerNorm"),
        (lambda c, n, pos=64: parallel_flow_parameters(c, n, pos) - n * (math.ceil(c / 2) + pos + 2 * (c // 2)), "bias"),
        (lambda c, n, pos=64: n * ((9 * (c // 2 + pos) ** 2 + c // 2 + pos) + 2 * (c // 2 + pos)
                                   + (9 * (c // 2 + pos) * 2 * (c // 2) + 2 * (c // 2)) + 2 * c), "odd c"),
        (None, "expected your function"),
        (_stub, "not written yet"),
        (lambda c, n, pos=64: None, "expected one number"),
    ],
)
def test_parallel_flow_parameters_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_parallel_flow_parameters(wrong)


# ------------------------------------------------------------------------------------------- 7.2
def expected_log_normal(z, alpha, beta):
    C, q = len(z), float(np.sum(np.asarray(z) ** 2))
    return -C / 2 * math.log(2 * math.pi) - C / 2 * (math.log(beta) - special.digamma(alpha)) - alpha / (2 * beta) * q


def _plug_in_mode(z, alpha, beta):
    v = beta / (alpha + 1)
    return -len(z) / 2 * math.log(2 * math.pi * v) - float(np.sum(z**2)) / (2 * v)


def _authors_c(z, alpha, beta):
    C, q = len(z), float(np.sum(z**2))
    return -C / 2 * math.log(2 * math.pi) - C * (math.log(beta) - special.digamma(alpha)) - alpha / (2 * beta) * q


def expected_log_normal_torch32(z, alpha, beta):  # torch float32, torch.digamma as the hint suggests
    z, a, b = torch.as_tensor(z, dtype=torch.float32), torch.tensor(alpha), torch.tensor(beta)
    C = z.numel()
    return -C / 2 * math.log(2 * math.pi) - C / 2 * (torch.log(b) - torch.digamma(a)) - a / (2 * b) * z.pow(2).sum()


@pytest.mark.parametrize("solution", [expected_log_normal, expected_log_normal_torch32])
def test_expected_log_normal_passes(solution, capsys):
    check_expected_log_normal(solution)
    assert "Exercise 7.2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_plug_in_mode, "not linear"),
        (_authors_c, "C/2, not C"),
        (lambda z, a, b: -len(z) / 2 * math.log(2 * math.pi) - len(z) / 2 * (math.log(b) + special.digamma(a))
         - a / (2 * b) * float(np.sum(z**2)), "minus sign"),
        (lambda z, a, b: expected_log_normal(z, a, b) + 1.0, "linear in log σ²"),
        (lambda z, a, b: [1.0, 2.0], "expected one number"),
        (_stub, "not written yet"),
    ],
)
def test_expected_log_normal_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_expected_log_normal(wrong)


# ------------------------------------------------------------------------------------------- 7.3
def loss_variance(q, C, alpha, k):
    return alpha * q / (2 * k) / (alpha + 1)


def test_loss_variance_passes(capsys):
    check_loss_variance(loss_variance)
    out = capsys.readouterr().out
    assert "✓ Exercise 7.3" in out and "0.0983" not in out and "0.0492" not in out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda q, C, a, k: a * q / (2 * k), "mode of IG"),
        (lambda q, C, a, k: q / C, "depends on α and k"),
        (lambda q, C, a, k: a * q / k / (a + 1), "factor 2"),
        (lambda q, C, a, k: None, "expected one number"),
        (_stub, "not written yet"),
    ],
)
def test_loss_variance_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_loss_variance(wrong)


# ------------------------------------------------------------------------------------------- 7.4
def standardise(z, variance):
    return z / variance.sqrt()[:, None]


def _in_place(z, variance):
    z /= variance.sqrt()[:, None]
    return z


def test_standardise_passes(capsys):
    check_standardise(standardise)
    assert "Exercise 7.4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda z, v: z / v[:, None], "not by the variance"),
        (lambda z, v: z * v.sqrt()[:, None], "do not multiply"),
        (lambda z, v: z / v.sqrt(), "channel axis"),  # broadcasting (B, h, w) against (B, C, h, w) fails
        (lambda z, v: (z / v.sqrt()[:, None]).mean(1), "keep every channel"),
        (_in_place, "in place"),
        (lambda z, v: None, "returned None"),
        (_stub, "not written yet"),
    ],
)
def test_standardise_fails(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_standardise(wrong)
