"""Checkpoints: save atomically, load back, and load back into a ready model (extractor rebuilt from the config)."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .features import FeatureExtractor
from .methods import build_extractor_for, build_model, resolve

__all__ = ["save_checkpoint", "load_checkpoint", "load_trained"]


def save_checkpoint(path: str | Path, **content) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a disconnect never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    """The dict a checkpoint holds (``config``, ``model``, ``epoch``, ...), on the CPU, loaded with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train first: python -m uflow_lib train ... --out DIR")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trained(
    path: str | Path, device: str | torch.device = "cpu", weights: str | None = None
) -> tuple[TrainConfig, FeatureExtractor, torch.nn.Module, dict]:
    """Load a checkpoint → ``(config, extractor, model, checkpoint dict)``, both modules on ``device``, eval mode.

    The model is of the method the checkpoint names. ``weights`` overrides the saved weights file path (e.g. the
    checkpoint was made on another machine). A run with random backbone weights (``pretrained=False``, no file)
    stores no backbone: it is rebuilt from the run's seed exactly as training built it, whatever the caller's
    random state (which is left untouched).
    """
    ckpt = load_checkpoint(path)
    cfg = resolve(TrainConfig.from_dict(ckpt["config"]))
    if weights is not None:
        cfg.weights = weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # training seeds, then builds the extractor first (uflow_lib.training)
        extractor = build_extractor_for(cfg).to(device)
        model = build_model(cfg, extractor)
    model.load_state_dict(ckpt["model"])
    return cfg, extractor, model.to(device).eval(), ckpt
