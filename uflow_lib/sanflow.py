r"""SANFlow: split base distributions for synthetic anomalies and predicted variances (book chapter 7).

SANFlow (Kim et al.) builds on CFLOW-AD: per backbone layer a 1-D conditional flow maps each feature vector
("fibre") :math:`x \in \mathbb R^C` with its 2-D positional encoding to :math:`z` (:func:`build_fibre_flow`: 8
AllInOneBlocks, subnet Linear d→2d → ReLU → Linear, clamp 1.9). It changes two things:

1. **Split base distributions.** Training images get synthetic anomalies (:func:`synthesize_anomalies`; 75 %
   of the images carry one soft rectangle/circle blend of another training image, or a thin rotated scar cut
   from the same image) with a mask :math:`m`. Normal positions go to :math:`\mathcal N(0, \sigma^2 I)`,
   anomalous ones to :math:`\mathcal N(\mathbf 1, \sigma^2 I)`: :math:`\log p = (1-m) \log p_n + m \log p_a`.
   (Augmented features change every step: they cannot be cached like U-Flow's.)
2. **Statistic-aware variances.** :class:`VarianceNet` maps the normalised image to per-pixel
   :math:`\log\alpha, \log\beta` of an inverse gamma :math:`\sigma^2 \sim IG(\alpha, \beta)`; one map serves all
   layers (sampled nearest at each grid, :func:`sample_at_grid`). :math:`\log\alpha \in [\ln 10^{-8}, \ln 10^4]`;
   the variance used is the mode :math:`\beta/(\alpha+1) \le 5`; the anomalous branch uses it detached.

Per position with :math:`C` channels (:func:`sanflow_loss_terms`):

.. math::

    \mathbb E_{IG}[\log p_n] &= -\tfrac C2 \log 2\pi - \tfrac C2 (\log\beta - \psi(\alpha))
        - \tfrac{\alpha}{2\beta} \textstyle\sum_c z_c^2, \\
    L_{KL} &= KL\big(IG(\alpha, \beta) \,\|\, IG(\alpha_0{=}59.5, \beta_0{=}6.05)\big), \qquad
    L_{BCE} = \mathrm{BCE}\big(s(z), 1 - m\big),\; s = \tfrac{p_n}{p_n + p_a}.

The library's default objective (:func:`sanflow_loss`) is the plain mean over positions of
:math:`\big[-(\log p + \log|\det J|) + L_{KL} + 0.2\, L_{BCE}\big] / C`.

Quirks of the authors' code, and the choice made here (:class:`SANFlowLossConfig`; ``.authors()`` keeps all):

- **C instead of C/2** on :math:`\log\beta - \psi(\alpha)`: *fixed* (default ``log_beta_coefficient="half"``).
  :math:`C/2` is the exact expectation of :math:`\log \mathcal N(z; 0, \sigma^2 I)` under the IG; with
  :math:`C` the term is no longer a likelihood, and its minimiser in :math:`\beta` halves the variance
  (:math:`\beta^* = \alpha \lVert z\rVert^2 / 2k`, so the mode is :math:`\approx \lVert z\rVert^2/2C` instead of
  :math:`\lVert z\rVert^2/C`). Offered as ``"full"``.
- **Double softmax**: the authors apply a softmax cross-entropy to :math:`[p_n, p_a]` that are already softmax
  probabilities, so the loss stays in [0.31, 1.31] and its gradient is small even for confident mistakes.
  *Fixed* (default): the BCE with logit :math:`\log p_n - \log p_a`, which *is* the cross-entropy of
  :math:`s(z)`, computed stably. Offered as ``double_softmax=True``.
- **Objective**: the authors train :math:`-\operatorname{logsigmoid}((\log p + \log|\det J| - L_{KL} -
  0.2\,L_{CE})/C)` (CFLOW-AD's form), which stops pushing positions whose per-dimension log-likelihood is already
  high. Default here: the plain weighted sum above, a negative log-likelihood plus two regularisers whose
  terms can be read off one by one; measured here it trains as well (other-flows.md). Offered as
  ``objective="logsigmoid"``.

Other choices: positional encoding of 128 channels (CFLOW-AD's default, used for the measurements here; the
authors' SANFlow code uses 512); FrEIA soft (random orthogonal) permutations as CFLOW-AD; the variance net's
output layer starts with zero weights and bias :math:`(\ln\alpha_0, \ln\beta_0)`, so training starts exactly at
the prior (mode 0.1 everywhere).

Anomaly score (:func:`sanflow_log_prob`, :func:`sanflow_anomaly_maps`): the normal-branch log-likelihood per
dimension with the predicted (mode) variance plus the log-det, :math:`(\log \mathcal N(z; 0, \sigma^2 I) +
\log|\det J|)/C`, aggregated as CFLOW-AD: per layer subtract its maximum over the whole test set, exponentiate,
upsample bilinearly, sum over layers; :math:`A = \max - \text{map}`; image score :math:`\max A`.

Trainable parameters (8 blocks, 128 positional channels; counted by hand in ``tests/test_sanflow.py``):

- MobileNetV2 strides 8/16/32 (32/96/320 channels): flows 408,576 + 771,072 + 2,813,952 = **3,993,600**;
- WRN50-2 layers 2–4 (512/1024/2048): 5,523,456 + 17,074,176 + 59,049,984 = **81,647,616**
  (137,502,720 with the authors' 512 positional channels);
- :class:`VarianceNet` (width 64): **114,114**.

References
----------
D. Kim, S. Baik, T. H. Kim, "SANFlow: Semantic-Aware Normalizing Flow for Anomaly Detection and
Localization", NeurIPS 2023. D. Gudovskiy, S. Ishizaka, K. Kozuka, "CFLOW-AD", WACV 2022.
C.-L. Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .msflow import CLAMP, numpy_global_seed, positional_encoding_2d

__all__ = [
    "ANOMALY_KINDS", "synthesize_anomalies", "sample_at_grid", "VarianceNet", "ig_mode_variance", "subnet_fc",
    "build_fibre_flow", "SANFlow", "gaussian_log_likelihood", "expected_normal_log_likelihood", "ig_kl",
    "split_bce", "SANFlowLossConfig", "SANFlowLossTerms", "sanflow_loss_terms", "sanflow_loss",
    "sanflow_log_prob", "sanflow_anomaly_maps",
]

ANOMALY_KINDS = ("rectangle", "circle", "scar")
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-8), math.log(1e4)
_LOG_2PI = math.log(2.0 * math.pi)
#: Widest layer that gets FrEIA's soft permutations by default (see :class:`SANFlow`)
SOFT_PERMUTATION_MAX_CHANNELS = 1024

# ----------------------------------------------------------------------------------------- synthetic anomalies


def _as_rng(rng: np.random.Generator | torch.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, a torch Generator or an int seed, got {type(rng).__name__}")


def _blend(out: torch.Tensor, mask: torch.Tensor, source: torch.Tensor, kind: str, rng: np.random.Generator) -> None:
    """Soft rectangle/circle of ``source`` (3, H, W) blended into ``out`` (3, H, W) in place; ``mask`` (H, W)."""
    H, W = out.shape[-2:]
    S = min(H, W)
    if kind == "rectangle":
        hh, ww = (int(rng.integers(max(2, S // 16), max(3, S // 4 + 1))) for _ in range(2))
        yy, xx = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
        inner = torch.minimum(torch.minimum(yy + 1, hh - yy), torch.minimum(xx + 1, ww - xx)).float()  # 1 at edge
        ramp = (inner / max(1, min(hh, ww) // 4)).clamp(max=1.0)  # (hh, ww), > 0 everywhere in the box
    else:  # circle
        r = float(rng.uniform(max(1.5, S / 16), max(2.0, S / 6)))
        hh = ww = 2 * int(math.ceil(r)) + 1
        yy, xx = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
        dist = torch.hypot((yy - hh // 2).float(), (xx - ww // 2).float())
        ramp = ((r - dist) / max(1.0, r / 4)).clamp(0.0, 1.0)  # (hh, ww), 0 outside the disc
    if hh > H or ww > W:
        raise ValueError(f"image {H}x{W} is too small for a synthetic anomaly; use images of at least 16x16")
    alpha = float(rng.uniform(0.5, 1.0)) * ramp  # blend weight
    y0, x0 = int(rng.integers(0, H - hh + 1)), int(rng.integers(0, W - ww + 1))  # where it goes
    ys, xs = int(rng.integers(0, H - hh + 1)), int(rng.integers(0, W - ww + 1))  # where it is cut from
    box = out[:, y0:y0 + hh, x0:x0 + ww]
    box.mul_(1 - alpha).add_(alpha * source[:, ys:ys + hh, xs:xs + ww])
    mask[y0:y0 + hh, x0:x0 + ww] = torch.maximum(mask[y0:y0 + hh, x0:x0 + ww], (alpha > 0).float())


def _scar(out: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, rng: np.random.Generator) -> None:
    """Thin patch of ``image`` (3, H, W), rotated by ±45°, brightness ×[0.8, 1.2], pasted into ``out`` in place."""
    H, W = out.shape[-2:]
    k = min(H, W) / 256  # CutPaste's scar: width 2–16 px, length 10–25 px at 256²
    w, length = max(1.0, rng.uniform(2, 16) * k), max(3.0, rng.uniform(10, 25) * k)
    theta = math.radians(rng.uniform(-45, 45))
    r = int(math.ceil(math.hypot(w, length) / 2)) + 1
    if 2 * r + 1 > min(H, W):
        raise ValueError(f"image {H}x{W} is too small for a scar; use images of at least 16x16")
    cy, cx, sy, sx = (int(rng.integers(r, n - r)) for n in (H, W, H, W))  # target and source centres
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")  # (2r+1, 2r+1)
    u = math.cos(theta) * dx + math.sin(theta) * dy  # coordinates in the scar's own frame
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    inside = (u.abs() <= w / 2) & (v.abs() <= length / 2)
    ty, tx = (cy + dy)[inside], (cx + dx)[inside]
    src = image[:, sy + v[inside].round().long(), sx + u[inside].round().long()]  # (3, n)
    out[:, ty, tx] = (src * float(rng.uniform(0.8, 1.2))).clamp(0.0, 1.0)
    mask[ty, tx] = 1.0


def synthesize_anomalies(
    images: torch.Tensor, rng: np.random.Generator | torch.Generator | int, p: float = 0.75,
    sources: torch.Tensor | None = None, kinds: Sequence[str] = ANOMALY_KINDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put one synthetic anomaly into each image with probability ``p`` (CutPaste-like, see module docstring).

    Parameters
    ----------
    images : (B, 3, H, W) float tensor in [0, 1]
        Normal training images of one class (not normalised).
    rng : numpy Generator, torch Generator or int
        All randomness is drawn from it: the same generator state gives the same output.
    p : float
        Probability that an image gets an anomaly (paper: 0.75).
    sources : (N, 3, H, W) tensor, optional
        Other training images of the class to blend from; default: another image of the batch.
    kinds : sequence of {"rectangle", "circle", "scar"}
        Kinds drawn uniformly.

    Returns
    -------
    augmented : (B, 3, H, W) tensor
        Equal to ``images`` wherever ``masks`` is 0.
    masks : (B, 1, H, W) float tensor in {0, 1}
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0 or any(k not in ANOMALY_KINDS for k in kinds) or not kinds:
        raise ValueError(f"need 0 <= p <= 1 and kinds from {ANOMALY_KINDS}; got p={p}, kinds={list(kinds)}")
    gen = _as_rng(rng)
    B = images.shape[0]
    out, masks = images.clone(), images.new_zeros(B, 1, *images.shape[-2:])
    for b in range(B):
        if gen.random() >= p:
            continue
        kind = kinds[int(gen.integers(len(kinds)))]
        if kind == "scar":
            _scar(out[b], masks[b, 0], images[b], gen)
            continue
        if sources is not None:
            src = sources[int(gen.integers(len(sources)))]
        else:
            src = images[(b + 1 + int(gen.integers(B - 1))) % B] if B > 1 else images[b]
        _blend(out[b], masks[b, 0], src, kind, gen)
    return out, masks


def sample_at_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest sampling of a full-resolution map ``(B, k, H, W)`` at a feature grid → ``(B, k, h, w)``.

    Used for the α/β maps and for the masks: a feature position is anomalous where its sample is > 0,
    ``m = (sample_at_grid(masks, (h, w)) > 0).float()``.
    """
    return F.interpolate(x, size=size, mode="nearest")  # (B, k, h, w)


