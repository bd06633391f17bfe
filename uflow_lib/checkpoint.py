"""Checkpoints: save atomically, load back, and load back into a ready model (extractor rebuilt from the config)."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .features import FeatureExtractor
from .methods import build_extractor_for, build_model, resolve
from .validation import CheckpointError, why_unreadable

__all__ = ["save_checkpoint", "load_checkpoint", "load_trained"]


def save_checkpoint(path: str | Path, **content) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a disconnect never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, *, training: bool = False) -> dict:
    """The dict a checkpoint holds (``config``, ``model``, ``epoch``, ...), on the CPU, loaded with ``weights_only``.

    A folder, a file that does not load (truncated, text, pickled objects), or a dict without ``config`` and
    ``model`` raises a :class:`~uflow_lib.validation.CheckpointError` saying why. ``training=True`` also requires
    what resuming needs (``optimizer``, ``epoch``, ``history``: a ``last.pt``).
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "last.pt"
        hint = f"pass {inside}" if inside.is_file() else "pass the last.pt inside a training --out folder"
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train first: python -m uflow_lib train ... --out DIR")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        raise CheckpointError(f"cannot read checkpoint {path}: {why_unreadable(path, err)}; use another checkpoint, "
                              f"or train again") from err
    need = ("config", "model") + (("optimizer", "epoch", "history") if training else ())
    have = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else []
    missing = [k for k in need if k not in have]
    if missing or not isinstance(ckpt.get("config"), dict):
        held = f"a dict of {', '.join(have[:5])}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"{path} is not a uflow_lib {'training ' if training else ''}checkpoint: it has no "
                              f"{' / '.join(missing or ['config dict'])} (it holds {held}); pass a last.pt "
                              f"written by train or reproduce")
    return ckpt


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
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:  # a config that does not describe the saved weights
        expected, saved = model.state_dict(), ckpt["model"]
        missing, unexpected = [k for k in expected if k not in saved], [k for k in saved if k not in expected]
        reshaped = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
        raise CheckpointError(f"checkpoint {path}: the saved model weights do not fit the model its config "
                              f"describes ({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of "
                              f"other shapes, e.g. {(missing + unexpected + reshaped)[:2]}); the file was edited or "
                              f"mixed up") from err
    return cfg, extractor, model.to(device).eval(), ckpt
