r"""PatchCore: a memory bank of locally aggregated patch features, scored by nearest-neighbour distance.

PatchCore (Roth et al.) is the non-flow baseline the flows of chapter 7 are measured against, on the same frozen
features. Nothing is learnt by gradient descent: "training" fits the memory bank in one pass.

1. **Locally aware patch features** (:func:`patch_features`): every backbone map is averaged over its 3×3
   neighbourhood (stride 1, padding 1: the paper's aggregation over a patch of size p = 3), the coarser map is
   upsampled bilinearly to the finer map's grid and the maps are concatenated: one feature of
   :math:`C = \sum_s C_s` channels per position of the finest grid. The stages are U-Flow's (strides 8 and 16,
   the paper's "intermediate" layers 2 and 3). The paper's further projection of every layer to a common width
   is skipped: MobileNetV2's 32 + 96 channels are already small.
2. **Memory bank** :math:`\mathcal M` (:func:`greedy_coreset`): the patch features of all training images,
   reduced to a fraction (``coreset_ratio``, 10 % by default) by the greedy minimax coreset: start from a
   random feature, then repeatedly add the one farthest from the features already chosen. Distances are taken
   on a seeded Gaussian random projection to 128 dimensions when :math:`C > 128` (Johnson–Lindenstrauss), on the
   features themselves otherwise.
3. **Scores** (:class:`PatchCore`): a test patch scores its distance to the nearest memory feature,
   :math:`s(m) = \min_{n \in \mathcal M} \lVert m - n \rVert_2`; the map of these distances is upsampled
   bilinearly to the evaluation size and smoothed by a Gaussian of σ = 4 pixels. The image score is the paper's
   re-weighted maximum: with :math:`m^{*}` the test patch of largest distance :math:`s^{*}`, :math:`n^{*}` its
   nearest memory feature and :math:`\mathcal N_b(n^{*})` the :math:`b = 9` memory features nearest
   :math:`n^{*}` (itself included),

   .. math::

       s = \Big(1 - \frac{\exp \lVert m^{*} - n^{*} \rVert}
                         {\sum_{n \in \mathcal N_b(n^{*})} \exp \lVert m^{*} - n \rVert}\Big)\, s^{*}.

Memory: the bank holds ``coreset_ratio`` × N × h × w features of C float32 — for bottle at 256 with MobileNetV2
(209 images, 32² positions, C = 128) 21,401 × 128 × 4 B ≈ 11 MB (110 MB with the full bank). Distances are
computed in chunks of query rows (:func:`nearest`), so scoring needs at most :data:`DISTANCE_BLOCK` floats
(256 MB) of distances at a time.

The NFA does not apply: PatchCore has no latents that are N(0, I) under the null hypothesis, so there is no
a contrario threshold and no mean z² (evaluation says so and skips them).

Nearest neighbours are brute force with ``torch.cdist`` in chunks rather than a library index: the bank is
small, the search is exact, and it runs on the GPU as it does on the CPU.

References
----------
K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox, P. Gehler, "Towards Total Recall in Industrial Anomaly
Detection", CVPR 2022 (arXiv:2106.08265).
O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from .base import Recipe, StatisticalMethod

__all__ = ["patch_features", "nearest", "greedy_coreset", "smooth_maps", "PatchCore", "PatchCoreMethod",
           "PROJECTION_DIM", "N_NEIGHBOURS", "SMOOTHING_SIGMA", "DISTANCE_BLOCK"]

#: Dimension of the random projection the coreset's distances use (the paper's 128).
PROJECTION_DIM = 128
#: b, the memory features around the nearest one that re-weight the image score (the paper's 9).
N_NEIGHBOURS = 9
#: Floats in one block of query-to-bank distances (2^26: 256 MB in float32), the memory scoring needs.
DISTANCE_BLOCK = 2 ** 26
#: σ in pixels of the Gaussian that smooths the upsampled score map (PatchCore's and PaDiM's 4).
SMOOTHING_SIGMA = 4.0


def patch_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Backbone maps, fine → coarse, list of ``(B, C_s, h_s, w_s)`` → locally aggregated patch features
    ``(B, ΣC_s, h_0, w_0)``: 3×3 average, upsampled bilinearly to the finest grid, concatenated."""
    size = maps[0].shape[-2:]
    out = []
    for m in maps:
        m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        out.append(m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest Euclidean distances from each query ``(Q, C)`` to the rows of ``bank`` ``(M, C)``:
    ``(distances (Q, k), indices (Q, k))``, ascending, computed ``chunk`` query rows at a time (default: as many
    as keep the chunk's distance matrix at :data:`DISTANCE_BLOCK` floats)."""
    k = min(k, len(bank))
    chunk = chunk or max(1, DISTANCE_BLOCK // max(len(bank), 1))
    dist, idx = [], []
    for q in queries.split(chunk):
        d, i = torch.cdist(q, bank).topk(k, dim=1, largest=False)
        dist.append(d)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


def greedy_coreset(x: torch.Tensor, n: int, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Indices ``(n,)`` of a greedy minimax coreset of the rows of ``x`` ``(N, C)``: a seeded random first row,
    then each next row the one farthest from those chosen. Distances on a random projection to
    :data:`PROJECTION_DIM` dimensions when ``C`` is larger."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, min(n, len(x)))
    if x.shape[1] > PROJECTION_DIM:
        x = x @ (torch.randn(x.shape[1], PROJECTION_DIM, generator=g) / PROJECTION_DIM ** 0.5).to(x)
    chosen = torch.empty(n, dtype=torch.long, device=x.device)
    chosen[0] = torch.randint(len(x), (1,), generator=g).item()
    sq = (x * x).sum(1)  # (N,) squared norms: ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖², one matrix-vector product per step
    dot = torch.empty_like(sq)

    def dist2(i: torch.Tensor) -> torch.Tensor:  # (N,) squared distances to row i
        torch.mv(x, x[i], out=dot)
        return (sq - 2 * dot + sq[i]).clamp_min_(0)

    min_dist = dist2(chosen[0])
    for i in tqdm(range(1, n), desc="coreset", disable=not progress, leave=False):
        chosen[i] = torch.argmax(min_dist)
        torch.minimum(min_dist, dist2(chosen[i]), out=min_dist)
    return chosen


def smooth_maps(maps: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """Gaussian smoothing of each map of ``(N, H, W)`` (σ in pixels), as float32."""
    return np.stack([gaussian_filter(m.astype(np.float32), sigma) for m in maps])


class PatchCore(nn.Module):
    """The memory bank and the scores of PatchCore for backbone maps of ``channels`` × ``sizes``² (fine → coarse).

    ``memory`` (|M|, ΣC_s) is a buffer: empty until :meth:`fit`, saved and loaded with the state dict (its
    size is read from the checkpoint).
    """

    def __init__(self, channels: Sequence[int], sizes: Sequence[int], coreset_ratio: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        self.channels, self.sizes = list(channels), [(s, s) for s in sizes]
        self.coreset_ratio, self.seed = coreset_ratio, seed
        self.register_buffer("memory", torch.zeros(0, sum(channels)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "memory")
        if saved is not None and saved.ndim == 2 and saved.shape[1] == self.memory.shape[1]:
            self.memory = torch.empty_like(saved, device=self.memory.device)  # the bank's size is the checkpoint's
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, features: Sequence[torch.Tensor], progress: bool = False, batch: int = 16) -> None:
        """Fill the memory bank from the training maps (list of ``(N, C_s, h_s, w_s)``)."""
        dev = self.memory.device  # the model's: the coreset runs there (a GPU when the model is on one)
        rows = [patch_features([f[i:i + batch].to(dev) for f in features]) for i in range(0, len(features[0]), batch)]
        bank = torch.cat([r.permute(0, 2, 3, 1).reshape(-1, r.shape[1]) for r in rows]).float()
        if self.coreset_ratio < 1:
            bank = bank[greedy_coreset(bank, round(self.coreset_ratio * len(bank)), self.seed, progress)]
        self.memory = bank.contiguous()

    @torch.no_grad()
    def forward(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone maps → (patch distance map ``(B, h_0, w_0)``, re-weighted image score ``(B,)``)."""
        if len(self.memory) == 0:
            raise RuntimeError("the memory bank is empty: fit the model first (python -m uflow_lib train)")
        p = patch_features(maps).float()
        b, c, h, w = p.shape
        dist, idx = nearest(p.permute(0, 2, 3, 1).reshape(-1, c), self.memory)
        dist, idx = dist[:, 0].reshape(b, h * w), idx[:, 0].reshape(b, h * w)
        s_star, where = dist.max(1)  # (B,): the largest patch distance of each image and its patch
        rows = torch.arange(b, device=p.device)
        m_star = p.flatten(2)[rows, :, where]  # (B, C)
        n_star = self.memory[idx[rows, where]]  # (B, C): its nearest memory feature
        _, around = nearest(n_star, self.memory, k=N_NEIGHBOURS)  # (B, b): N_b(n*), n* itself first
        d_around = torch.linalg.vector_norm(m_star[:, None] - self.memory[around], dim=2)  # (B, b)
        weight = 1 - torch.softmax(d_around, dim=1)[:, 0]
        return dist.reshape(b, h, w), weight * s_star


class PatchCoreMethod(StatisticalMethod):
    """PatchCore (a baseline, not a flow): the memory bank is fitted on U-Flow's stages of the backbone."""

    name = "patchcore"
    model_class = PatchCore
    cpu_recipe = Recipe(1, 8, 0.0)

    def architecture(self, cfg):
        return {**super().architecture(cfg), "coreset_ratio": cfg.coreset_ratio}

    def build(self, cfg: TrainConfig, channels, sizes):
        return PatchCore(channels, sizes, cfg.coreset_ratio, cfg.seed)

    def fit(self, model, features, progress: bool = False):
        model.fit(features, progress=progress)

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        dist, image_score = model(extractor(images))
        up = F.interpolate(dist[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False)
        return [], {"score": up[:, 0].float().cpu(), "image_score": image_score.float().cpu()}

    def finalize(self, parts, out_size):
        return {**parts, "score": smooth_maps(parts["score"])}
