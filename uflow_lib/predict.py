"""Anomaly maps and NFA masks for arbitrary images, written as PNGs (``python -m uflow_lib predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_trained, pick_device
from .data import IMAGE_EXTENSIONS, load_image
from .evaluation import EVAL_SIZE, default_nfa_scales
from .scoring import anomaly_map

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
    """Write ``<stem>_anomaly.png`` (A in [0, 1] as 8-bit gray) and ``<stem>_nfa_mask.png`` ({0, 255}) per image."""
    from .nfa import tree_nfa

    dev = pick_device(device)
    cfg, extractor, model, _ = load_trained(checkpoint, dev, weights)
    if nfa_scales is None:
        nfa_scales = default_nfa_scales(cfg.backbone, len(model.channels))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in list_images(inputs):
        image = load_image(f, cfg.input_size)[None].to(dev)  # (1, 3, S, S)
        z, _ = model(extractor(image))
        z = [t.float().cpu() for t in z]
        a = anomaly_map(z, EVAL_SIZE)[0, 0].numpy()  # (256, 256) in [0, 1]
        nfa = tree_nfa(z, EVAL_SIZE, scales=nfa_scales)[0, 0].numpy()  # −log10 NFA
        for suffix, arr in (("anomaly", np.round(a * 255)), ("nfa_mask", 255 * (nfa > 0))):
            p = out / f"{f.stem}_{suffix}.png"
            Image.fromarray(arr.astype(np.uint8)).save(p)
            written.append(p)
    return written
