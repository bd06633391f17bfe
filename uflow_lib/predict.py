"""Anomaly maps and NFA masks for arbitrary images, written as PNGs (``python -m uflow_lib predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_trained
from .data import IMAGE_EXTENSIONS, load_image
from .evaluation import EVAL_SIZE, default_nfa_scales, latent_sides
from .methods import get_method
from .nfa import tree_nfa
from .runtime import pick_device

__all__ = ["predict_files", "list_images"]


def list_images(path: str | Path) -> list[Path]:
    """One image file, or the sorted image files of a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither an image file nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}")
    return files


@torch.no_grad()
def predict_files(
    checkpoint: str | Path,
    inputs: str | Path,
    out_dir: str | Path,
    weights: str | None = None,
    device: str = "auto",
    nfa_scales: Sequence[int] | None = None,
) -> list[Path]:
    """Write ``<stem>_anomaly.png`` and ``<stem>_nfa_mask.png`` ({0, 255}) per image, for a model of any method.

    The anomaly PNG is the method's pixel score map scaled to 8-bit gray, 0 = the lowest and 255 = the highest
    score over all the given images (one scale for the whole set, so images can be compared). SANFlow's maps
    depend on the set they are computed on (CFLOW-AD's normalisation by the set maximum): pass a folder.
    """
    dev = pick_device(device)
    cfg, extractor, model, _ = load_trained(checkpoint, dev, weights)
    if nfa_scales is None:
        nfa_scales = default_nfa_scales(cfg.backbone, len(model.channels), latent_sides(model))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    method = get_method(cfg.method)
    files = list_images(inputs)
    parts: dict[str, list] = {}
    masks = []
    for f in files:
        image = load_image(f, cfg.input_size)[None].to(dev)  # (1, 3, S, S)
        z, p = method.infer(model, extractor, image, EVAL_SIZE)
        for k, v in p.items():
            parts.setdefault(k, []).append(v.numpy())
        masks.append(tree_nfa(z, EVAL_SIZE, scales=nfa_scales)[0, 0].numpy() > 0)  # −log10 NFA > 0
    score = method.finalize({k: np.concatenate(v) for k, v in parts.items()}, EVAL_SIZE)["score"]  # (N, S, S)
    lo, hi = float(score.min()), float(score.max())
    gray = np.round(255 * (score - lo) / (hi - lo if hi > lo else 1.0))
    for f, g, m in zip(files, gray, masks):
        for suffix, arr in (("anomaly", g), ("nfa_mask", 255 * m)):
            p = out / f"{f.stem}_{suffix}.png"
            Image.fromarray(arr.astype(np.uint8)).save(p)
            written.append(p)
    return written
