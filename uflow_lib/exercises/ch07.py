r"""Checks for the exercises of chapter 7 (MSFlow and SANFlow).

Each ``check_*`` calls the student's function on cases it builds itself and compares the result with an
*independent* reference, never with the formula the exercise asks for:

* 7.1, the parameters of one MSFlow parallel flow: the library's flow built on PyTorch's ``meta`` device (no
  memory) and its parameters counted;
* 7.2, the expected Gaussian log-likelihood under an inverse-gamma variance: numerical integration against the
  inverse-gamma density (``scipy.integrate.quad`` with ``scipy.stats.invgamma``);
* 7.3, the variance the SANFlow loss picks with the coefficient :math:`k` on :math:`\log\beta - \psi(\alpha)`:
  numerical maximisation of the library's :func:`~uflow_lib.inverse_gamma.expected_normal_log_likelihood` over
  :math:`\log\beta` (``scipy.optimize.minimize_scalar``);
* 7.4, standardising SANFlow's latents for the NFA: latents built as :math:`\sigma\,\varepsilon` from known
  :math:`\varepsilon`, which the answer must give back.

A wrong, missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import integrate, optimize, special, stats

from . import (ExerciseFailed, apart, as_finite_number, call_student, counts_attempts, passed, require,
               require_function, tiered)

__all__ = ["check_parallel_flow_parameters", "check_expected_log_normal", "check_loss_variance",
           "check_standardise"]


def _as_number(value: Any, call: str) -> float:
    """The student's return value as a finite float, or a helpful failure."""
    return as_finite_number(value, call, "check for a division by zero or the log of a negative number.")


# ---------------------------------------------------------------------------------------------------- 7.1
def _parallel_reference(c: int, blocks: int, pos: int) -> int:
    """Trainable parameters of :func:`uflow_lib.methods.msflow.build_parallel_flow`, counted on the meta device."""
    from ..methods.msflow import build_parallel_flow
    from ..runtime import numpy_global_seed

    with numpy_global_seed(0), torch.device("meta"):  # no memory, and the student's numpy RNG is left untouched
        flow = build_parallel_flow(c, blocks, pos)
    return sum(p.numel() for p in flow.parameters() if p.requires_grad)


def _parallel_parts(c: int, blocks: int, pos: int) -> dict[str, int]:
    """Per-flow totals of each kind of parameter (to recognise a forgotten part in a wrong answer)."""
    d, out = c - c // 2 + pos, 2 * (c // 2)
    return dict(conv1=blocks * (9 * d * d + d), layernorm=blocks * 2 * d, conv2=blocks * (9 * d * out + out),
                global_affine=blocks * 2 * c, biases=blocks * (d + out))


