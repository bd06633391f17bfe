r"""Likelihood anomaly maps and image scores from the latents (book chapter 4).

Under the trained flow the latents of normal data are i.i.d. :math:`\mathcal N(0, 1)`. Per scale :math:`s` with
:math:`C_s` channels the paper uses the likelihood of the *mean* over channels (equal weight per scale, no
underflow):

.. math::

    \log p_s(i, j) = -\tfrac12 \cdot \tfrac{1}{C_s} \sum_c z_{s,c,i,j}^2, \qquad
    A = 1 - \tfrac1S \sum_s \operatorname{up}(p_s),

with ``up`` the bilinear upsampling to the evaluation size (256). The image score is :math:`\max A`.

In float32 :math:`A` saturates to exactly 1 on strong defects, so different images tie. The library
therefore also computes the strictly monotone, non-saturating score map

.. math:: S = -\log \tfrac1S \sum_s \operatorname{up}(p_s) \quad (A = 1 - e^{-S}),

with the bilinear upsampling done in the log domain (``logaddexp`` of the two neighbours' weighted
log-likelihoods along each axis), which ranks pixels and images exactly as :math:`A` would in exact arithmetic.
Metrics use :math:`S`. ``combine="product"`` gives the joint likelihood of independent scales instead:
:math:`S_\times = -\sum_s \operatorname{up}(\log p_s)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["log_likelihood_maps", "anomaly_map", "anomaly_score_map", "image_scores", "mean_z2"]


def _check_latents(latents: Sequence[torch.Tensor]) -> None:
    if len(latents) == 0 or any(z.ndim != 4 for z in latents):
        shapes = [tuple(z.shape) for z in latents]
        raise ValueError(f"latents must be a non-empty list of (B, C, h, w) tensors, fine → coarse; got {shapes}")
    if len({z.shape[0] for z in latents}) != 1:
        raise ValueError(f"all scales must have the same batch size, got {[z.shape[0] for z in latents]}")


def log_likelihood_maps(latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    r"""Per-scale :math:`\log p_s = -\frac12 \operatorname{mean}_c z^2`.

    latents: list of ``(B, C_s, h_s, w_s)`` → list of ``(B, 1, h_s, w_s)``.
    """
    _check_latents(latents)
    return [-0.5 * (z.float() ** 2).mean(dim=1, keepdim=True) for z in latents]


def anomaly_map(latents: Sequence[torch.Tensor], out_size: int = 256) -> torch.Tensor:
    r"""The paper's map :math:`A = 1 - \operatorname{mean}_s \operatorname{up}(p_s)`, ``(B, 1, out, out)`` in [0, 1]."""
    probs = [
        F.interpolate(lp.exp(), size=(out_size, out_size), mode="bilinear", align_corners=False)  # (B, 1, out, out)
        for lp in log_likelihood_maps(latents)
    ]
    return 1.0 - torch.stack(probs).mean(dim=0)


def _log_bilinear_axis(logx: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """Bilinear (align_corners=False) resize along ``dim`` of ``exp(logx)``, returned as a log, computed stably."""
    n = logx.shape[dim]
    dst = torch.arange(out, dtype=torch.float64, device=logx.device)
    # same source coordinates as torch's bilinear interpolation with align_corners=False
    src = ((dst + 0.5) * (n / out) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    lam = (src - i0).clamp(0.0, 1.0)
    shape = [1] * logx.ndim
    shape[dim] = out
    a = logx.index_select(dim, i0) + torch.log1p(-lam).view(shape)  # log((1-λ)·x0)
    b = logx.index_select(dim, i1) + torch.log(lam).view(shape)  # log(λ·x1); λ = 0 gives -inf, ignored
    return torch.logaddexp(a, b)


def _log_upsample(logx: torch.Tensor, out_size: int) -> torch.Tensor:
    """``(B, 1, h, w)`` log values → ``(B, 1, out, out)`` log of the bilinearly upsampled ``exp(logx)``."""
    return _log_bilinear_axis(_log_bilinear_axis(logx.double(), out_size, 2), out_size, 3)


def anomaly_score_map(
    latents: Sequence[torch.Tensor], out_size: int = 256, combine: str = "mean"
) -> torch.Tensor:
    r"""Non-saturating score map, ``(B, 1, out, out)`` float64 (higher = more anomalous).

    ``combine="mean"``: :math:`S = -\log \operatorname{mean}_s \operatorname{up}(p_s)`, a strictly increasing
    function of the paper's :math:`A`. ``combine="product"``: :math:`S_\times = -\sum_s \operatorname{up}(\log p_s)`.
    """
    logps = log_likelihood_maps(latents)
    if combine == "mean":
        ups = torch.stack([_log_upsample(lp, out_size) for lp in logps])  # (S, B, 1, out, out)
        return -(torch.logsumexp(ups, dim=0) - math.log(len(logps)))
    if combine == "product":
        ups = [
            F.interpolate(lp.double(), size=(out_size, out_size), mode="bilinear", align_corners=False)
            for lp in logps
        ]
        return -torch.stack(ups).sum(dim=0)
    raise ValueError(f"combine must be 'mean' (the paper's average of likelihoods) or 'product', got {combine!r}")


def image_scores(score_map: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the map: ``(B, 1, H, W)`` → ``(B,)``."""
    return score_map.flatten(1).amax(dim=1)


def mean_z2(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Per-image mean of :math:`z^2` over every latent entry of every scale, ``(B,)``; ≈ 1 for normal data."""
    _check_latents(latents)
    total = sum((z.float() ** 2).flatten(1).sum(dim=1) for z in latents)
    count = sum(z[0].numel() for z in latents)
    return total / count
