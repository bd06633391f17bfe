r"""Checks for the exercises of chapter 2 (normalizing flows).

Each ``check_*`` takes the student's function, calls it on cases it builds itself and compares the result with
an *independent* reference, never with the formula the exercise asks for:

- 2.1 the density of :math:`X` when :math:`z = f(x) = x^3 + x` is standard normal: a finite difference of the
  CDF :math:`P(X \le x) = \Phi(f(x))` (no derivative of :math:`f` involved);
- 2.2 the log-density of :math:`X` when :math:`z = Ax + b \sim \mathcal N(0, I)`: ``scipy.stats.multivariate_normal``
  with mean :math:`-A^{-1}b` and covariance :math:`A^{-1}A^{-\top}`;
- 2.3 the inverse of an affine coupling: the coupling's own forward pass (a round trip);
- 2.4 the bound on one ``AllInOneBlock``'s coupling log-determinant: a real FrEIA 0.2 block whose subnet is
  forced to saturate the clamp.

A wrong, missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from ..runtime import numpy_global_seed
from . import ExerciseFailed, apart, as_finite_number, counts_attempts, passed, require, tiered
from . import call_student as _call
from . import require_function as _require_function

__all__ = ["check_density_1d", "check_affine_log_density", "check_coupling_inverse", "check_clamp_bound",
           "coupling_forward"]



def _as_float_array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The student's output as a float64 array of the expected shape (tensors and lists accepted)."""
    require(value is not None, f"`{name}` returned None", "end your function with `return ...`.")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ExerciseFailed(f"`{name}` returned {type(value).__name__}, which is not an array of numbers\n"
                             f"Hint: return a numpy array (or a torch tensor).") from err
    require(arr.shape == shape, f"`{name}` returned shape {arr.shape}, expected {shape}",
            "return one value per input point, not a sum or a mean over the points.")
    return arr


# ---------------------------------------------------------------------------------------------------- 2.1
def _f(x: np.ndarray) -> np.ndarray:
    """The exercise's monotone map z = f(x) = x³ + x."""
    return x**3 + x


@counts_attempts("Exercise 2.1")
def check_density_1d(fn: Callable[[np.ndarray], np.ndarray]) -> None:
    r"""Exercise 2.1: ``fn(x)`` → :math:`p_X(x)`, ``x`` of shape ``(N,)`` → ``(N,)``.

    The flow is :math:`z = f(x) = x^3 + x` with :math:`z \sim \mathcal N(0, 1)`.

    The reference differentiates the CDF :math:`F_X(x) = \Phi(f(x))` numerically (central difference, step
    1e-5), so it uses no formula for :math:`f'`.
    """
    _require_function(fn, "density_x", "(x)")
    x = np.array([-2.0, -1.2, -0.5, 0.0, 0.3, 0.5, 1.0, 1.7])  # (8,)
    got = _as_float_array(_call(fn, "density_x", x.copy()), "density_x", x.shape)
    h = 1e-5
    want = (stats.norm.cdf(_f(x + h)) - stats.norm.cdf(_f(x - h))) / (2 * h)  # (8,)
    phi = stats.norm.pdf(_f(x))
    hint = tiered("a density changes with the variable: p_X(x) is the latent density at f(x) times the factor by "
                  "which f stretches lengths around x.", "p_X(x) = p_Z(f(x))·|f'(x)| with f'(x) = 3x² + 1.")
    if np.allclose(got, phi, rtol=1e-4):
        hint = "you returned p_Z(f(x)) only: multiply by |f'(x)|, the factor by which f stretches lengths."
    elif np.allclose(got, phi / (3 * x**2 + 1), rtol=1e-4):
        hint = "you divided by f'(x); the factor is |dz/dx| = |f'(x)| because z = f(x) maps x to the latent."
    elif np.allclose(np.exp(got), want, rtol=1e-4):
        hint = "you returned the log-density; the exercise asks for the density itself (take np.exp)."
    require(np.allclose(got, want, rtol=1e-4, atol=1e-9),
            f"density_x(x) at x={x.tolist()} gave {np.round(got, 8).tolist()}, expected "
            f"{np.round(want, 8).tolist()}", hint)
    passed("Exercise 2.1", "the same as differentiating P(X ≤ x) = Φ(f(x))")