@counts_attempts("Exercise 7.1")
def check_parallel_flow_parameters(fn: Callable[[int, int, int], int]) -> None:
    """Exercise 7.1: ``fn(c, blocks, pos)`` → trainable parameters of one MSFlow parallel flow."""
    require_function(fn, "parallel_flow_parameters", "(c, blocks, pos=64)")
    cases = [(24, 2, 64), (32, 5, 64), (96, 8, 64), (7, 3, 64), (1024, 8, 64), (10, 1, 16)]
    for c, blocks, pos in cases:
        call = f"parallel_flow_parameters(c={c}, blocks={blocks}, pos={pos})"
        got = _as_number(call_student(fn, "parallel_flow_parameters", c, blocks, pos), call)
        want = _parallel_reference(c, blocks, pos)
        if got == want:
            continue
        parts = _parallel_parts(c, blocks, pos)
        assert sum(v for k, v in parts.items() if k != "biases") == want  # internal: the parts add up
        d_full, out_full = c + pos, 2 * c
        split_wrong = blocks * (9 * d_full**2 + d_full + 2 * d_full + 9 * d_full * out_full + out_full + 2 * c)
        if got == want - parts["global_affine"]:
            hint = ("each AllInOneBlock also learns a global affine transform: a scale and an offset per channel "
                    "(2c parameters per block).")
        elif got == want - parts["layernorm"]:
            hint = "the LayerNorm over d channels has a weight and a bias: 2d parameters per block."
        elif got == want - parts["biases"]:
            hint = "both 3×3 convolutions have a bias: d for the first, 2⌊c/2⌋ for the second."
        elif got == split_wrong:
            hint = ("the subnet sees only the first half of the channels, ⌈c/2⌉ of them, plus the pos condition "
                    "channels, and predicts a log-scale and a shift for the other half: 2⌊c/2⌋ outputs.")
        elif c % 2 == 1:
            hint = ("for odd c the halves differ: the subnet reads ⌈c/2⌉ + pos channels (c - c // 2 + pos in "
                    "Python) and outputs 2⌊c/2⌋ = 2 * (c // 2).")
        else:
            hint = tiered("count one block: its subnet (what it reads: half the channels plus the condition; what "
                          "it predicts: a scale and a shift for the other half; each layer's weights and biases) "
                          "and its global affine; then times the number of blocks.",
                          "per block, with d = ⌈c/2⌉ + pos: Conv3×3 d→d (9d² + d), LayerNorm(d) (2d), Conv3×3 "
                          "d→2⌊c/2⌋ (9d·2⌊c/2⌋ + 2⌊c/2⌋) and the global affine (2c).")
        raise ExerciseFailed(f"{call} = {int(got):,}, expected {want:,}\nHint: {hint}")
    passed("Exercise 7.1", "your count matches the library's parallel flows, odd channel counts included")


# ---------------------------------------------------------------------------------------------------- 7.2
def _ig_expectation_numeric(z: np.ndarray, alpha: float, beta: float) -> float:
    r""":math:`\int \log\mathcal N(z; 0, v I)\, IG(v; \alpha, \beta)\, dv` by quadrature in :math:`u = \log v`."""
    C, q = z.size, float(np.sum(np.asarray(z, dtype=np.float64) ** 2))
    ig = stats.invgamma(alpha, scale=beta)
    lo, hi = math.log(ig.ppf(1e-15)), math.log(ig.isf(1e-15))

    def integrand(u: float) -> float:
        v = math.exp(u)
        return (-0.5 * C * math.log(2 * math.pi * v) - q / (2 * v)) * ig.pdf(v) * v  # dv = v du

    value, _ = integrate.quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-12, limit=400)
    return value


def _ig_cases() -> list[tuple[np.ndarray, float, float, str]]:
    rng = np.random.default_rng(7)
    return [(rng.normal(0, 0.3, 32), 59.5, 6.05, "C = 32 at SANFlow's prior (α0, β0) = (59.5, 6.05)"),
            (rng.normal(0, 1.0, 4), 3.0, 0.5, "C = 4, α = 3, β = 0.5"),
            (np.array([2.0]), 2.5, 2.0, "C = 1, z = 2, α = 2.5, β = 2"),
            (rng.normal(0, 0.5, 96), 10.0, 3.0, "C = 96, α = 10, β = 3")]


