r"""What a method is to the rest of the library: :class:`FlowMethod`, the few things that differ between methods.

Data, backbones, the feature cache, the training loop, checkpoints, metrics and the NFA are shared code; a
method says only what is its own (one file per method in this package, book chapters 3 and 7):

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

A method's **recipe** (:class:`Recipe`) gives the epochs, batch size and learning rate a run uses when the user
leaves them unset (:meth:`FlowMethod.resolve`): its paper's, except with MobileNetV2 (the CPU path), where the
flows use a setting chosen on a validation set of held-out training images and synthetic anomalies, never the test
set (:attr:`FlowMethod.validated_recipe`, ``benchmarks/select_recipes.py``); its CPU recipe the book's CI mode. Learning-rate schedules
are computed from the (fractional) epoch at every step, stateless, so a resumed run follows the same schedule
as an uninterrupted one; a method's schedule is stretched to the run's number of epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_INPUT_SIZE, TrainConfig

__all__ = ["Recipe", "FlowMethod", "StatisticalMethod", "Batch", "check_cnn_backbone", "VALIDATED_BACKBONE"]

#: The backbone whose defaults were chosen on a validation set (the CPU path); other CNNs keep the papers' recipes
VALIDATED_BACKBONE = "mobilenetv2"

#: A training batch: ``{"features": list of (B, C_s, h_s, w_s)}`` for cached methods, or
#: ``{"images": (B, 3, S, S) in [0, 1], "rng": numpy Generator}`` for methods that augment images (SANFlow).
Batch = dict


@dataclass(frozen=True)
class Recipe:
    """Training settings a method uses where the user gives none."""

    epochs: int
    batch_size: int
    lr: float


def check_cnn_backbone(method: str, backbone: str) -> None:
    """Refuse MS-CaiT for methods defined on CNN stages (strides 4–32)."""
    if backbone == "mcait":
        raise ValueError(f"{method} is defined on CNN stages (strides 4–32); MS-CaiT gives only two transformer "
                         f"maps. Use --backbone mobilenetv2, resnet18 or wide_resnet50_2 with --method {method}")


class FlowMethod:
    """What differs between the methods. Subclasses override what they change."""

    name: str = ""
    #: the class of the method's model: how a model is recognised (:func:`uflow_lib.methods.method_of`)
    model_class: type[nn.Module] = nn.Module
    #: features of an image are the same at every epoch, so they are computed once (feature_cache)
    cacheable: bool = True
    #: clip of the gradient's global norm (None: no clipping)
    grad_clip: float | None = None
    #: the CPU setting on the generated dataset with MobileNetV2 (the book's CI mode). A teaching setting, picked
    #: so that the chapters train in CI time while their metrics on the generated test set were being looked
    #: at: not chosen on validation, and no level the book quotes for a method comes from it
    cpu_recipe: Recipe = Recipe(30, 8, 1e-3)
    #: the default with :data:`VALIDATED_BACKBONE`: chosen on bottle's validation set within about 10 minutes of
    #: one CPU thread (benchmarks/results/recipe_validation.md); None: the paper's recipe with every backbone
    validated_recipe: Recipe | None = None
    #: other fields of that CPU configuration (e.g. SANFlow's smaller variance-network input)
    cpu_overrides: dict = {}
    #: learnt by gradient descent over epochs; False: :meth:`fit` is the whole training (the baselines)
    trainable: bool = True
    #: :meth:`infer` returns latents that are N(0, I) under the null hypothesis, so mean z² and the NFA apply
    has_latents: bool = True

    # ---------------------------------------------------------------------------------------- settings
    def recipe(self, category: str) -> Recipe:
        """Epochs, batch size and learning rate of the method's own recipe for ``category``."""
        raise NotImplementedError

    def default_recipe(self, cfg: TrainConfig) -> Recipe:
        """The recipe unset fields come from: :attr:`validated_recipe` with :data:`VALIDATED_BACKBONE`, else the
        paper's (:meth:`recipe`)."""
        if cfg.backbone == VALIDATED_BACKBONE and self.validated_recipe is not None:
            return self.validated_recipe
        return self.recipe(cfg.category)

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """A copy of ``cfg`` with every unset (``None``) field filled from the recipe and the backbone."""
        r = self.default_recipe(cfg)
        return replace(
            cfg,
            input_size=cfg.input_size if cfg.input_size is not None else DEFAULT_INPUT_SIZE.get(cfg.backbone, 256),
            epochs=cfg.epochs if cfg.epochs is not None else r.epochs,
            batch_size=cfg.batch_size if cfg.batch_size is not None else r.batch_size,
            lr=cfg.lr if cfg.lr is not None else r.lr,
            norm="identity",
        )

    def architecture(self, cfg: TrainConfig) -> dict:
        """The settings of a resolved ``cfg`` that the model's weights depend on (a resumed run must match them)."""
        arch = dict(method=cfg.method, backbone=cfg.backbone, input_size=cfg.input_size, seed=cfg.seed)
        if cfg.cait_blocks is not None:  # features of a shallower MS-CaiT are other features
            arch["cait_blocks"] = list(cfg.cait_blocks)
        return arch

    # ----------------------------------------------------------------------------------- model, training
    def out_indices(self, backbone: str) -> tuple[int, ...] | None:
        """Backbone stages (timm indices) the method reads; None: the backbone's default (U-Flow's)."""
        return None

    def stages(self, cfg: TrainConfig) -> tuple[int, ...] | None:
        """The stages a config reads: :meth:`out_indices` of its backbone unless an option of the method changes
        them (U-Flow's ``strides``)."""
        return self.out_indices(cfg.backbone)

    def prepare(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps → the model's input (list of ``(B, C_s, h_s, w_s)``); identity by default."""
        return list(features)

    def build(self, cfg: TrainConfig, channels: Sequence[int], sizes: Sequence[int]) -> nn.Module:
        """A fresh model for prepared features of ``channels`` × ``sizes``², fine → coarse."""
        raise NotImplementedError

    def fit(self, model: nn.Module, features: Sequence[torch.Tensor], progress: bool = False) -> None:
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

    # ------------------------------------------------------------------------------------------ scoring
    def latent_sides(self, model: nn.Module) -> list[int]:
        """Side of each NFA latent map of ``model``, fine → coarse."""
        return [w for _, w in model.sizes]

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


class StatisticalMethod(FlowMethod):
    """A baseline that is fitted, not trained: one pass over the training features (:meth:`fit`) makes the
    model (a memory bank, Gaussian statistics). It has no epochs, no learning rate and no latents, so the NFA and
    mean z² do not apply to it."""

    trainable = False
    has_latents = False
    cpu_recipe = Recipe(1, 8, 0.0)

    def recipe(self, category: str) -> Recipe:
        return self.cpu_recipe

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        for option, value, unset in (("--epochs", cfg.epochs, (None, 1)), ("--lr", cfg.lr, (None, 0.0)),
                                     ("--eval-every", cfg.eval_every, (0,))):
            if value not in unset:
                from ..validation import UserInputError
                raise UserInputError(f"{option} {value:g} does not apply to {self.name}: it is fitted in one pass over "
                                     f"the training images, not trained; drop {option}")
        return super().resolve(cfg)

    def optimizer(self, cfg: TrainConfig, model: nn.Module) -> None:
        return None

    def latent_sides(self, model: nn.Module) -> list[int]:
        return []
