r"""The U-Flow model: feature normalisation + U-shaped flow, and its loss (book chapter 3).

Features come from a frozen extractor (:mod:`uflow_lib.features`), usually cached. Each scale is then
normalised, and the flow maps the normalised features to latents :math:`z_s` and :math:`\log|\det J|`.

Feature normalisation (``norm``):

- ``"standardize"`` (default for CNN backbones): a *fixed* per-channel standardisation, mean and std of each
  channel over the training features, the std floored at 0.1 × the median channel std (near-dead channels
  would otherwise blow up on test images). Stored as buffers; no parameters, nothing outside the flow to
  cheat the likelihood. Measured on bottle/MobileNetV2: 0.998 / 0.951 / 0.843 (image / pixel AUROC / AUPRO).
- ``"layernorm"``: the authors' trainable ``LayerNorm`` over (C, H, W). Its affine scale sits *outside* the
  flow, so the loss can fall by shrinking it (0.983 / 0.909 / 0.687 measured): kept to show that flaw.
- ``"layernorm_noaffine"``: LayerNorm without parameters.
- ``"identity"``: for MS-CaiT, whose features already pass the CaiT's own frozen final norm.

Loss: negative log-likelihood under :math:`\mathcal N(0, I)`, per sample, averaged over the batch

.. math:: L = \frac1B \sum_b \Big[\sum_s \tfrac12 \lVert z_s^{(b)} \rVert^2 - \log|\det J^{(b)}|\Big].

(The batch-summed variant of older code shrinks latents by about :math:`1/\sqrt B` and breaks the NFA.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .flow import build_uflow, latent_shapes

__all__ = ["ChannelStandardizer", "UFlow", "nll_loss", "NORMS", "default_norm"]

NORMS = ("standardize", "layernorm", "layernorm_noaffine", "identity")


def default_norm(backbone: str) -> str:
    """MS-CaiT keeps its own frozen final norm; CNN backbones use the fixed standardisation."""
    return "identity" if backbone == "mcait" else "standardize"


class ChannelStandardizer(nn.Module):
    """Fixed per-channel standardisation ``(x - mean_c) / std_c`` with statistics of the training features.

    ``forward``: ``(B, C, H, W)`` → ``(B, C, H, W)``. Call :meth:`fit` once before use.
    """

    def __init__(self, channels: int, floor: float = 0.1) -> None:
        super().__init__()
        self.floor = floor
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> "ChannelStandardizer":
        """Statistics from training features ``(N, C, H, W)``; std floored at ``floor`` × median channel std."""
        x = features.double().transpose(0, 1).flatten(1)  # (C, N·H·W)
        mean, std = x.mean(dim=1), x.std(dim=1)
        std = std.clamp(min=self.floor * torch.quantile(std, 0.5).item())  # true median (mean of the middle two)
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("ChannelStandardizer used before fit(): call model.fit_normalisation(train_features)")
        return (x - self.mean) / self.std


def _make_norm(kind: str, channels: int, size: int) -> nn.Module:
    if kind == "standardize":
        return ChannelStandardizer(channels)
    if kind == "layernorm":
        return nn.LayerNorm([channels, size, size], elementwise_affine=True)
    if kind == "layernorm_noaffine":
        return nn.LayerNorm([channels, size, size], elementwise_affine=False)
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class UFlow(nn.Module):
    """Normalisation + U-shaped flow on features of known shapes.

    Parameters
    ----------
    channels, sizes : sequence of int
        Feature channels and spatial sizes per scale, fine → coarse.
    flow_steps : int
        AllInOneBlocks per stage (paper: 4).
    norm : str
        One of :data:`NORMS` (see module docstring).
    seed : int
        Seed of the flow's fixed channel permutations.
    """

    def __init__(
        self, channels: Sequence[int], sizes: Sequence[int], flow_steps: int = 4, norm: str = "standardize", seed: int = 0
    ) -> None:
        super().__init__()
        self.channels, self.sizes, self.flow_steps, self.norm_kind = list(channels), list(sizes), flow_steps, norm
        self.norms = nn.ModuleList(_make_norm(norm, c, s) for c, s in zip(channels, sizes))
        self.flow = build_uflow(channels, sizes, flow_steps, seed=seed)
        self.latent_shapes = latent_shapes(channels, sizes)

    @torch.no_grad()
    def fit_normalisation(self, features: Sequence[torch.Tensor]) -> None:
        """Fit fixed standardisers on training features (list of ``(N, C_s, h_s, w_s)``); no-op for other norms."""
        for norm, f in zip(self.norms, features):
            if isinstance(norm, ChannelStandardizer):
                norm.fit(f)

    def check_features(self, features: Sequence[torch.Tensor]) -> None:
        got = [tuple(f.shape[1:]) for f in features]
        want = [(c, s, s) for c, s in zip(self.channels, self.sizes)]
        if got != want:
            raise ValueError(
                f"feature shapes {got} do not match the flow's {want} (fine → coarse); was the model built for "
                f"another backbone or input size?"
            )

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features (list of ``(B, C_s, h_s, w_s)``, fine → coarse) → (latents fine → coarse, ``(B,)`` log-det)."""
        self.check_features(features)
        x = [norm(f) for norm, f in zip(self.norms, features)]
        z, log_det = self.flow(x)
        return list(z), log_det

    def inverse(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Latents → *normalised* features (the flow's inverse; normalisation is not undone)."""
        x, _ = self.flow(list(latents), rev=True)
        return list(x)


def nll_loss(latents: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
    r"""Per-sample negative log-likelihood (without the constant), averaged over the batch.

    latents: list of ``(B, C_s, h_s, w_s)``; log_det: ``(B,)``. Returns a scalar
    :math:`\operatorname{mean}_b [\sum_s \frac12 \lVert z_s^{(b)}\rVert^2 - \log|\det J^{(b)}|]`.
    """
    quad = sum(0.5 * (z**2).flatten(1).sum(dim=1) for z in latents)  # (B,)
    return (quad - log_det).mean()