# ------------------------------------------------------------------------------------- variance network + flows


class VarianceNet(nn.Module):
    r"""Inverse-gamma statistic network: normalised image ``(B, 3, H, W)`` → ``(log α, log β)``, each
    ``(B, 1, H, W)``.

    Conv3×3 3→w → ReLU, residual [3 × (Conv3×3 → BN → ReLU)], Conv3×3 w→2; :math:`\log\alpha` clamped to
    :math:`[\ln 10^{-8}, \ln 10^4]`. Width 64: 1,792 + 3·(36,928 + 128) + 1,154 = 114,114 parameters.
    """

    def __init__(self, width: int = 64, n_blocks: int = 3, prior: tuple[float, float] = (59.5, 6.05)) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(n_blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 2, 3, padding=1)
        with torch.no_grad():  # start exactly at the prior everywhere: mode β0/(α0+1) = 0.1
            self.out.weight.zero_()
            self.out.bias.copy_(torch.tensor([math.log(prior[0]), math.log(prior[1])]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.inp(images))  # (B, w, H, W)
        o = self.out(h + self.blocks(h))  # (B, 2, H, W)
        return o[:, :1].clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX), o[:, 1:]


def ig_mode_variance(log_alpha: torch.Tensor, log_beta: torch.Tensor, max_variance: float = 5.0) -> torch.Tensor:
    r"""Mode of :math:`IG(\alpha, \beta)`, :math:`\beta/(\alpha+1)`, clamped to ``≤ max_variance`` (any shape)."""
    return (log_beta.exp() / (log_alpha.exp() + 1.0)).clamp(max=max_variance)