@counts_attempts("Exercise 7.2")
def check_expected_log_normal(fn: Callable[[np.ndarray, float, float], float]) -> None:
    r"""Exercise 7.2: ``fn(z, alpha, beta)`` → :math:`\mathbb E_{\sigma^2\sim IG(\alpha,\beta)}
    \log\mathcal N(z; 0, \sigma^2 I)` for one fibre ``z`` ``(C,)``, compared with numerical integration."""
    require_function(fn, "expected_log_normal", "(z, alpha, beta)")
    for z, alpha, beta, what in _ig_cases():
        call = f"expected_log_normal(z, alpha={alpha}, beta={beta}) for {what}"
        got = _as_number(call_student(fn, "expected_log_normal", z.copy(), alpha, beta), call)
        want = _ig_expectation_numeric(z, alpha, beta)
        if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6):  # float32 (numpy or torch) welcome
            continue
        C, q = z.size, float(np.sum(z**2))

        def plug_in(v: float) -> float:
            return -0.5 * C * math.log(2 * math.pi * v) - q / (2 * v)

        def with_k(k: float, sign: float = 1.0) -> float:
            return -0.5 * C * math.log(2 * math.pi) - k * (math.log(beta) - sign * special.digamma(alpha)) \
                - alpha / (2 * beta) * q

        if any(math.isclose(got, plug_in(v), rel_tol=1e-5) for v in (beta / (alpha + 1), beta / max(alpha - 1, 1e-9),
                                                                      beta / alpha)):
            hint = ("plugging one variance (the mode, the mean, β/α) into log N is not the expectation: log N is "
                    "not linear in σ². Use E[1/σ²] = α/β and E[log σ²] = log β − ψ(α) (1/σ² is Gamma(α, rate β)).")
        elif math.isclose(got, with_k(C), rel_tol=1e-5):
            hint = ("the log σ² term has coefficient C/2, not C (that is the authors' quirk, section 7.3): "
                    "log N = −C/2 log 2π − C/2 log σ² − Σz²/(2σ²).")
        elif math.isclose(got, with_k(C / 2, -1.0), rel_tol=1e-5):
            hint = "E[log σ²] = log β − ψ(α): the digamma enters with a minus sign (ψ(α) ≈ log α for large α)."
        else:
            hint = tiered("log N(z; 0, σ²I) is linear in log σ² and in 1/σ²: take the expectation of each under the "
                          "inverse-gamma law (1/σ² is Gamma(α, rate β)).",
                          "E[log N] = −C/2 log 2π − C/2 (log β − ψ(α)) − α/(2β) Σ_c z_c²; ψ is "
                          "scipy.special.digamma (or torch.digamma).")
        g, w = apart(got, want)
        raise ExerciseFailed(f"{call} = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 7.2", "it matches the integral over the inverse-gamma density on every case of the check")


# ---------------------------------------------------------------------------------------------------- 7.3
def _loss_variance_numeric(q: float, C: int, alpha: float, k: float) -> float:
    r"""Mode :math:`\beta^*/(\alpha+1)` with :math:`\beta^*` maximising the library's expected log-likelihood
    (coefficient ``k``) over :math:`\log\beta`, found numerically."""
    from ..inverse_gamma import expected_normal_log_likelihood

    z = torch.zeros(1, C, dtype=torch.float64)
    z[0, 0] = math.sqrt(q)  # only Σ_c z_c² = q matters
    log_alpha = torch.tensor([math.log(alpha)], dtype=torch.float64)

    def negative(log_beta: float) -> float:
        lb = torch.tensor([log_beta], dtype=torch.float64)
        return -float(expected_normal_log_likelihood(z, log_alpha, lb, log_beta_coefficient=k))

    guess = math.log(alpha * q / C)
    res = optimize.minimize_scalar(negative, bounds=(guess - 8, guess + 8), method="bounded",
                                   options=dict(xatol=1e-12))
    return math.exp(res.x) / (alpha + 1)


