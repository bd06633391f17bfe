r"""A Gaussian whose variance follows an inverse-gamma law: the probability pieces of SANFlow's loss.

With :math:`\sigma^2 \sim IG(\alpha, \beta)` (density :math:`\propto (\sigma^2)^{-\alpha-1} e^{-\beta/\sigma^2}`) and
:math:`z \mid \sigma^2 \sim \mathcal N(0, \sigma^2 I_C)`:

- the mode of the variance, :math:`\beta / (\alpha + 1)` (:func:`ig_mode_variance`);
- :math:`\log \mathcal N(z; \mu\mathbf 1, \sigma^2 I)` (:func:`gaussian_log_likelihood`);
- its expectation over the variance, using :math:`\mathbb E[\log \sigma^2] = \log\beta - \psi(\alpha)` and
  :math:`\mathbb E[1/\sigma^2] = \alpha/\beta` (:func:`expected_normal_log_likelihood`);
- the KL divergence between two inverse-gamma laws (:func:`ig_kl`).

References
----------
D. Kim, S. Baik, T. H. Kim, "SANFlow: Semantic-Aware Normalizing Flow for Anomaly Detection and Localization",
NeurIPS 2023 (the statistic-aware variances). C. M. Bishop, "Pattern Recognition and Machine Learning",
Springer 2006, section 2.3.6 (the gamma prior of a Gaussian's precision).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ig_mode_variance", "gaussian_log_likelihood", "expected_normal_log_likelihood", "ig_kl"]

_LOG_2PI = math.log(2.0 * math.pi)


def ig_mode_variance(log_alpha: torch.Tensor, log_beta: torch.Tensor, max_variance: float = 5.0) -> torch.Tensor:
    r"""Mode of :math:`IG(\alpha, \beta)`, :math:`\beta/(\alpha+1)`, clamped to ``≤ max_variance`` (any shape)."""
    return (log_beta.exp() / (log_alpha.exp() + 1.0)).clamp(max=max_variance)


def gaussian_log_likelihood(z: torch.Tensor, variance: torch.Tensor, mean: float = 0.0) -> torch.Tensor:
    r""":math:`\log \mathcal N(z; \mu \mathbf 1, \sigma^2 I)` over channels (dim 1): ``z`` ``(N, C, ...)``,
    ``variance`` ``(N, ...)`` → ``(N, ...)``."""
    C = z.shape[1]
    return -0.5 * C * (_LOG_2PI + variance.log()) - ((z - mean) ** 2).sum(dim=1) / (2.0 * variance)


def expected_normal_log_likelihood(z: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor,
                                   log_beta_coefficient: float | None = None) -> torch.Tensor:
    r""":math:`\mathbb E_{\sigma^2 \sim IG(\alpha,\beta)} \log \mathcal N(z; 0, \sigma^2 I) = -\tfrac C2 \log 2\pi
    - k(\log\beta - \psi(\alpha)) - \tfrac{\alpha}{2\beta}\sum_c z_c^2`, :math:`k = C/2` unless given.

    ``z`` ``(N, C, ...)``, ``log_alpha``, ``log_beta`` ``(N, ...)`` → ``(N, ...)``.
    """
    C = z.shape[1]
    k = 0.5 * C if log_beta_coefficient is None else log_beta_coefficient
    alpha = log_alpha.exp()
    z2 = (z**2).sum(dim=1)
    return -0.5 * C * _LOG_2PI - k * (log_beta - torch.digamma(alpha)) - alpha / (2.0 * log_beta.exp()) * z2


def ig_kl(log_alpha: torch.Tensor, log_beta: torch.Tensor, alpha0: float = 59.5, beta0: float = 6.05) -> torch.Tensor:
    r""":math:`KL(IG(\alpha,\beta)\,\|\,IG(\alpha_0,\beta_0))` elementwise (the KL of the gamma laws of
    :math:`1/\sigma^2`, since KL is invariant under the bijection :math:`\sigma^2 \mapsto 1/\sigma^2`):

    .. math:: (\alpha-\alpha_0)\psi(\alpha) - \ln\Gamma(\alpha) + \ln\Gamma(\alpha_0)
              + \alpha_0(\ln\beta - \ln\beta_0) + \alpha\,\frac{\beta_0 - \beta}{\beta}.
    """
    alpha, beta = log_alpha.exp(), log_beta.exp()
    return ((alpha - alpha0) * torch.digamma(alpha) - torch.lgamma(alpha) + math.lgamma(alpha0)
            + alpha0 * (log_beta - math.log(beta0)) + alpha * (beta0 - beta) / beta)