def subnet_fc(c_in: int, c_out: int) -> nn.Module:
    """CFLOW-AD's coupling subnet: Linear c_in → 2 c_in → ReLU → Linear → c_out."""
    return nn.Sequential(nn.Linear(c_in, 2 * c_in), nn.ReLU(), nn.Linear(2 * c_in, c_out))


def build_fibre_flow(channels: int, cond_channels: int = 128, n_blocks: int = 8, clamp: float = CLAMP,
                     permute_soft: bool = True) -> Ff.SequenceINN:
    """Conditional 1-D flow over fibres: ``flow(x, c=[pe])`` with ``x`` ``(N, C)`` and ``pe`` ``(N, P)`` returns
    ``(z, log_det)``, ``z`` ``(N, C)`` and ``log_det`` ``(N,)``.

    Soft permutations are random rotations drawn from numpy's global RNG (slow above ~1000 channels:
    ``permute_soft=False`` gives hard permutations with the same parameter count). FrEIA 0.2 stores them in
    float32, so they are orthogonal (and log-det-free, as FrEIA assumes) only to about 1e-7, also in float64.
    """
    flow = Ff.SequenceINN(channels)
    for _ in range(n_blocks):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(cond_channels,), subnet_constructor=subnet_fc,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=permute_soft)
    return flow


