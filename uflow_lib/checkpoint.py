"""Checkpoints: save atomically, load back into a ready model (extractor rebuilt from the saved config)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .features import FeatureExtractor, build_extractor

__all__ = ["seed_everything", "pick_device", "build_extractor_for", "build_model", "save_checkpoint",
           "load_checkpoint", "load_trained"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_extractor_for(cfg: TrainConfig) -> FeatureExtractor:
    """The frozen extractor a config names, with the backbone stages its method reads."""
    from .methods import get_method

    indices = get_method(cfg.method).out_indices(cfg.backbone)
    return build_extractor(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights, out_indices=indices)


def build_model(cfg: TrainConfig, extractor: FeatureExtractor) -> torch.nn.Module:
    """A fresh model of ``cfg.method`` (e.g. :class:`~uflow_lib.model.UFlow`) for the extractor's features at
    ``cfg.input_size``, after the method's :meth:`~uflow_lib.methods.FlowMethod.prepare` (e.g. MSFlow's pooling)."""
    from .methods import get_method

    cfg = cfg.resolved()
    method = get_method(cfg.method)
    raw = [torch.zeros(1, c, s, s) for c, s in zip(extractor.channels, extractor.feature_sizes(cfg.input_size))]
    sizes = [f.shape[-1] for f in method.prepare(raw)]  # spatial size of each prepared map
    return method.build(cfg, extractor.channels, sizes)


def save_checkpoint(path: str | Path, **content) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a disconnect never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train first: python -m uflow_lib train ... --out DIR")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trained(
    path: str | Path, device: str | torch.device = "cpu", weights: str | None = None
) -> tuple[TrainConfig, FeatureExtractor, torch.nn.Module, dict]:
    """Load a checkpoint → ``(config, extractor, model, checkpoint dict)``, both modules on ``device``, eval mode.

    ``weights`` overrides the saved weights file path (e.g. the checkpoint was made on another machine).
    """
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"]).resolved()
    if weights is not None:
        cfg.weights = weights
    extractor = build_extractor_for(cfg).to(device)
    model = build_model(cfg, extractor)
    model.load_state_dict(ckpt["model"])
    return cfg, extractor, model.to(device).eval(), ckpt