# ---------------------------------------------------------------------------------------------------- 2.2
def _affine_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x (N, D), A (D, D), b (D,)): the statement's example first, then random ones (some with det A < 0)."""
    cases = [(np.array([[1.0, -0.5], [0.0, 0.0], [-1.0, 2.0]]), np.array([[1.5, 0.5], [-0.5, 2.0]]),
              np.array([0.2, -0.1]))]
    rng = np.random.default_rng(2)
    for d in (1, 2, 3, 5):
        a = rng.normal(size=(d, d)) + 2 * np.eye(d)
        if d in (2, 5):
            a[0] *= -1  # a negative determinant: only |det A| is a volume factor
        cases.append((rng.normal(size=(4, d)), a, rng.normal(size=d)))
    return cases


@counts_attempts("Exercise 2.2")
def check_affine_log_density(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
    r"""Exercise 2.2: ``fn(x, A, b)`` → :math:`\log p_X(x)`, ``x`` ``(N, D)`` → ``(N,)``.

    The flow is :math:`z = Ax + b` with ``A`` ``(D, D)`` invertible, ``b`` ``(D,)`` and :math:`z \sim \mathcal N(0, I)`.

    Reference: :math:`X = A^{-1}(Z - b)` is Gaussian with mean :math:`-A^{-1}b` and covariance
    :math:`A^{-1}A^{-\top}`; ``scipy.stats.multivariate_normal.logpdf`` evaluates it.
    """
    _require_function(fn, "affine_log_density", "(x, A, b)")
    for x, a, b in _affine_cases():
        a_inv = np.linalg.inv(a)
        want = np.atleast_1d(stats.multivariate_normal(mean=-a_inv @ b, cov=a_inv @ a_inv.T).logpdf(x))  # (N,)
        got = _as_float_array(_call(fn, "affine_log_density", x.copy(), a.copy(), b.copy()),
                              "affine_log_density", (len(x),))
        logabsdet = np.linalg.slogdet(a)[1]
        hint = tiered("the log-density of x is that of its latent z = Ax + b under N(0, I), plus the log of the "
                      "volume factor of the map x → z.",
                      "log p_X(x) = log N(Ax + b; 0, I) + log|det A|, with log N(z; 0, I) = −‖z‖²/2 − (D/2)·log 2π.")
        if np.isnan(got).any():
            hint = "you got NaN: take the log of the ABSOLUTE value of det A (it can be negative)."
        elif np.allclose(got, want - logabsdet, atol=1e-6):
            hint = "you left out the volume term: add log|det A| (the Jacobian of z = Ax + b is A)."
        elif np.allclose(got, want - 2 * logabsdet, atol=1e-6):
            hint = "the sign of the volume term is flipped: it is + log|det A| when z = Ax + b maps x to z."
        elif np.allclose(got, want + 0.5 * a.shape[0] * math.log(2 * math.pi), atol=1e-6):
            hint = "the normalising constant −(D/2)·log 2π of the standard normal is missing."
        require(np.allclose(got, want, atol=1e-5, rtol=1e-5),
                f"for D={a.shape[0]}, A={np.round(a, 3).tolist()}, b={np.round(b, 3).tolist()} you returned "
                f"{np.round(got, 7).tolist()}, expected {np.round(want, 7).tolist()}", hint)
    passed("Exercise 2.2", "agrees with scipy's Gaussian N(−A⁻¹b, A⁻¹A⁻ᵀ), negative determinants included")


# ---------------------------------------------------------------------------------------------------- 2.3
def coupling_forward(x: torch.Tensor, st: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The affine coupling of the chapter: :math:`y_1 = x_1`, :math:`y_2 = x_2 \odot e^{s(x_1)} + t(x_1)`.

    Parameters
    ----------
    x : torch.Tensor, shape (N, D)
        Input; :math:`x_1` is the first ``D - D // 2`` coordinates, :math:`x_2` the last ``D // 2``.
    st : callable
        ``st(x1)`` with ``x1`` of shape ``(N, D - D // 2)`` returns ``(s, t)``, each ``(N, D // 2)``.

    Returns
    -------
    y : torch.Tensor, shape (N, D)
    log_det : torch.Tensor, shape (N,)
        :math:`\sum_j s_j(x_1)`.
    """
    d1 = x.shape[1] - x.shape[1] // 2
    x1, x2 = x[:, :d1], x[:, d1:]
    s, t = st(x1)
    return torch.cat([x1, x2 * torch.exp(s) + t], dim=1), s.sum(dim=1)


class _SubnetST(nn.Module):
    """A random ``st`` for the check: a small MLP whose ``s`` is soft-clamped to (−1.5, 1.5)."""

    def __init__(self, d1: int, d2: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d1, 16), nn.Tanh(), nn.Linear(16, 2 * d2))
        self.d2 = d2

    def forward(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.net(x1)  # (N, 2·d2)
        return 1.5 * torch.tanh(a[:, : self.d2] / 1.5), a[:, self.d2:] + torch.sin(3 * x1[:, :1])


@counts_attempts("Exercise 2.3")
def check_coupling_inverse(fn: Callable[[torch.Tensor, Callable], torch.Tensor]) -> None:
    r"""Exercise 2.3: ``fn(y, st)`` → ``x`` such that :func:`coupling_forward` ``(x, st)[0] == y``.

    ``y`` has shape ``(N, D)`` (``D`` = 2, 3 and 6 are tried); ``st`` is a random network the student never sees.
    """
    _require_function(fn, "coupling_inverse", "(y, st)")
    state = torch.random.get_rng_state()
    try:
        for d, seed in ((2, 0), (3, 1), (6, 2)):
            d1, d2 = d - d // 2, d // 2
            st = _SubnetST(d1, d2, seed)
            x = 1.5 * torch.randn(64, d, generator=torch.Generator().manual_seed(seed))  # (64, D)
            with torch.no_grad():
                y, _ = coupling_forward(x, st)
                y_in = y.clone()
                got = _call(fn, "coupling_inverse", y_in, st,
                            hint=f"for D={d}, st expects the first D − D // 2 = {d1} coordinates of y (the "
                                 f"passive part y1) and returns s and t with D // 2 = {d2} columns each.")
            require(isinstance(got, torch.Tensor), f"`coupling_inverse` returned {type(got).__name__}",
                    "return a torch tensor of the same shape as y, shape (N, D).")
            require(torch.equal(y_in, y), "`coupling_inverse` changed its input y in place",
                    "build the output with torch.cat instead of assigning into y (y[:, 1:] = ... edits y).")
            require(tuple(got.shape) == tuple(y.shape), f"`coupling_inverse` returned shape {tuple(got.shape)} "
                    f"for y of shape {tuple(y.shape)}", "return the full x = concat(x1, x2), shape (N, D).")
            err = (got.double() - x.double()).abs().max().item()
            hint = tiered("the first part passed unchanged, so s and t can be recomputed from it; undo the "
                          "operations on the second part in reverse order.",
                          "x1 = y1, x2 = (y2 − t(y1))·exp(−s(y1)).")
            with torch.no_grad():
                s, t = st(y[:, :d1])
            if torch.allclose(got[:, d1:], y[:, d1:] * torch.exp(-s) - t, atol=1e-4):
                hint = "undo the operations in reverse order: subtract t BEFORE dividing by exp(s)."
            elif torch.allclose(got[:, d1:], (y[:, d1:] - t) * torch.exp(s), atol=1e-4):
                hint = "to undo a multiplication by exp(s), multiply by exp(−s)."
            require(err < 1e-4, f"for D={d}, coupling_forward(coupling_inverse(y, st), st) does not give y back "
                    f"(max |x − x_rec| = {err:.3g})", hint)
    finally:
        torch.random.set_rng_state(state)
    passed("Exercise 2.3", "your inverse undoes the coupling for D = 2, 3 and 6 with a network it never saw")


# ---------------------------------------------------------------------------------------------------- 2.4
def _saturated_block_coupling_logdet(c: int, h: int, w: int, clamp: float) -> float:
    """Coupling part of the log-det of a real FrEIA 0.2 AllInOneBlock whose clamp is saturated (s = +clamp)."""
    import FrEIA.modules as Fm  # local import: FrEIA is only needed by this check

    class Huge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, c1, h, w) -> (1, 2·c2, h, w)
            return torch.full((x.shape[0], 2 * (c // 2), *x.shape[2:]), 1e4, dtype=torch.float64)

    with numpy_global_seed(0):  # the block draws its hard permutation from numpy's global RNG
        block = Fm.AllInOneBlock([(c, h, w)], subnet_constructor=lambda c_in, c_out: Huge(),
                                 affine_clamping=clamp, permute_soft=False).double()
    with torch.no_grad():
        _, log_det = block((torch.zeros(1, c, h, w, dtype=torch.float64),))
        scale = block.global_scale_activation(block.global_scale)  # (1, c, 1, 1)
        global_part = h * w * torch.log(scale).sum()
    return float(log_det[0] - global_part)


@counts_attempts("Exercise 2.4")
def check_clamp_bound(fn: Callable[[int, int, int, float], float]) -> None:
    r"""Exercise 2.4: ``fn(C, H, W, clamp)`` → the largest coupling log-det of one ``AllInOneBlock`` on ``(C, H, W)``.

    Reference: a real FrEIA 0.2 block whose subnet outputs 1e4 everywhere, so that
    :math:`s = \mathrm{clamp}\cdot\tanh(0.1\cdot 10^4) = \mathrm{clamp}` in float64; the global affine's
    share of the log-det is subtracted.
    """
    _require_function(fn, "max_coupling_logdet", "(C, H, W, clamp)")
    for c, h, w, clamp in ((816, 28, 28, 2.0), (192, 14, 14, 2.0), (5, 3, 4, 1.5), (2, 1, 1, 2.0)):
        want = _saturated_block_coupling_logdet(c, h, w, clamp)
        got = as_finite_number(_call(fn, "max_coupling_logdet", c, h, w, clamp),
                               f"max_coupling_logdet({c}, {h}, {w}, {clamp})", "return a finite bound.")
        hint = tiered("each transformed entry contributes at most its largest s; count how many entries the "
                      "coupling transforms.", "clamp · (C // 2) · H · W")
        if math.isclose(got, clamp * c * h * w, rel_tol=1e-9):
            hint = "only the second half of the channels (C // 2 of them) is scaled; the first half passes unchanged."
        elif math.isclose(got, clamp * (c - c // 2) * h * w, rel_tol=1e-9):
            hint = "the block transforms the SECOND part, C // 2 channels (floor); the first C − C // 2 pass."
        elif math.isclose(got, (c // 2) * h * w, rel_tol=1e-9):
            hint = "the clamp bounds each s_j by affine_clamping, so multiply by it."
        elif math.isclose(got, clamp * (c // 2), rel_tol=1e-9):
            hint = "an AllInOneBlock on a feature map scales every pixel: multiply by H·W."
        g, w_ = apart(got, want)
        require(math.isclose(got, want, rel_tol=1e-6), f"max_coupling_logdet({c}, {h}, {w}, {clamp}) = {g}, "
                f"but a saturated FrEIA block gives {w_}", hint)
    passed("Exercise 2.4", "your bound is reached by a real FrEIA block driven into its clamp")
