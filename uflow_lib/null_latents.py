r"""Null latents for stress-testing the a contrario guarantee (book chapter 5, "The guarantee under real latents").

The NFA's background model :math:`H_0` says that the latents of normal data are i.i.d. :math:`\mathcal N(0, 1)`.
Real latents are only close to it: their variance is a little above 1 and neighbouring positions are
correlated. This module draws pure-noise latents that break :math:`H_0` in those two controlled ways, each
channel independently:

- ``variance`` :math:`\sigma^2`: every value is :math:`\mathcal N(0, \sigma^2)` (over-dispersed when > 1);
- ``rho``: each channel is white noise filtered by a Gaussian kernel whose width is chosen so that the
  correlation of horizontally (and vertically) adjacent positions is ``rho``, divided by the filter's exact
  standard deviation so that every value stays :math:`\mathcal N(0, 1)` before the scaling by :math:`\sigma`;
- ``log_sd`` (uneven variance): the variance varies over the image, the same for all channels at a position,
  :math:`\sigma^2(i, j) = \sigma^2 e^{s u(i, j) - s^2/2}` with :math:`u` a unit Gaussian field of lag-1
  correlation ``log_rho`` (a Gaussian scale mixture: mean variance :math:`\sigma^2`, but
  :math:`m = \operatorname{mean}_c z^2` spreads more than :math:`\chi^2_C / C` and is correlated between
  neighbours even when the channels are not; :func:`uneven_log_sd` matches :math:`s` to a measured spread).

The field is stationary: the noise is drawn on a grid larger than the map by the kernel's radius on every side
and cropped after filtering, so no border effect. It also counts false detections per image with a Poisson
confidence interval (:func:`poisson_mean_ci`).

References
----------
A. Desolneux, L. Moisan, J.-M. Morel, "From Gestalt Theory to Image Analysis: A Probabilistic Approach",
Springer 2008, :doi:`10.1007/978-0-387-74378-3` (the ε guarantee under :math:`H_0`).
F. Garwood, "Fiducial limits for the Poisson distribution", Biometrika 1936, :doi:`10.2307/2333958`
(the exact Poisson interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage, optimize, stats

__all__ = ["gaussian_kernel", "lag1_correlation", "kernel_sigma_for", "null_field", "null_latents",
           "uneven_log_sd", "uneven_log_rho", "latent_statistics", "NULL_KINDS", "null_parameters",
           "poisson_mean_ci"]

#: the null models of chapter 5, each matched to measured statistics by :func:`null_parameters`
NULL_KINDS = ("iid", "variance", "correlated", "variance+correlated", "uneven variance")


def gaussian_kernel(sigma: float) -> np.ndarray:
    r"""Sampled Gaussian kernel :math:`g_k \propto e^{-k^2 / 2\sigma^2}`, :math:`|k| \le \lceil 5\sigma \rceil`,
    summing to 1: ``(2R + 1,)`` float64. ``sigma = 0`` gives the identity ``[1.0]``."""
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0:
        return np.ones(1)
    radius = max(1, math.ceil(5 * sigma))
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (k / sigma) ** 2)
    return g / g.sum()


def lag1_correlation(sigma: float) -> float:
    r"""Correlation of adjacent positions of white noise filtered (separably) by :func:`gaussian_kernel`:
    :math:`\sum_k g_k g_{k+1} / \sum_k g_k^2` (the kernel across the lag cancels). About
    :math:`e^{-1/(4\sigma^2)}` for wide kernels."""
    g = gaussian_kernel(sigma)
    return float(np.dot(g[:-1], g[1:]) / np.dot(g, g))


def kernel_sigma_for(rho: float) -> float:
    """Width of the Gaussian kernel whose filtered white noise has lag-1 correlation ``rho`` (0 for ``rho = 0``).

    Solved with ``scipy.optimize.brentq`` on :func:`lag1_correlation`, for ``0 <= rho <= 0.99``.
    """
    if not 0.0 <= rho <= 0.99:
        raise ValueError(f"rho (the lag-1 correlation) must be in [0, 0.99], got {rho!r}")
    if rho == 0:
        return 0.0
    return float(optimize.brentq(lambda s: lag1_correlation(s) - rho, 1e-3, 50.0, xtol=1e-12))


def _unit_field(shape: tuple[int, ...], h: int, w: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """``(*shape, h, w)`` float64 stationary Gaussian field, N(0, 1) values, lag-1 correlation ``rho``."""
    g = gaussian_kernel(kernel_sigma_for(rho))
    R = len(g) // 2
    x = rng.standard_normal((*shape, h + 2 * R, w + 2 * R))
    if R:
        x = ndimage.correlate1d(x, g, axis=-2, mode="constant")
        x = ndimage.correlate1d(x, g, axis=-1, mode="constant")
        x = x[..., R:R + h, R:R + w] / np.dot(g, g)  # unit variance: Var = (Σ g²)² before the division
    return x


def null_field(n: int, C: int, h: int, w: int, variance: float = 1.0, rho: float = 0.0,
               rng: np.random.Generator | None = None, log_sd: float = 0.0, log_rho: float = 0.0) -> np.ndarray:
    r"""``n`` null latent maps ``(n, C, h, w)`` float32: each channel a stationary Gaussian field with
    marginal :math:`\mathcal N(0, \text{variance})` and lag-1 correlation ``rho``, channels independent.

    The white noise is drawn on ``(h + 2R, w + 2R)``, filtered along both axes with :func:`gaussian_kernel`
    (``scipy.ndimage.correlate1d``), cropped to ``(h, w)`` and divided by the filter's exact standard
    deviation :math:`\sum_k g_k^2` (the product of the two axes' :math:`\sqrt{\sum_k g_k^2}`).
    With ``log_sd`` :math:`= s > 0` the variance is uneven: :math:`\text{variance} \cdot e^{s u - s^2/2}`
    per position (shared by the channels), :math:`u` ``(n, 1, h, w)`` of lag-1 correlation ``log_rho``.
    """
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError(f"variance must be a positive number, got {variance!r}")
    if not (log_sd >= 0 and math.isfinite(log_sd)):
        raise ValueError(f"log_sd must be a finite number >= 0, got {log_sd!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    x = _unit_field((n, C), h, w, rho, rng)  # (n, C, h, w)
    scale = math.sqrt(variance)
    if log_sd > 0:
        u = _unit_field((n, 1), h, w, log_rho, rng)  # (n, 1, h, w)
        scale = scale * np.exp(0.5 * (log_sd * u - log_sd ** 2 / 2))
    return (scale * x).astype(np.float32)


def _per_scale(name: str, value: float | Sequence[float], k: int) -> list[float]:
    values = [float(value)] * k if np.isscalar(value) else [float(v) for v in value]
    if len(values) != k:
        raise ValueError(f"{name} needs one value or one per scale ({k}), got {value!r}")
    return values


def null_latents(shapes: Sequence[tuple[int, int]], n: int, variance: float | Sequence[float] = 1.0,
                 rho: float | Sequence[float] = 0.0, seed: int = 0, log_sd: float | Sequence[float] = 0.0,
                 log_rho: float | Sequence[float] = 0.0) -> list[torch.Tensor]:
    """Null latents of ``n`` images: a list over scales of ``(n, C_s, s_s, s_s)`` float32 tensors, fine → coarse.

    ``shapes``: ``(C_s, s_s)`` per scale (square maps); ``variance``, ``rho``, ``log_sd``, ``log_rho``: one
    value for every scale or one per scale (see :func:`null_field`). Seeded: the same arguments give the same
    latents.
    """
    k = len(shapes)
    args = zip(shapes, _per_scale("variance", variance, k), _per_scale("rho", rho, k),
               _per_scale("log_sd", log_sd, k), _per_scale("log_rho", log_rho, k))
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(null_field(n, C, s, s, v, r, rng, ls, lr)) for (C, s), v, r, ls, lr in args]


def uneven_log_sd(mean_m: float, sd_m: float, C: int) -> float:
    r""":math:`s` of the uneven variance that gives :math:`m = \operatorname{mean}_c z^2` the spread ``sd_m``.

    With :math:`\sigma^2 = \mu e^{s u - s^2/2}` and :math:`m = \sigma^2 \chi^2_C / C`:
    :math:`\operatorname{Var}(m) = \mu^2 e^{s^2}(1 + 2/C) - \mu^2`, so
    :math:`s^2 = \ln\big((\operatorname{sd}_m^2/\mu^2 + 1)/(1 + 2/C)\big)`, and 0 when the spread is at most
    the :math:`\chi^2` one (``mean_m`` :math:`= \mu`).
    """
    ratio = (sd_m ** 2 / mean_m ** 2 + 1.0) / (1.0 + 2.0 / C)
    return math.sqrt(math.log(ratio)) if ratio > 1 else 0.0


def uneven_log_rho(mean_m: float, sd_m: float, rho_m: float, rho: float, C: int, log_sd: float) -> float:
    r"""Lag-1 correlation of :math:`u` that gives :math:`m` the neighbour correlation ``rho_m`` (clipped to
    [0, 0.99]; 0 when ``log_sd`` is 0).

    Neighbours share :math:`E[\sigma^2_a \sigma^2_b] = \mu^2 e^{s^2 r_u}`, and the channels (correlation
    :math:`\rho`, so :math:`\operatorname{corr}(z_a^2, z_b^2) = \rho^2`) add their part:
    :math:`\operatorname{Cov}(m_a, m_b) = \mu^2 e^{s^2 r_u}(1 + 2\rho^2/C) - \mu^2`, set equal to
    :math:`\rho_m \operatorname{sd}_m^2`.
    """
    if log_sd == 0:
        return 0.0
    r_u = math.log((1.0 + rho_m * sd_m ** 2 / mean_m ** 2) / (1.0 + 2.0 * rho ** 2 / C)) / log_sd ** 2
    return float(min(max(r_u, 0.0), 0.99))


def latent_statistics(z: torch.Tensor) -> dict[str, float]:
    r"""What the null models are matched to, from latents ``(N, C, h, w)`` of normal images.

    ``mean_m``, ``sd_m``: mean and standard deviation of :math:`m = \operatorname{mean}_c z^2` over all
    positions; ``rho``: correlation of horizontally adjacent values of a channel, averaged over channels;
    ``rho_m``: correlation of horizontally adjacent values of :math:`m`; ``C``: channels.
    """
    a = z.detach().double().cpu()
    m = (a ** 2).mean(1)  # (N, h, w)

    def neighbours(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        left, right = x[..., :-1], x[..., 1:]
        left, right = left - left.mean(dims, keepdim=True), right - right.mean(dims, keepdim=True)
        return (left * right).mean(dims) / (left.std(dims, correction=0) * right.std(dims, correction=0))

    return {"mean_m": float(m.mean()), "sd_m": float(m.std()), "rho": float(neighbours(a, (0, 2, 3)).mean()),
            "rho_m": float(neighbours(m, (0, 1, 2))), "C": int(a.shape[1])}


def null_parameters(stats_per_scale: Sequence[dict[str, float]], kind: str) -> dict[str, list[float]]:
    """Keyword arguments of :func:`null_latents` for one of :data:`NULL_KINDS`, matched per scale.

    ``"iid"``: N(0, 1); ``"variance"``: N(0, ``mean_m``); ``"correlated"``: N(0, 1) with lag-1 correlation
    ``rho``; ``"variance+correlated"``: both; ``"uneven variance"``: both, plus the uneven variance whose
    ``log_sd`` and ``log_rho`` reproduce ``sd_m`` and ``rho_m`` (:func:`uneven_log_sd`, :func:`uneven_log_rho`).
    """
    if kind not in NULL_KINDS:
        raise ValueError(f"kind must be one of {NULL_KINDS}, got {kind!r}")
    k = len(stats_per_scale)
    out = {"variance": [1.0] * k, "rho": [0.0] * k, "log_sd": [0.0] * k, "log_rho": [0.0] * k}
    if kind in ("variance", "variance+correlated", "uneven variance"):
        out["variance"] = [st["mean_m"] for st in stats_per_scale]
    if kind in ("correlated", "variance+correlated", "uneven variance"):
        out["rho"] = [max(0.0, st["rho"]) for st in stats_per_scale]
    if kind == "uneven variance":
        out["log_sd"] = [uneven_log_sd(st["mean_m"], st["sd_m"], st["C"]) for st in stats_per_scale]
        out["log_rho"] = [uneven_log_rho(st["mean_m"], st["sd_m"], st["rho_m"], max(0.0, st["rho"]), st["C"], ls)
                          for st, ls in zip(stats_per_scale, out["log_sd"])]
    return out


def poisson_mean_ci(total: int, n: int, level: float = 0.95) -> tuple[float, float]:
    r"""Exact (Garwood) confidence interval of the mean count per image, from ``total`` counts in ``n`` images.

    :math:`[\tfrac12 \chi^2_{2k}(\alpha/2),\ \tfrac12 \chi^2_{2k+2}(1 - \alpha/2)] / n` with :math:`k` the
    total and :math:`\alpha = 1 - \text{level}`; the lower end is 0 when :math:`k = 0`. It assumes Poisson
    counts; counts that come in fixed groups (a whole image detected at every scale) are more spread out.
    """
    if n < 1 or total < 0:
        raise ValueError(f"need n >= 1 images and total >= 0 counts, got n={n!r}, total={total!r}")
    alpha = 1.0 - level
    low = 0.0 if total == 0 else stats.chi2.ppf(alpha / 2, 2 * total) / 2
    high = stats.chi2.ppf(1 - alpha / 2, 2 * total + 2) / 2
    return float(low / n), float(high / n)
