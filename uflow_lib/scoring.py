r"""Scoring helpers every flow method uses: per-scale log-likelihood maps, their log-domain upsampling, image
scores and the calibration check mean z² (book chapter 4).

Under a trained flow the latents of normal data are i.i.d. :math:`\mathcal N(0, 1)`. Per scale :math:`s` with
:math:`C_s` channels the methods use the likelihood of the *mean* over channels (equal weight per scale, no
underflow):

.. math:: \log p_s(i, j) = -\tfrac12 \cdot \tfrac{1}{C_s} \sum_c z_{s,c,i,j}^2 .

Each method combines these maps in its own way (U-Flow: :func:`uflow_lib.methods.uflow.anomaly_score_map`;
MSFlow: :func:`uflow_lib.methods.msflow.msflow_anomaly_maps`). Summing the :math:`\log p_s` of the scales
multiplies per-scale *geometric means*, one per scale whatever its width; :func:`joint_score_map` is the
negative log-likelihood of the independent scales' joint Gaussian model instead, which weighs scale :math:`s` by
its :math:`C_s`. :func:`log_upsample` resizes :math:`p_s`
bilinearly *in the log domain* (``logaddexp`` of the two neighbours' weighted log-likelihoods along each axis),
so maps that would underflow or saturate in float32 keep their order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["log_likelihood_maps", "log_upsample", "joint_score_map", "image_scores", "mean_z2"]


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


def log_upsample(logx: torch.Tensor, out_size: int) -> torch.Tensor:
    """``(B, 1, h, w)`` log values → ``(B, 1, out, out)`` log of the bilinearly upsampled ``exp(logx)``."""
    return _log_bilinear_axis(_log_bilinear_axis(logx.double(), out_size, 2), out_size, 3)


def joint_score_map(latents: Sequence[torch.Tensor], out_size: int = 256) -> torch.Tensor:
    r"""Negative joint log-likelihood of the scales under :math:`\mathcal N(0, I)`, up to constants,
    ``(B, 1, out, out)`` float64 (higher = more anomalous):

    .. math:: S_{\mathrm{joint}} = -\sum_s C_s \operatorname{up}(\log p_s)
              = \tfrac12 \sum_s \operatorname{up}(\lVert z_s \rVert^2) .

    latents: list of ``(B, C_s, h_s, w_s)``, fine → coarse; ``up`` is bilinear (``align_corners=False``) on the
    log-likelihood, as in U-Flow's ``combine="product"`` map, which weighs every scale 1 instead of :math:`C_s`.
    The constant :math:`\tfrac12 \sum_s C_s \log 2\pi` is left out, and so is the flow's log-determinant:
    like U-Flow's scores, this is the density of the latents only, not of the features.
    """
    _check_latents(latents)
    ups = [
        z.shape[1] * F.interpolate(lp.double(), size=(out_size, out_size), mode="bilinear", align_corners=False)
        for z, lp in zip(latents, log_likelihood_maps(latents))
    ]  # each (B, 1, out, out): C_s · up(log p_s)
    return -torch.stack(ups).sum(dim=0)


def image_scores(score_map: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of the map: ``(B, 1, H, W)`` → ``(B,)``."""
    return score_map.flatten(1).amax(dim=1)


def mean_z2(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Per-image mean of :math:`z^2` over every latent entry of every scale, ``(B,)``; ≈ 1 for normal data."""
    _check_latents(latents)
    total = sum((z.float() ** 2).flatten(1).sum(dim=1) for z in latents)
    count = sum(z[0].numel() for z in latents)
    return total / count
