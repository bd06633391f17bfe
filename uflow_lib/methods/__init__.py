"""The methods, one file each: the flows U-Flow (:mod:`.uflow`), MSFlow (:mod:`.msflow`), SANFlow (:mod:`.sanflow`),
and the baselines they are measured against, PatchCore (:mod:`.patchcore`) and PaDiM (:mod:`.padim`).

This package's front is what the rest of the library asks of a method, always by the method's name read from
a config or a checkpoint, or from the model itself (:func:`method_of`), never by a default:

- :func:`get_method` — the :class:`~uflow_lib.methods.base.FlowMethod` of a name;
- :func:`resolve` — a config with the method's recipe filled in; :func:`architecture` — what the weights depend on;
- :func:`build_extractor_for`, :func:`build_model` — the frozen extractor and a fresh model for a config;
- :func:`ci_config` — the book's CPU configuration of a method on the generated dataset.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..features import FeatureExtractor, build_extractor
from .base import FlowMethod, Recipe, StatisticalMethod
from .msflow import MSFlowMethod
from .padim import PaDiMMethod
from .patchcore import PatchCoreMethod
from .sanflow import SANFlowMethod
from .uflow import UFlowMethod

__all__ = ["METHODS", "FLOWS", "BASELINES", "FlowMethod", "StatisticalMethod", "Recipe", "get_method", "method_of", "resolve", "architecture",
           "build_extractor_for", "build_model", "ci_config"]

_REGISTRY: dict[str, FlowMethod] = {m.name: m for m in (UFlowMethod(), MSFlowMethod(), SANFlowMethod(),
                                                         PatchCoreMethod(), PaDiMMethod())}
#: The names ``--method`` accepts.
METHODS: tuple[str, ...] = tuple(_REGISTRY)
#: The normalizing flows (trained by gradient descent; the NFA applies) and the fitted baselines.
FLOWS: tuple[str, ...] = tuple(n for n, m in _REGISTRY.items() if m.trainable)
BASELINES: tuple[str, ...] = tuple(n for n, m in _REGISTRY.items() if not m.trainable)


def get_method(name: str) -> FlowMethod:
    """The :class:`FlowMethod` called ``name`` (one of :data:`METHODS`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return _REGISTRY[name]


def method_of(model: torch.nn.Module) -> FlowMethod:
    """The method whose model ``model`` is (recognised by its class)."""
    for method in _REGISTRY.values():
        if isinstance(model, method.model_class):
            return method
    raise TypeError(f"{type(model).__name__} is not the model of any method ({', '.join(METHODS)}); build one with "
                    f"uflow_lib.methods.build_model or load one with uflow_lib.checkpoint.load_trained")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` with every unset field filled from its method's recipe and its backbone."""
    return get_method(cfg.method).resolve(cfg)


def architecture(cfg: TrainConfig) -> dict:
    """The settings ``cfg``'s model weights depend on (a resumed run must match them)."""
    cfg = resolve(cfg)
    return get_method(cfg.method).architecture(cfg)


def build_extractor_for(cfg: TrainConfig) -> FeatureExtractor:
    """The frozen extractor a config names, with the backbone stages its method reads."""
    indices = get_method(cfg.method).stages(cfg)
    extra = {} if cfg.cait_blocks is None else dict(cait_blocks=tuple(cfg.cait_blocks))
    return build_extractor(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights, out_indices=indices, **extra)


def build_model(cfg: TrainConfig, extractor: FeatureExtractor) -> torch.nn.Module:
    """A fresh model of ``cfg.method`` for the extractor's features at the input size, after the method's
    :meth:`~uflow_lib.methods.base.FlowMethod.prepare` (e.g. MSFlow's pooling)."""
    cfg = resolve(cfg)
    method = get_method(cfg.method)
    raw = [torch.zeros(1, c, s, s) for c, s in zip(extractor.channels, extractor.feature_sizes(cfg.input_size))]
    sizes = [f.shape[-1] for f in method.prepare(raw)]  # spatial size of each prepared map
    return method.build(cfg, extractor.channels, sizes)


def ci_config(data: str, out: str, weights: str | None = None, category: str = "texture", method: str = "uflow",
              **overrides) -> TrainConfig:
    """The book's CPU configuration on the generated dataset: MobileNetV2 at 256 and the method's CPU recipe
    (:attr:`~uflow_lib.methods.base.FlowMethod.cpu_recipe`).

    ``weights``: the offline MobileNetV2 file; ``None`` → random backbone weights (much weaker features).
    """
    m = get_method(method)
    r = m.cpu_recipe
    base = dict(data=str(data), category=category, out=str(out), method=method, backbone="mobilenetv2",
                weights=None if weights is None else str(weights), pretrained=weights is not None, epochs=r.epochs,
                batch_size=r.batch_size, lr=r.lr, device="cpu", **m.cpu_overrides)
    base.update(overrides)
    return TrainConfig(**base)
