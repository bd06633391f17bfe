r"""PaDiM: a Gaussian per position of the feature grid, scored by Mahalanobis distance.

PaDiM (Defard et al.) is the second non-flow baseline of chapter 7. Like PatchCore it is fitted, not trained:

1. **Embedding** (:func:`embedding`): the backbone's stages at strides 4, 8 and 16 (the paper's ResNet layers
   1–3; MSFlow reads the same stages) are upsampled (nearest) to the finest grid and concatenated, and a seeded
   random subset of ``d`` channels is kept (the paper's d = 100 for ResNet18; :data:`DEFAULT_CHANNELS`).
2. **Statistics** (:class:`PaDiM`): at every position :math:`(i, j)` of the grid, the mean :math:`\mu_{ij}` and
   the sample covariance of the N training embeddings, regularised,
   :math:`\Sigma_{ij} = \frac{1}{N-1}\sum_k (x^k_{ij} - \mu_{ij})(x^k_{ij} - \mu_{ij})^\top + \varepsilon I`,
   ε = 0.01; the model keeps :math:`\Sigma_{ij}^{-1}`.
3. **Scores**: the Mahalanobis distance
   :math:`M(x_{ij}) = \sqrt{(x_{ij} - \mu_{ij})^\top \Sigma_{ij}^{-1} (x_{ij} - \mu_{ij})}` per position,
   upsampled bilinearly to the evaluation size and smoothed by a Gaussian of σ = 4 pixels; image score: the
   maximum of the map.

Memory: ``h·w·d²`` floats for the inverse covariances — MobileNetV2 at 256 (64² positions, d = 100):
4,096 × 100² × 4 B ≈ 164 MB (fitting holds the N embeddings as well: 209 × 100 × 64² × 4 B ≈ 342 MB for bottle).

The NFA does not apply: Mahalanobis distances are not N(0, I) latents (squared, they are χ²_d only if the
features were Gaussian, which they are not), so there is no a contrario threshold and no mean z².

References
----------
T. Defard, A. Setkov, A. Loesch, R. Audigier, "PaDiM: a Patch Distribution Modeling Framework for Anomaly
Detection and Localization", ICPR Workshops 2021 (arXiv:2011.08785).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from .base import StatisticalMethod, check_cnn_backbone
from .patchcore import smooth_maps

__all__ = ["embedding", "channel_subset", "PaDiM", "PaDiMMethod", "DEFAULT_CHANNELS", "EPSILON"]

#: d, the random channel subset (the paper's 100 for ResNet18).
DEFAULT_CHANNELS = 100
#: ε, the covariance regulariser (the paper's 0.01).
EPSILON = 0.01


def embedding(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Backbone maps, fine → coarse, list of ``(B, C_s, h_s, w_s)`` → ``(B, ΣC_s, h_0, w_0)``, each upsampled
    (nearest) to the finest grid."""
    size = maps[0].shape[-2:]
    return torch.cat([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="nearest") for m in maps], 1)


def channel_subset(total: int, d: int, seed: int) -> torch.Tensor:
    """A seeded random choice of ``min(d, total)`` of ``total`` channels, sorted: indices ``(d,)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[: min(d, total)].sort().values


class PaDiM(nn.Module):
    """Per-position Gaussians of the embedding of backbone maps of ``channels`` × ``sizes``² (fine → coarse).

    Buffers, saved with the state dict: ``index`` (d,) the chosen channels, ``mean`` (d, h, w) and
    ``precision`` (h·w, d, d), the inverse regularised covariances.
    """

    def __init__(self, channels: Sequence[int], sizes: Sequence[int], d: int = DEFAULT_CHANNELS, seed: int = 0,
                 epsilon: float = EPSILON) -> None:
        super().__init__()
        self.channels, self.sizes, self.epsilon = list(channels), [(s, s) for s in sizes], epsilon
        index = channel_subset(sum(channels), d, seed)
        h = w = sizes[0]
        self.register_buffer("index", index)
        self.register_buffer("mean", torch.zeros(len(index), h, w))
        self.register_buffer("precision", torch.zeros(h * w, len(index), len(index)))

    @torch.no_grad()
    def fit(self, features: Sequence[torch.Tensor], batch: int = 16) -> None:
        """Fit the Gaussians on the training maps (list of ``(N, C_s, h_s, w_s)``, N ≥ 2)."""
        n = len(features[0])
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 training images for a covariance, got {n}")
        dev = self.mean.device  # the model's: the statistics are computed there
        x = torch.cat([embedding([f[i:i + batch].to(dev) for f in features])[:, self.index].double()
                       for i in range(0, n, batch)])  # (N, d, h, w)
        mean = x.mean(0)
        c = (x - mean).flatten(2).permute(2, 0, 1)  # (h·w, N, d)
        cov = c.transpose(1, 2) @ c / (n - 1) + self.epsilon * torch.eye(c.shape[2], dtype=c.dtype, device=dev)
        self.mean = mean.float()
        self.precision = torch.linalg.inv(cov).float()

    @torch.no_grad()
    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Backbone maps → Mahalanobis distance map ``(B, h_0, w_0)``."""
        x = embedding(maps)[:, self.index].float()
        b, d, h, w = x.shape
        delta = (x - self.mean).flatten(2).permute(2, 0, 1)  # (h·w, B, d)
        m2 = ((delta @ self.precision) * delta).sum(2)  # (h·w, B)
        return m2.clamp_min(0).sqrt().T.reshape(b, h, w)


class PaDiMMethod(StatisticalMethod):
    """PaDiM (a baseline, not a flow): Gaussians fitted on the backbone's stages at strides 4/8/16."""

    name = "padim"
    model_class = PaDiM

    def architecture(self, cfg):
        return {**super().architecture(cfg), "padim_channels": cfg.padim_channels}

    def out_indices(self, backbone: str) -> tuple[int, ...]:
        check_cnn_backbone(self.name, backbone)
        return (1, 2, 3)

    def build(self, cfg: TrainConfig, channels, sizes):
        return PaDiM(channels, sizes, cfg.padim_channels, cfg.seed)

    def fit(self, model, features, progress: bool = False):
        model.fit(features)

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        dist = model(extractor(images))
        up = F.interpolate(dist[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
        return [], {"score": up.float().cpu()}

    def finalize(self, parts, out_size):
        score = smooth_maps(parts["score"])
        return {**parts, "score": score, "image_score": score.reshape(len(score), -1).max(1)}
