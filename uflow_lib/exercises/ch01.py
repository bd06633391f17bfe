r"""Checks for the exercises of chapter 1 (feature extraction).

Each ``check_*`` takes the student's function, calls it on cases it builds itself and compares the result
with an *independent* reference: real ``torch.nn.Conv2d`` layers for sizes, the support of an autograd
gradient for receptive fields, :class:`uflow_lib.methods.uflow.ChannelStandardizer` for the standardisation and an
SVD for the principal components. A wrong, missing (``None``) or unfinished answer raises
:class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import ExerciseFailed, apart, as_integer, counts_attempts, passed, require, tiered
from . import call_student as _call
from . import require_function as _require_function

__all__ = ["check_conv_output_size", "check_receptive_field", "check_pca_basis", "check_standardise"]



# ---------------------------------------------------------------------------------------------------- 1.1
def _conv_size_cases() -> list[tuple[int, int, int, int]]:
    """(size, kernel, stride, padding) cases: the chapter's layers first, then awkward ones."""
    cases = [(448, 16, 16, 0), (224, 16, 16, 0), (256, 3, 2, 1), (256, 7, 2, 3), (32, 3, 1, 1),
             (255, 3, 2, 1), (250, 16, 16, 0), (17, 5, 3, 0), (9, 3, 2, 0), (100, 1, 1, 0), (31, 4, 4, 2)]
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        k = int(torch.randint(1, 8, (1,), generator=g))
        s = int(torch.randint(1, 5, (1,), generator=g))
        p = int(torch.randint(0, k // 2 + 1, (1,), generator=g))
        n = int(torch.randint(k, 80, (1,), generator=g))
        cases.append((n, k, s, p))
    return cases


@counts_attempts("Exercise 1.1")
def check_conv_output_size(fn: Callable[[int, int, int, int], int]) -> None:
    """Exercise 1.1: ``fn(size, kernel, stride, padding)`` → output side of a convolution (or patch embedding).

    The reference is the shape of a real ``nn.Conv2d`` output, so the check does not rely on a formula.
    """
    _require_function(fn, "conv_output_size", "(size, kernel, stride, padding=0)")
    for size, k, s, p in _conv_size_cases():
        want = nn.Conv2d(1, 1, k, stride=s, padding=p, bias=False)(torch.zeros(1, 1, size, size)).shape[-1]
        answer = _call(fn, "conv_output_size", size, k, s, p)
        got = as_integer(answer)
        require(got is not None,
                f"conv_output_size({size}, {k}, {s}, {p}) returned {answer!r} of type {type(answer).__name__}, "
                f"expected an int",
                "use integer division `//` (a size is a whole number of positions), or wrap with int().")
        hint = tiered("count the positions where the kernel fits entirely inside the input padded on both sides, "
                      "one every `stride` pixels.", "(size + 2·padding − kernel) // stride + 1.")
        if got == (size + 2 * p - k) / s + 1 or got == -(-(size + 2 * p - k) // s) + 1:
            hint = "the kernel cannot hang over the edge: round the division down (floor, `//`), not up."
        require(got == want, f"conv_output_size(size={size}, kernel={k}, stride={s}, padding={p}) = {got}, "
                f"but nn.Conv2d gives {want}", hint)
    passed("Exercise 1.1", "every case agrees with nn.Conv2d")


# ---------------------------------------------------------------------------------------------------- 1.2
def _measured_receptive_field(layers: Sequence[tuple[int, int]]) -> int:
    """Side of the input region that influences the central output unit, measured with autograd.

    Unpadded single-channel convolutions with all-ones weights: every input pixel in the receptive field
    gets a strictly positive gradient, every other pixel exactly zero.
    """
    convs = [nn.Conv2d(1, 1, k, stride=s, bias=False) for k, s in layers]
    for c in convs:
        nn.init.ones_(c.weight)
    rf, jump = 1, 1
    for k, s in layers:  # the recursion only sizes the input (a few output units); the answer is measured
        rf, jump = rf + (k - 1) * jump, jump * s
    x = torch.zeros(1, 1, rf + 4 * jump, rf + 4 * jump, requires_grad=True)
    y = x
    for c in convs:
        y = c(y)
    i = y.shape[-2] // 2
    (g,) = torch.autograd.grad(y[0, 0, i, i], x)
    rows = torch.nonzero(g[0, 0].abs().sum(1) > 0).flatten()
    return int(rows.max() - rows.min() + 1)


def _rf_cases() -> list[list[tuple[int, int]]]:
    cases = [[(3, 1)], [(3, 1), (3, 1)], [(3, 2), (3, 2)], [(7, 2), (3, 2), (3, 1), (3, 1)],
             [(16, 16)], [(16, 16), (1, 1)], [(1, 1), (3, 2), (1, 1), (3, 1)]]
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        n = int(torch.randint(2, 6, (1,), generator=g))
        cases.append([(int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 3, (1,), generator=g)))
                      for _ in range(n)])
    return cases


@counts_attempts("Exercise 1.2")
def check_receptive_field(fn: Callable[[Sequence[tuple[int, int]]], int]) -> None:
    r"""Exercise 1.2: ``fn(layers)`` → receptive field (pixels per side) of a stack of ``(kernel, stride)`` layers.

    The reference is measured, not computed: the extent of the non-zero gradient of one output unit with
    respect to the input of a real stack of ``nn.Conv2d`` layers.
    """
    _require_function(fn, "receptive_field", "(layers)")
    for layers in _rf_cases():
        want = _measured_receptive_field(layers)
        answer = _call(fn, "receptive_field", [tuple(layer) for layer in layers])
        got = as_integer(answer)
        if got is None and isinstance(answer, float) and answer.is_integer():
            got = int(answer)
        require(got is not None, f"receptive_field({layers}) returned {answer!r}, expected a number of pixels (int)",
                "return the side r_L of the square region, an int.")
        hint = tiered("each layer widens the field by (k − 1) steps of its own input grid, and one such step spans "
                      "as many input pixels as the product of the earlier strides (the jump).",
                      "r_l = r_{l-1} + (k_l − 1)·j_{l-1} with the jump j_l = j_{l-1}·s_l, starting from r_0 = j_0 = 1.")
        if got == 1 + sum(k - 1 for k, _ in layers) and want != got:
            hint = ("you added the kernels as if every layer had stride 1: after a stride-s layer one step of "
                    "the next kernel moves s input pixels, so multiply (k − 1) by the product of the earlier "
                    "strides (the jump).")
        require(got == want, f"receptive_field({layers}) = {got}, but the gradient of one output unit reaches "
                f"{want} input pixels per side", hint)
    passed("Exercise 1.2", "your recursion matches the measured gradient support on every stack")


# ---------------------------------------------------------------------------------------------------- 1.3
def _pca_case(g: torch.Generator, P: int, C: int) -> torch.Tensor:
    """(P, C) features far from centred, with three dominant directions well apart from the rest (rotated)."""
    spread = torch.cat([torch.tensor([6.0, 4.5, 3.0]), torch.linspace(1.0, 0.1, C - 3)])  # decreasing stds
    latent = torch.randn(P, C, generator=g) * spread
    rotation, _ = torch.linalg.qr(torch.randn(C, C, generator=g))
    return latent @ rotation.T + 5.0 * torch.randn(C, generator=g)


def _top3_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance of ``x`` (P, C), float64, captured by its best 3-dimensional subspace."""
    return torch.linalg.svd(x, full_matrices=False).S[:3].pow(2).sum()


@counts_attempts("Exercise 1.3")
def check_pca_basis(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    r"""Exercise 1.3: ``fn(x)`` with ``x`` of shape ``(P, C)`` → ``(C, 3)`` orthonormal basis of the top-3 PCA subspace.

    Any orthonormal basis of the subspace passes (signs and rotations inside it are free, float32 and randomised
    methods such as ``torch.pca_lowrank`` too): the check compares the variance of the centred data captured by
    the basis with that of the first 3 right singular vectors, to a relative 1e-4.
    """
    _require_function(fn, "pca_basis", "(x)")
    g = torch.Generator().manual_seed(3)
    for P, C in ((500, 12), (300, 40)):
        x = _pca_case(g, P, C)  # (P, C)
        basis = _call(fn, "pca_basis", x.clone())
        require(isinstance(basis, torch.Tensor) and tuple(basis.shape) == (C, 3),
                f"pca_basis returned {type(basis).__name__} of shape "
                f"{tuple(basis.shape) if hasattr(basis, 'shape') else '—'}, expected a tensor of shape ({C}, 3)",
                "return the first three principal directions as the columns of a (C, 3) tensor.")
        b = basis.double()
        require(torch.allclose(b.T @ b, torch.eye(3, dtype=torch.float64), atol=1e-4),
                "the columns of your basis are not orthonormal (basisᵀ·basis ≠ I)",
                tiered("principal directions are orthonormal by construction: take them from a decomposition that "
                       "returns orthonormal vectors.", "torch.linalg.svd(xc, full_matrices=False).Vh[:3].T"))
        xc = (x - x.mean(0)).double()  # (P, C)
        top = _top3_variance(xc)
        got = (xc @ b).pow(2).sum()
        uncentred = torch.linalg.svd(x.double(), full_matrices=False).Vh[:3].T  # (C, 3)
        if (xc @ torch.eye(C, 3, dtype=torch.float64)).pow(2).sum().isclose(got):
            hint = "the basis must come from the data (an SVD of the centred x), not the first three channels."
        elif torch.linalg.matrix_norm(uncentred @ uncentred.T - b @ b.T) < 1e-3:
            hint = "centre x (subtract the mean of each channel over the P positions) before the SVD."
        else:
            hint = tiered("the principal directions are the directions of largest variance of the centred data; "
                          "the first three span the subspace that keeps the most of it.",
                          "torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:3].T")
        share, _ = apart(100 * float(got / top), 100.0, 3)
        require(bool(got >= top * (1 - 1e-4)),
                f"your basis captures {share} % of the variance of the top-3 principal subspace",
                hint)
    passed("Exercise 1.3", "your basis spans the top-3 principal subspace")


# ---------------------------------------------------------------------------------------------------- 1.4
def _standardise_case(seed: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and test features (N, C, H, W) with channel scales spread over 4 decades (some floored)."""
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** torch.linspace(-3, 1, channels)[torch.randperm(channels, generator=g)]  # (C,)
    shift = torch.randn(channels, generator=g) * 3
    train = torch.randn(16, channels, 12, 12, generator=g) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    test = torch.randn(3, channels, 12, 12, generator=g) * scale.view(1, -1, 1, 1) * 2 + shift.view(1, -1, 1, 1)
    return train, test


@counts_attempts("Exercise 1.4")
def check_standardise(fn: Callable[..., torch.Tensor]) -> None:
    r"""Exercise 1.4: ``fn(train, x, floor=0.1)`` → ``(x − μ_c) / max(σ_c, floor·median σ)``, shapes ``(N, C, H, W)``.

    Compared with :class:`uflow_lib.methods.uflow.ChannelStandardizer` (relative tolerance 1e-3, so either the
    unbiased or the biased standard deviation is accepted; absolute tolerance 1e-3 for float32 round-off).
    """
    from ..methods.uflow import ChannelStandardizer

    _require_function(fn, "standardise", "(train, x, floor=0.1)")
    for seed, channels, floor in ((0, 32, 0.1), (1, 33, 0.1), (2, 20, 0.3)):
        train, test = _standardise_case(seed, channels)
        want = ChannelStandardizer(channels, floor=floor).fit(train)(test)
        got = _call(fn, "standardise", train.clone(), test.clone(), floor=floor)
        require(isinstance(got, torch.Tensor), f"standardise returned {type(got).__name__}, expected a tensor",
                "return a torch.Tensor of the shape of x.")
        require(tuple(got.shape) == tuple(test.shape),
                f"standardise returned shape {tuple(got.shape)}, expected {tuple(test.shape)} (the shape of x)",
                "compute μ and σ of shape (1, C, 1, 1) and let broadcasting do the rest.")
        if torch.allclose(got.double(), want.double(), rtol=1e-3, atol=1e-3):
            continue
        x = train.double().transpose(0, 1).flatten(1)  # (C, N·H·W)
        mean, std = x.mean(1).view(1, -1, 1, 1), x.std(1).view(1, -1, 1, 1)
        unfloored = (test - mean) / std
        lower_median = (test - mean) / std.clamp(min=floor * std.flatten().sort().values[(channels - 1) // 2])
        per_image = (test - test.mean((0, 2, 3), keepdim=True)) / test.std((0, 2, 3), keepdim=True)
        hint = tiered("each channel gets its own mean and spread, measured on the training features only, over all "
                      "images and positions; a spread that is too small is raised to a floor.",
                      "μ_c, σ_c over dims 0, 2, 3 of train; σ_c ← max(σ_c, floor · median_c σ_c); (x − μ_c) / σ_c.")
        if torch.allclose(got.double(), unfloored, rtol=1e-3, atol=1e-3):
            hint = "you forgot the floor: σ_c ← max(σ_c, floor · median_c σ_c)."
        elif torch.allclose(got.double(), lower_median, rtol=1e-3, atol=1e-3):
            hint = ("with an even number of channels the median is the mean of the two middle values "
                    "(np.median, torch.quantile(σ, 0.5)); torch.median returns the lower one.")
        elif torch.allclose(got.double(), per_image.double(), rtol=1e-3, atol=1e-3):
            hint = "use the statistics of the *training* features, not of x itself."
        err = (got.double() - want.double()).abs().max().item()
        require(False, f"standardise differs from ChannelStandardizer by up to {err:.3g} "
                f"(C={channels}, floor={floor})", hint)
    passed("Exercise 1.4", "your standardisation matches uflow_lib.methods.uflow.ChannelStandardizer")
