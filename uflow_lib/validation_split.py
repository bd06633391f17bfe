"""A validation set made from the training images alone: held-out normal images plus synthetic anomalies.

Settings (learning rate, epochs, NFA scale) are chosen on data the test set never touches. From one category's
``train/good`` images, :func:`make_validation_set` writes an MVTec-layout dataset:

- ``<out>/<category>/train/good``: the training images that are not held out (links to the originals);
- ``<out>/<category>/test/good``: the held-out images (``fraction`` of them, :func:`uflow_lib.layouts.split_normal`);
- ``<out>/<category>/test/synthetic`` and ``ground_truth/synthetic/<stem>_mask.png``: each held-out image with one
  synthetic anomaly (:func:`uflow_lib.augmentation.synthesize_anomalies`, blended from a training image or a
  scar cut from itself), at the image's own size, with its exact mask.

Every method then trains on it and is evaluated on it with the usual commands (``--data <out>``), so a setting
is chosen by the same code that reports the test results, on other images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augmentation import synthesize_anomalies
from .data import MVTecDataset
from .layouts import split_normal

__all__ = ["make_validation_set", "VALIDATION_DEFECT"]

#: The defect folder of the synthetic anomalies.
VALIDATION_DEFECT = "synthetic"


def _link(src: Path, dst: Path) -> None:
    """``dst`` → ``src`` as a symbolic link, or a copy where links are not allowed (e.g. Google Drive)."""
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _read(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file as (3, H, W) RGB in [0, 1], at its own size or resized (bilinear) to ``size`` = (H, W)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_png(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] → an 8-bit RGB image."""
    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def make_validation_set(data: str | Path, category: str, out: str | Path, fraction: float = 0.2,
                        seed: int = 0) -> Path:
    """Write the validation set of ``data/category`` (MVTec layout) under ``out`` (see module docstring) and
    return ``out``. The same files, ``fraction`` and ``seed`` give the same split and the same anomalies.

    Refuses an ``out`` that already holds ``category`` (delete it to make the set again).
    """
    out = Path(out)
    root = out / category
    if root.exists():
        raise FileExistsError(f"{root} already exists; delete it to make the validation set again, or pass "
                              "another --out")
    normal = MVTecDataset(data, category, "train", input_size=32).paths
    train, held = split_normal(normal, fraction, seed)
    for sub in ("train/good", "test/good", f"test/{VALIDATION_DEFECT}", f"ground_truth/{VALIDATION_DEFECT}"):
        (root / sub).mkdir(parents=True)
    for p in train:
        _link(p, root / "train" / "good" / p.name)
    rng = np.random.default_rng([seed, 1])
    for p in held:
        _link(p, root / "test" / "good" / p.name)
        image = _read(p)
        source = _read(train[int(rng.integers(len(train)))], size=image.shape[-2:])
        anomalous, mask = synthesize_anomalies(image[None], rng, p=1.0, sources=source[None])
        stem = Path(p).stem
        _to_png(anomalous[0]).save(root / "test" / VALIDATION_DEFECT / f"{stem}.png")
        Image.fromarray((mask[0, 0] * 255).byte().numpy()).save(
            root / "ground_truth" / VALIDATION_DEFECT / f"{stem}_mask.png")
    return out

