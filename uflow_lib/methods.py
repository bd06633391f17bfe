r"""One interface for the three flow methods, so training, evaluation, prediction and the reproduction table
take ``--method uflow|msflow|sanflow`` (book chapter 7).

A :class:`FlowMethod` says everything that differs between the methods; everything else (data, backbones,
feature cache, training loop, checkpoints, metrics, NFA) is shared code:

==================  =======================  ===========================  ===================================
                    U-Flow (the paper)       MSFlow                       SANFlow
==================  =======================  ===========================  ===================================
backbone stages     the backbone's own       strides 4/8/16, each         strides 8/16/32
                    (MobileNetV2: 8/16)      ``AvgPool2d(3, 2, 1)``
features cached     yes                      yes (pooled)                 no: synthetic anomalies change the
                                                                          images at every step
loss                per-sample NLL           per-sample NLL               split-base NLL + KL + 0.2 BCE
optimiser           Adam, L2 1e-5            Adam, warm-up + steps,       Adam, warm-up + cosine
                                             grad-norm clip 2
pixel map           −log mean_s up(p_s)      sum map A₊ (AUPRO on the     CFLOW-AD: exp(log p − set max),
                                             product map)                 summed over layers
image score         max of the map           top-3 % mean of A×           max of the map
NFA latents         z                        z                            z / σ (the model's own N(0, σ²))
==================  =======================  ===========================  ===================================

Learning-rate schedules are computed from the (fractional) epoch at every step, stateless, so a resumed run
follows the same schedule as an uninterrupted one. A method's schedule is stretched to the run's number of
epochs (MSFlow's milestones 70 and 90 of 100 become 70 % and 90 % of the run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import METHODS, TrainConfig
from .model import UFlow, nll_loss
from .msflow import MSFlow, MSFlowTrainConfig, msflow_anomaly_maps, msflow_lr_lambda, pool_features
from .sanflow import (SANFlow, SANFlowLossConfig, ig_mode_variance, sample_at_grid, sanflow_anomaly_maps,
                      sanflow_log_prob, sanflow_loss, synthesize_anomalies)
from .scoring import anomaly_score_map, image_scores

__all__ = ["FlowMethod", "UFlowMethod", "MSFlowMethod", "SANFlowMethod", "get_method", "Batch"]

#: A training batch: ``{"features": list of (B, C_s, h_s, w_s)}`` for cached methods, or
#: ``{"images": (B, 3, S, S) in [0, 1], "rng": numpy Generator}`` for SANFlow.
Batch = dict


def _check_cnn(method: str, backbone: str) -> None:
    if backbone == "mcait":
        raise ValueError(f"{method} is defined on CNN stages (strides 4–32); MS-CaiT gives only two transformer "
                         f"maps. Use --backbone mobilenetv2, resnet18 or wide_resnet50_2 with --method {method}")


class FlowMethod:
    """What differs between the methods. Subclasses override what they change."""

    name: str = ""
    #: features of an image are the same at every epoch, so they are computed once (feature_cache)
    cacheable: bool = True
    #: clip of the gradient's global norm (None: no clipping)
    grad_clip: float | None = None

    def out_indices(self, backbone: str) -> tuple[int, ...] | None:
        """Backbone stages (timm indices) the method reads; None: the backbone's default (U-Flow's)."""
        return None

    def prepare(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps → the model's input (list of ``(B, C_s, h_s, w_s)``); identity by default."""
        return list(features)

    def build(self, cfg: TrainConfig, channels: Sequence[int], sizes: Sequence[int]) -> nn.Module:
        """A fresh model for prepared features of ``channels`` × ``sizes``², fine → coarse."""
        raise NotImplementedError

    def fit(self, model: nn.Module, features: Sequence[torch.Tensor]) -> None:
        """Anything fitted once on the prepared training features before training (default: nothing)."""

    def optimizer(self, cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def lr_factor(self, epoch: float, epochs: int) -> float:
        """Learning-rate multiplier at the fractional ``epoch`` of a run of ``epochs`` (default: constant 1)."""
        return 1.0

    def loss(self, model: nn.Module, extractor: nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of one batch."""
        raise NotImplementedError

    def dims(self, model: nn.Module) -> int:
        """What the loss is divided by to report it per dimension."""
        return 1

    def infer(self, model: nn.Module, extractor: nn.Module, images: torch.Tensor,
              out_size: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Images ``(B, 3, S, S)`` → (latents that are N(0, I) under the model's null hypothesis, list of
        ``(B, C_s, h_s, w_s)`` — what the NFA and mean z² read; per-image parts, each ``(B, ...)``, that
        :meth:`finalize` turns into maps once the whole set has been seen)."""
        raise NotImplementedError

    def finalize(self, parts: dict[str, np.ndarray], out_size: int) -> dict[str, np.ndarray]:
        """Parts of a whole set → ``score`` ``(N, S, S)`` (higher = more anomalous), ``image_score`` ``(N,)``
        and optionally ``score_pro`` ``(N, S, S)``, the map the method's paper computes AUPRO on."""
        return parts


class UFlowMethod(FlowMethod):
    """U-Flow (Tailanian et al.): :class:`~uflow_lib.model.UFlow` with the paper's per-category Adam + L2."""

    name = "uflow"

    def build(self, cfg, channels, sizes):
        torch.manual_seed(cfg.seed)
        return UFlow(channels, sizes, cfg.flow_steps, cfg.norm, cfg.seed)

    def fit(self, model, features):
        model.fit_normalisation(features)

    def optimizer(self, cfg, model):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(self, model, extractor, batch):
        z, log_det = model(batch["features"])
        return nll_loss(z, log_det)

    def dims(self, model):
        return sum(math.prod(s) for s in model.latent_shapes)

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        z, _ = model(extractor(images))
        z = [t.float().cpu() for t in z]
        s = anomaly_score_map(z, out_size)  # (B, 1, S, S) float64
        return z, {"score": s[:, 0].float(), "image_score": image_scores(s)}


class MSFlowMethod(FlowMethod):
    """MSFlow (Zhou et al.): :class:`~uflow_lib.msflow.MSFlow` on pooled strides 4/8/16, 2/5/8 blocks."""

    name = "msflow"
    grad_clip = MSFlowTrainConfig().grad_clip_norm

    def out_indices(self, backbone):
        _check_cnn(self.name, backbone)
        return (1, 2, 3)

    def prepare(self, features):
        return pool_features(features)

    def build(self, cfg, channels, sizes):
        torch.manual_seed(cfg.seed)
        blocks = (2, 5, 8)[: len(channels)]
        return MSFlow(channels, sizes, blocks=blocks, seed=cfg.seed)

    def lr_factor(self, epoch, epochs):
        recipe = MSFlowTrainConfig()
        return msflow_lr_lambda(epoch * recipe.epochs / epochs, recipe)  # the 100-epoch schedule, stretched

    def loss(self, model, extractor, batch):
        z, log_det = model(batch["features"])
        return nll_loss(z, log_det)

    def dims(self, model):
        return sum(c * h * w for c, (h, w) in zip(model.channels, model.sizes))

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        z, _ = model(self.prepare(extractor(images)))
        z = [t.float().cpu() for t in z]
        maps = msflow_anomaly_maps(z, out_size, MSFlowTrainConfig().top_k)
        return z, {"score": maps.sum_map[:, 0].float(), "score_pro": maps.product_score_map[:, 0].float(),
                   "image_score": maps.image_scores}


class SANFlowMethod(FlowMethod):
    """SANFlow (Kim et al.): fibre flows on strides 8/16/32, synthetic anomalies, inverse-gamma variances.

    One optimiser step on the sum of the layers' losses (the authors step once per layer; the flows share no
    parameters, so only the variance network sees a different update). Loss: the library's
    :class:`~uflow_lib.sanflow.SANFlowLossConfig` (the authors' quirks fixed, see :mod:`uflow_lib.sanflow`).
    """

    name = "sanflow"
    cacheable = False
    loss_config = SANFlowLossConfig()

    def out_indices(self, backbone):
        _check_cnn(self.name, backbone)
        return (2, 3, 4)

    def build(self, cfg, channels, sizes):
        torch.manual_seed(cfg.seed)
        model = SANFlow(channels, seed=cfg.seed)
        model.sizes = [(s, s) for s in sizes]  # feature grid per layer (the flows themselves run at any size)
        model.variance_size = cfg.variance_size
        return model

    def lr_factor(self, epoch, epochs):
        """Linear warm-up from 0.1× over the first 10 % of the run, then cosine down to 10⁻³× (CFLOW-AD's)."""
        warm = 0.1 * epochs
        if epoch < warm:
            return 0.1 + 0.9 * epoch / warm
        t = (epoch - warm) / max(epochs - warm, 1e-9)
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    @staticmethod
    def _features_and_statistics(model: SANFlow, extractor: nn.Module, images: torch.Tensor):
        """Images ``(B, 3, S, S)`` → backbone maps (list of ``(B, C_l, h_l, w_l)``) and per layer ``(log α, log β)``,
        each ``(B, h_l, w_l)``, from one variance-net pass on the normalised image (resized to ``variance_size``)."""
        with torch.no_grad():
            feats = extractor(images)
        x = extractor.normalise(images)  # (B, 3, S, S)
        size = getattr(model, "variance_size", 0)
        if size and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # (B, 3, s, s)
        return feats, model.statistics(x, [f.shape[-2:] for f in feats])

    def loss(self, model, extractor, batch):
        images, masks = synthesize_anomalies(batch["images"], batch["rng"])  # (B, 3, S, S), (B, 1, S, S)
        feats, stats = self._features_and_statistics(model, extractor, images)
        total = 0.0
        for layer, (f, (log_a, log_b)) in enumerate(zip(feats, stats)):
            z, log_det = model.flow_layer(layer, f)  # (B, C, h, w), (B, h, w)
            m = (sample_at_grid(masks, tuple(f.shape[-2:])) > 0).float()[:, 0]  # (B, h, w)
            C = z.shape[1]
            total = total + sanflow_loss(z.permute(0, 2, 3, 1).reshape(-1, C), log_det.reshape(-1),
                                         log_a.reshape(-1), log_b.reshape(-1), m.reshape(-1), self.loss_config)
        return total

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        feats, stats = self._features_and_statistics(model, extractor, images)
        latents, parts = [], {}
        for layer, (f, (log_a, log_b)) in enumerate(zip(feats, stats)):
            z, log_det = model.flow_layer(layer, f)  # (B, C, h, w), (B, h, w)
            var = ig_mode_variance(log_a, log_b, self.loss_config.max_variance)  # (B, h, w)
            parts[f"log_prob{layer}"] = sanflow_log_prob(z, log_det, var).float().cpu()
            parts[f"variance{layer}"] = var.float().cpu()
            latents.append((z / var.sqrt()[:, None]).float().cpu())  # N(0, I) where the model says normal
        return latents, parts

    def finalize(self, parts, out_size):
        n_layers = sum(k.startswith("log_prob") for k in parts)
        log_probs = [torch.from_numpy(parts[f"log_prob{i}"]) for i in range(n_layers)]
        maps, scores = sanflow_anomaly_maps(log_probs, out_size)  # depend on the whole set's maxima
        return {**parts, "score": maps[:, 0].float().numpy(), "image_score": scores.numpy()}


_METHODS: dict[str, FlowMethod] = {m.name: m for m in (UFlowMethod(), MSFlowMethod(), SANFlowMethod())}
assert tuple(_METHODS) == METHODS


def get_method(name: str) -> FlowMethod:
    """The :class:`FlowMethod` called ``name`` (one of :data:`uflow_lib.config.METHODS`)."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    return _METHODS[name]
