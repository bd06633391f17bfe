"""Anomaly maps and NFA masks for arbitrary images, written as PNGs (``python -m uflow_lib predict``).

Maps are computed at the evaluation resolution (256×256) and written at each input's own size and aspect (or
``out_size``). Unreadable images and hidden files (names starting with ``.``, e.g. macOS ``._x.png``) are
skipped and reported; outputs never overwrite each other or earlier files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_trained
from .data import IMAGE_EXTENSIONS, load_image
from .evaluation import EVAL_SIZE, default_nfa_scales, latent_sides, nfa_not_applicable
from .methods import get_method
from .nfa import tree_nfa
from .runtime import pick_device
from .validation import check_out_dir, short_reason

__all__ = ["predict_files", "list_images", "hidden_images", "output_stems", "parse_out_size"]

SUFFIXES = ("anomaly", "nfa_mask")


def list_images(path: str | Path) -> list[Path]:
    """One image file, or the sorted image files of a folder (hidden files, named ``.*``, left out)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input {path} is neither an image file nor a folder")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}"
                         + (" (only hidden files, named .*)" if hidden_images(path) else ""))
    return files


def hidden_images(path: str | Path) -> list[Path]:
    """The hidden files (``.*``) with an image ending in a folder: skipped by :func:`list_images`."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir()
                  if p.is_file() and p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def output_stems(files: Sequence[Path]) -> list[str]:
    """The name each file's outputs start with: its stem, or ``<stem>_<ext>`` when stems clash (``x.png`` and
    ``x.jpg`` → ``x_png``, ``x_jpg``), so no output overwrites another. Raises if names still clash."""
    stems = [f.stem for f in files]
    clashing = {s for s in stems if stems.count(s) > 1}
    names = [f"{f.stem}_{f.suffix.lstrip('.').lower()}" if f.stem in clashing else f.stem for f in files]
    seen: dict[str, Path] = {}
    for name, f in zip(names, files):
        if name in seen:
            raise ValueError(f"{seen[name]} and {f} would write the same output files ({name}_anomaly.png); "
                             f"rename one of them")
        seen[name] = f
    return names


def parse_out_size(text: str | None) -> tuple[int, int] | None:
    """``"256"`` → ``(256, 256)``; ``"320x240"`` → ``(320, 240)`` (width × height); None → None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        w = h = 0
    if len(parts) > 2 or w < 1 or h < 1:
        raise ValueError(f"--out-size {text!r} is not a size; pass N (square) or WxH in pixels, e.g. 256 or 640x480")
    return w, h


def _resized(arr: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """``(S, S)`` float map → ``(H, W)`` for ``size`` = (W, H), with PIL's ``resample`` filter in float."""
    if arr.shape[::-1] == size:
        return arr
    return np.asarray(Image.fromarray(arr.astype(np.float32)).resize(size, resample))  # (H, W)


@torch.no_grad()
def predict_files(
    checkpoint: str | Path,
    inputs: str | Path,
    out_dir: str | Path,
    weights: str | None = None,
    device: str = "auto",
    nfa_scales: Sequence[int] | None = None,
    out_size: tuple[int, int] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write ``<stem>_anomaly.png`` and ``<stem>_nfa_mask.png`` ({0, 255}) per image, for a model of any method
    (the baselines have no NFA: only ``<stem>_anomaly.png``).

    The anomaly PNG is the method's pixel score map scaled to 8-bit gray, 0 = the lowest and 255 = the highest
    score over all the given images (one scale for the whole set, so images can be compared). SANFlow's maps
    depend on the set they are computed on (CFLOW-AD's normalisation by the set maximum): pass a folder.

    Parameters
    ----------
    out_size : (int, int), optional
        ``(width, height)`` of every written map; default: each input's own size (maps at 256×256 are resized,
        bilinearly for the anomaly map and by nearest neighbour for the mask).
    overwrite : bool
        Replace output files that already exist in ``out_dir`` (default: refuse, before any work).
    log : callable
        Receives one line per skipped file (hidden or unreadable).

    Returns
    -------
    list of Path
        The files written, two per readable image (one for a baseline).
    """
    dev = pick_device(device)
    files = list_images(inputs)
    for f in hidden_images(inputs):
        log(f"skipped {f}: hidden file (its name starts with '.')")
    names = output_stems(files)
    out = Path(out_dir)
    check_out_dir(out, "--out")
    existing = [out / f"{n}_{s}.png" for n in names for s in SUFFIXES if (out / f"{n}_{s}.png").exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out {out} already holds {len(existing)} of the output files (e.g. {existing[0]}); "
                              f"pass --overwrite to replace them, or another --out")
    cfg, extractor, model, _ = load_trained(checkpoint, dev, weights)
    method = get_method(cfg.method)
    if not method.has_latents:
        if nfa_scales is not None:
            raise ValueError(f"--nfa-scales: {nfa_not_applicable(cfg.method)}")
        log(f"note: no <stem>_nfa_mask.png: {nfa_not_applicable(cfg.method, fix=False)}")
    elif nfa_scales is None:
        nfa_scales = default_nfa_scales(cfg.backbone, len(model.channels), latent_sides(model))
    suffixes = SUFFIXES if method.has_latents else SUFFIXES[:1]
    parts: dict[str, list] = {}
    kept: list[tuple[Path, str, tuple[int, int], np.ndarray]] = []  # file, output stem, (W, H), NFA mask
    for f, name in zip(files, names):
        try:
            image = load_image(f, cfg.input_size)[None].to(dev)  # (1, 3, S, S)
            with Image.open(f) as im:
                size = im.size  # (W, H)
        except (ValueError, OSError) as err:
            log(f"skipped {f}: not a readable image ({short_reason(err.__cause__ or err, 120)})")
            continue
        z, p = method.infer(model, extractor, image, EVAL_SIZE)
        for k, v in p.items():
            parts.setdefault(k, []).append(v.numpy())
        mask = tree_nfa(z, EVAL_SIZE, scales=nfa_scales)[0, 0].numpy() > 0 if method.has_latents else None  # (S, S)
        kept.append((f, name, out_size or size, mask))
    if not kept:
        raise ValueError(f"none of the {len(files)} images in {inputs} could be read (see the lines above)")
    score = method.finalize({k: np.concatenate(v) for k, v in parts.items()}, EVAL_SIZE)["score"]  # (N, S, S)
    lo, hi = float(score.min()), float(score.max())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (f, name, size, mask), s in zip(kept, score):
        gray = np.round(255 * (_resized(s, size, Image.BILINEAR) - lo) / (hi - lo if hi > lo else 1.0))  # (H, W)
        binary = None if mask is None else 255 * (_resized(mask.astype(np.float32), size, Image.NEAREST) > 0.5)
        for suffix, arr in zip(suffixes, (gray, binary)):  # binary: (H, W) in {0, 255}
            p = out / f"{name}_{suffix}.png"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
            written.append(p)
    return written