class SANFlow(nn.Module):
    """One fibre flow per backbone layer, plus the variance network.

    Parameters
    ----------
    channels : sequence of int
        Channels per layer, fine → coarse (WRN50-2 layers 2–4: 512, 1024, 2048).
    cond_channels : int
        Positional-encoding channels (CFLOW-AD: 128; the authors' SANFlow code: 512).
    n_blocks, clamp, seed
        Blocks per flow (8), clamp (1.9), seed of the permutations.
    permute_soft : bool, optional
        Soft (random orthogonal, CFLOW-AD's) or hard permutations; ``None``: soft for layers of at most
        :data:`SOFT_PERMUTATION_MAX_CHANNELS` channels, hard above (FrEIA draws a soft one with scipy's
        ``special_ortho_group``, O(C³): over a minute per model for WRN50-2's 2048-channel layer, at every build).
    """

    def __init__(self, channels: Sequence[int], cond_channels: int = 128, n_blocks: int = 8, clamp: float = CLAMP,
                 permute_soft: bool | None = None, seed: int = 0) -> None:
        super().__init__()
        if len(channels) == 0 or any(c < 2 for c in channels):
            raise ValueError(f"channels must list >= 2 channels per layer, got {list(channels)}")
        positional_encoding_2d(cond_channels, 1, 1)  # validates cond_channels
        self.channels, self.cond_channels = list(channels), cond_channels
        with numpy_global_seed(seed):
            self.flows = nn.ModuleList(
                build_fibre_flow(c, cond_channels, n_blocks, clamp,
                                 c <= SOFT_PERMUTATION_MAX_CHANNELS if permute_soft is None else permute_soft)
                                       for c in channels)
        self.variance_net = VarianceNet()

    def _fibres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, h, w = x.shape
        pe = positional_encoding_2d(self.cond_channels, h, w).to(x)  # (P, h, w)
        cond = pe.permute(1, 2, 0).reshape(1, h * w, -1).expand(B, -1, -1).reshape(B * h * w, -1)  # (B·h·w, P)
        return x.permute(0, 2, 3, 1).reshape(B * h * w, C), cond  # (B·h·w, C)

    def flow_layer(self, layer: int, x: torch.Tensor, rev: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (latents if ``rev``) ``(B, C, h, w)`` → ``(B, C, h, w)`` and per-position log-det ``(B, h, w)``."""
        if x.ndim != 4 or x.shape[1] != self.channels[layer]:
            raise ValueError(f"layer {layer} expects (B, {self.channels[layer]}, h, w), got {tuple(x.shape)}")
        B, C, h, w = x.shape
        fibres, cond = self._fibres(x)
        z, log_det = self.flows[layer](fibres, c=[cond], rev=rev)  # (B·h·w, C), (B·h·w,)
        return z.view(B, h, w, C).permute(0, 3, 1, 2), log_det.view(B, h, w)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features (list of ``(B, C_l, h_l, w_l)``) → (latents, same shapes; log-dets, list of ``(B, h_l, w_l)``)."""
        if len(features) != len(self.flows):
            raise ValueError(f"got {len(features)} feature maps for {len(self.flows)} flows")
        out = [self.flow_layer(i, f) for i, f in enumerate(features)]
        return [z for z, _ in out], [ld for _, ld in out]

    def statistics(self, images: torch.Tensor,
                   sizes: Sequence[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised images ``(B, 3, H, W)`` → per layer ``(log α, log β)``, each ``(B, h_l, w_l)``.

        One variance-net pass at full resolution, sampled nearest at each layer's grid.
        """
        log_ab = torch.cat(self.variance_net(images), dim=1)  # (B, 2, H, W)
        return [tuple(sample_at_grid(log_ab, tuple(s)).unbind(dim=1)) for s in sizes]  # each (B, h, w)


# ---------------------------------------------------------------------------------------------- losses, scores


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


def split_bce(log_pn: torch.Tensor, log_pa: torch.Tensor, m: torch.Tensor,
              double_softmax: bool = False) -> torch.Tensor:
    r"""Cross-entropy of :math:`s = p_n / (p_n + p_a) = \operatorname{sigmoid}(\log p_n - \log p_a)` against
    :math:`1 - m`, elementwise (any equal shapes). ``double_softmax=True``: the authors' cross-entropy applied to
    ``softmax([log p_n, log p_a])`` (already probabilities), i.e. a second softmax."""
    if double_softmax:
        probs = torch.softmax(torch.stack([log_pn, log_pa], dim=-1), dim=-1)  # (..., 2): [p(normal), p(anomalous)]
        return F.cross_entropy(probs.reshape(-1, 2), m.reshape(-1).long(), reduction="none").view_as(m)
    return F.binary_cross_entropy_with_logits(log_pn - log_pa, 1.0 - m, reduction="none")


@dataclass(frozen=True)
class SANFlowLossConfig:
    """Loss settings; defaults are the library's fixed form (module docstring), :meth:`authors` keeps the quirks."""

    bce_weight: float = 0.2  #: weight of the BCE (paper)
    prior_alpha: float = 59.5  #: IG prior, mode β0/(α0+1) = 0.1 (paper)
    prior_beta: float = 6.05
    max_variance: float = 5.0  #: clamp of the mode variance (authors' code)
    objective: str = "sum"  #: "sum": (NLL + KL + w·BCE)/C; "logsigmoid": the authors' -logsigmoid(...)
    log_beta_coefficient: str = "half"  #: "half": C/2 (exact); "full": the authors' C
    double_softmax: bool = False  #: True: the authors' cross-entropy on softmaxed values

    def __post_init__(self) -> None:
        if self.objective not in ("sum", "logsigmoid") or self.log_beta_coefficient not in ("half", "full"):
            raise ValueError(f"objective must be 'sum' or 'logsigmoid' and log_beta_coefficient 'half' or 'full'; "
                             f"got {self.objective!r}, {self.log_beta_coefficient!r}")

    @classmethod
    def authors(cls, **changes) -> "SANFlowLossConfig":
        """The authors' form: -logsigmoid objective, C on log β - ψ(α), double softmax."""
        return replace(cls(objective="logsigmoid", log_beta_coefficient="full", double_softmax=True), **changes)


class SANFlowLossTerms(NamedTuple):
    """Per-position terms of the loss, each ``(N,)``."""

    log_p: torch.Tensor  #: (1-m)·E_IG[log p_n] + m·log p_a
    kl: torch.Tensor  #: KL(IG(α, β) ‖ IG(α0, β0))
    bce: torch.Tensor  #: cross-entropy of s(z) against 1 - m


def sanflow_loss_terms(z: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor, m: torch.Tensor,
                       config: SANFlowLossConfig = SANFlowLossConfig()) -> SANFlowLossTerms:
    """Loss terms for fibres ``z`` ``(N, C)`` with ``log_alpha``, ``log_beta``, mask ``m`` ``(N,)`` in {0, 1}."""
    C = z.shape[1]
    var = ig_mode_variance(log_alpha, log_beta, config.max_variance)  # (N,)
    coef = 0.5 * C if config.log_beta_coefficient == "half" else float(C)
    log_pn_expected = expected_normal_log_likelihood(z, log_alpha, log_beta, coef)
    log_pa = gaussian_log_likelihood(z, var.detach(), mean=1.0)  # anomalous branch: mode variance, detached
    log_pn = gaussian_log_likelihood(z, var)  # normal branch with the mode variance, for s(z)
    return SANFlowLossTerms(
        (1.0 - m) * log_pn_expected + m * log_pa,
        ig_kl(log_alpha, log_beta, config.prior_alpha, config.prior_beta),
        split_bce(log_pn, log_pa, m, config.double_softmax),
    )


def sanflow_loss(z: torch.Tensor, log_det: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor,
                 m: torch.Tensor, config: SANFlowLossConfig = SANFlowLossConfig()) -> torch.Tensor:
    r"""Scalar loss, mean over positions. ``z`` ``(N, C)``; ``log_det``, ``log_alpha``, ``log_beta``, ``m`` ``(N,)``.

    ``"sum"``: :math:`[-(\log p + \log|\det J|) + KL + w\,BCE]/C`; ``"logsigmoid"``:
    :math:`-\operatorname{logsigmoid}((\log p + \log|\det J| - KL - w\,CE)/C)`.
    """
    if z.ndim != 2 or any(t.shape != z.shape[:1] for t in (log_det, log_alpha, log_beta, m)):
        raise ValueError(f"expected fibres z (N, C) and (N,) log_det/log_alpha/log_beta/m; got {tuple(z.shape)}, "
                         f"{[tuple(t.shape) for t in (log_det, log_alpha, log_beta, m)]}")
    C = z.shape[1]
    t = sanflow_loss_terms(z, log_alpha, log_beta, m, config)
    if config.objective == "sum":
        return ((-(t.log_p + log_det) + t.kl + config.bce_weight * t.bce) / C).mean()
    return -F.logsigmoid((t.log_p + log_det - t.kl - config.bce_weight * t.bce) / C).mean()


def sanflow_log_prob(z: torch.Tensor, log_det: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    r"""Score input :math:`(\log \mathcal N(z; 0, \sigma^2 I) + \log|\det J|)/C`: ``z`` ``(B, C, h, w)``,
    ``log_det`` and ``variance`` ``(B, h, w)`` → ``(B, h, w)`` (higher = more normal)."""
    return (gaussian_log_likelihood(z, variance) + log_det) / z.shape[1]


def sanflow_anomaly_maps(log_probs: Sequence[torch.Tensor], out_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """CFLOW-AD aggregation over a whole test set: per layer ``exp(log p - max over the set)``, bilinear upsampling
    (corners aligned, as the authors), sum over layers, ``A = max - map``.

    log_probs: list (one per layer) of ``(N, h_l, w_l)`` → maps ``(N, 1, S, S)`` float64 and image scores ``(N,)``
    (max of each map). The scores depend on the set through the per-layer maxima: score the whole test set at once.
    """
    if len(log_probs) == 0 or any(lp.ndim != 3 for lp in log_probs):
        raise ValueError(f"log_probs must be a non-empty list of (N, h, w) tensors, got "
                         f"{[tuple(lp.shape) for lp in log_probs]}")
    total = 0.0
    for lp in log_probs:
        prob = torch.exp(lp.double() - lp.double().max())[:, None]  # (N, 1, h, w) in (0, 1]
        total = total + F.interpolate(prob, size=(out_size, out_size), mode="bilinear", align_corners=True)
    maps = total.max() - total  # (N, 1, S, S)
    return maps, maps.flatten(1).amax(dim=1)