@counts_attempts("Exercise 7.3")
def check_loss_variance(fn: Callable[[float, int, float, float], float]) -> None:
    r"""Exercise 7.3: ``fn(q, C, alpha, k)`` → the mode variance :math:`\beta^*/(\alpha+1)` at the :math:`\beta^*`
    that maximises :math:`-k(\log\beta - \psi(\alpha)) - \frac{\alpha}{2\beta} q` (``q`` = :math:`\sum_c z_c^2`)."""
    require_function(fn, "loss_variance", "(q, C, alpha, k)")
    cases = [(3.2, 32, 59.5, 16.0), (3.2, 32, 59.5, 32.0), (96.0, 96, 10.0, 48.0), (0.5, 4, 3.0, 4.0)]
    for q, C, alpha, k in cases:
        call = f"loss_variance(q={q}, C={C}, alpha={alpha}, k={k})"
        got = _as_number(call_student(fn, "loss_variance", q, C, alpha, k), call)
        want = _loss_variance_numeric(q, C, alpha, k)
        if math.isclose(got, want, rel_tol=1e-5):
            continue
        beta_star = alpha * q / (2 * k)
        if math.isclose(got, beta_star, rel_tol=1e-6):
            hint = "that is β* itself; the variance SANFlow uses is the mode of IG(α, β*), β*/(α + 1)."
        elif math.isclose(got, q / C, rel_tol=1e-6) or math.isclose(got, q / (2 * C), rel_tol=1e-6):
            hint = ("close, but the answer depends on α and k: set the derivative in β of −k log β − αq/(2β) to 0, "
                    "then take the mode β*/(α + 1).")
        elif math.isclose(got, alpha * q / k / (alpha + 1), rel_tol=1e-6):
            hint = "the derivative of −α q/(2β) is α q/(2β²): keep the factor 2, β* = α q/(2k)."
        else:
            hint = tiered("maximise the loss's expected log-likelihood over β (the ψ(α) term does not depend on β), "
                          "then take the mode of the inverse-gamma law at that β.",
                          "d/dβ [−k log β − α q/(2β)] = −k/β + α q/(2β²) = 0 gives β* = α q/(2k); return "
                          "β*/(α + 1).")
        g, w = apart(got, want)
        raise ExerciseFailed(f"{call} = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 7.3", "your variance matches the numerical maximum for both coefficients k")


# ---------------------------------------------------------------------------------------------------- 7.4
@counts_attempts("Exercise 7.4")
def check_standardise(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 7.4: ``fn(z, variance)`` with ``z`` ``(B, C, h, w)`` and ``variance`` ``(B, h, w)`` → ``z / σ``,
    ``(B, C, h, w)``. The check builds ``z = σ ε`` from known ``ε`` and expects ``ε`` back."""
    require_function(fn, "standardise", "(z, variance)")
    g = torch.Generator().manual_seed(3)
    for B, C, h, w in ((2, 5, 4, 3), (1, 7, 6, 6), (3, 4, 2, 5)):
        eps = torch.randn(B, C, h, w, generator=g)
        variance = 0.02 + 0.3 * torch.rand(B, h, w, generator=g)  # a different σ² at every position
        z = eps * variance.sqrt()[:, None]
        z_in, var_in = z.clone(), variance.clone()
        call = f"standardise(z of shape {tuple(z.shape)}, variance of shape {tuple(variance.shape)})"
        got = call_student(fn, "standardise", z_in, var_in,
                           hint="variance has no channel axis: give it one with variance[:, None] (B, 1, h, w).")
        require(got is not None, f"{call} returned None", "return the standardised latents; did you forget `return`?")
        got = torch.as_tensor(got)
        require(tuple(got.shape) == (B, C, h, w), f"{call} has shape {tuple(got.shape)}, expected {(B, C, h, w)}",
                "keep every channel: divide z (B, C, h, w) by σ broadcast as (B, 1, h, w).")
        require(torch.equal(z_in, z) and torch.equal(var_in, variance), f"{call} changed its inputs in place",
                "compute a new tensor (z / ...), do not use in-place operations such as z /= ... on the inputs.")
        got = got.double()
        if torch.allclose(got, eps.double(), rtol=1e-5, atol=1e-5):
            continue
        if torch.allclose(got, (z / variance[:, None]).double(), rtol=1e-5, atol=1e-5):
            hint = "z ~ N(0, σ²) is standardised by the standard deviation σ = √variance, not by the variance."
        elif torch.allclose(got, (z * variance.sqrt()[:, None]).double(), rtol=1e-5, atol=1e-5):
            hint = "divide by σ, do not multiply: z / σ is N(0, 1) when z is N(0, σ²)."
        else:
            hint = tiered("a latent with variance σ² becomes standard normal when divided by σ; here one σ belongs "
                          "to each position and is shared by all C channels there.",
                          "z / variance.sqrt()[:, None]")
        raise ExerciseFailed(f"{call} does not give N(0, 1) latents back (max error "
                             f"{(got - eps.double()).abs().max().item():.3g})\nHint: {hint}")
    passed("Exercise 7.4", "z/σ gives back the standard normal latents, position by position")
