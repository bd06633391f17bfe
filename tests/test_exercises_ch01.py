"""Chapter 1 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch01 import (
    _measured_receptive_field,
    check_conv_output_size,
    check_pca_basis,
    check_receptive_field,
    check_standardise,
)


# ------------------------------------------------------------------------------------------ 1.1 conv size
def conv_output_size(size, kernel, stride, padding=0):
    return (size + 2 * padding - kernel) // stride + 1


@pytest.mark.parametrize("solution", [
    conv_output_size,
    lambda n, k, s, p=0: np.int64(n + 2 * p - k) // s + 1,  # a numpy integer
    lambda n, k, s, p=0: math.floor((n + 2 * p - k) / s) + 1,
    lambda n, k, s, p=0: torch.div(torch.tensor(n + 2 * p - k), s, rounding_mode="floor") + 1,  # a 0-d tensor
])
def test_conv_size_passes_on_solution(solution, capsys):
    check_conv_output_size(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 1.1" in out and "28" not in out  # the success line gives no size away


@pytest.mark.parametrize("wrong,match", [
    (lambda n, k, s, p=0: n // s, "nn.Conv2d gives"),  # right for the chapter's layers, wrong for 255, 3, 2, 1
    (lambda n, k, s, p=0: -(-(n + 2 * p - k) // s) + 1, "round the division down"),
    (lambda n, k, s, p=0: (n + 2 * p - k) / s + 1, "expected an int"),
    (None, "define `def conv_output_size"),
])
def test_conv_size_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_conv_output_size(wrong)


def test_stub_reports_not_implemented():
    def stub(size, kernel, stride, padding=0):
        raise NotImplementedError

    with pytest.raises(ExerciseFailed, match="not written yet"):
        check_conv_output_size(stub)


# ------------------------------------------------------------------------------------ 1.2 receptive field
def receptive_field(layers):
    r, j = 1, 1
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
    return r


def test_measured_receptive_field_golden():
    # hand-derived: 3x3 s2 then 3x3 s2: 1 + 2 + 2·2 = 7; MobileNetV2 up to stride 8 (convs listed in the chapter): 59
    assert _measured_receptive_field([(3, 2), (3, 2)]) == 7
    mnv2_s8 = [(3, 2), (3, 1), (1, 1), (1, 1), (3, 2), (1, 1), (1, 1), (3, 1), (1, 1),
               (1, 1), (3, 2), (1, 1), (1, 1), (3, 1), (1, 1), (1, 1), (3, 1), (1, 1)]
    assert _measured_receptive_field(mnv2_s8) == 59 == receptive_field(mnv2_s8)


def test_receptive_field_passes_on_solution(capsys):
    check_receptive_field(receptive_field)
    assert "Exercise 1.2" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda layers: 1 + sum(k - 1 for k, _ in layers), "stride 1"),
    (lambda layers: sum(k for k, _ in layers), "gradient of one output unit"),
    (lambda layers: "big", "expected a number"),
])
def test_receptive_field_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_receptive_field(wrong)


# ----------------------------------------------------------------------------------------------- 1.3 PCA
def pca_basis(x):
    xc = x - x.mean(0)
    return torch.linalg.svd(xc, full_matrices=False).Vh[:3].T


def test_pca_passes_on_solution_and_on_rotated_basis(capsys):
    check_pca_basis(pca_basis)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    check_pca_basis(lambda x: -pca_basis(x) @ rot)  # any orthonormal basis of the subspace is right
    assert "Exercise 1.3" in capsys.readouterr().out


def _pca_by_eigh(x):
    xc = x - x.mean(0)
    return torch.linalg.eigh(xc.T @ xc).eigenvectors[:, -3:]


@pytest.mark.parametrize("solution", [
    lambda x: torch.pca_lowrank(x, q=3)[2],  # randomised, centres by itself
    lambda x: torch.pca_lowrank(x.float(), q=3, niter=2)[2],
    _pca_by_eigh,
    lambda x: torch.from_numpy(np.linalg.svd((x - x.mean(0)).numpy(), full_matrices=False)[2][:3].T.copy()),
])
def test_pca_accepts_other_correct_methods(solution, capsys):
    check_pca_basis(solution)
    assert "✓ Exercise 1.3" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [
    lambda x: torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[1:4].T,  # centred, wrong directions
    lambda x: torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[-3:].T,
])
def test_pca_does_not_say_centre_to_a_centred_answer(wrong):
    with pytest.raises(ExerciseFailed) as err:
        check_pca_basis(wrong)
    assert "centre x" not in str(err.value)


@pytest.mark.parametrize("wrong,match", [
    (lambda x: torch.linalg.svd(x, full_matrices=False).Vh[:3].T, "centre x"),  # not centred
    (lambda x: torch.eye(x.shape[1], 3), "from the data"),
    (lambda x: 2 * pca_basis(x), "not orthonormal"),
    (lambda x: pca_basis(x).T, r"shape \(12, 3\)"),
])
def test_pca_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_pca_basis(wrong)


# ------------------------------------------------------------------------------------ 1.4 standardisation
def standardise(train, x, floor=0.1):
    t = train.transpose(0, 1).flatten(1)  # (C, N·H·W)
    mean, std = t.mean(1), t.std(1)
    std = std.clamp(min=floor * float(np.median(std.numpy())))
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def test_standardise_passes_on_solution(capsys):
    check_standardise(standardise)
    # the biased std (numpy's default) differs by a factor sqrt(n/(n-1)) ≈ 1 + 2e-4 here: accepted too
    check_standardise(lambda train, x, floor=0.1: torch.from_numpy(
        (x.numpy() - train.numpy().mean((0, 2, 3), keepdims=True))
        / np.maximum(train.numpy().std((0, 2, 3), keepdims=True),
                     floor * np.median(train.numpy().std((0, 2, 3))))))
    assert "Exercise 1.4" in capsys.readouterr().out


def _no_floor(train, x, floor=0.1):
    return standardise(train, x, floor=0.0)


def _lower_median(train, x, floor=0.1):
    t = train.transpose(0, 1).flatten(1)
    mean, std = t.mean(1), t.std(1)
    std = std.clamp(min=floor * std.median().item())  # torch.median: the lower middle value
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _own_statistics(train, x, floor=0.1):
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


@pytest.mark.parametrize("wrong,match", [
    (_no_floor, "forgot the floor"),
    (_lower_median, "mean of the two middle values"),
    (_own_statistics, "training"),
    (lambda train, x, floor=0.1: x[0], "expected"),
])
def test_standardise_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_standardise(wrong)
