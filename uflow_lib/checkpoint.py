"""Checkpoints: save atomically, load back into a ready model (extractor rebuilt from the saved config)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .features import FeatureExtractor, build_extractor
from .model import UFlow

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
    """The frozen extractor a config names."""
    return build_extractor(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)


def build_model(cfg: TrainConfig, extractor: FeatureExtractor) -> UFlow:
    """A fresh :class:`~uflow_lib.model.UFlow` for the extractor's feature shapes at ``cfg.input_size``."""
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    return UFlow(extractor.channels, extractor.feature_sizes(cfg.input_size), cfg.flow_steps, cfg.norm, cfg.seed)


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
) -> tuple[TrainConfig, FeatureExtractor, UFlow, dict]:
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
