"""Compute the frozen backbone's features for a whole dataset once, optionally caching them on disk.

The extractor is frozen and U-Flow uses no augmentation, so every epoch would recompute exactly the same
features: computing them once makes an epoch cost only the flow (``benchmarks/bench_feature_cache.py``
measures the ratio).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .validation import why_unreadable

__all__ = ["extract_features", "cached_features", "cache_key", "ReplayExtractor"]


@torch.no_grad()
def extract_features(
    extractor: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
) -> list[torch.Tensor]:
    """Features of every image of ``dataset`` (items with key ``"image"``).

    Returns a list over scales (fine → coarse) of float32 CPU tensors ``(N, C_s, h_s, w_s)``.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks: list[list[torch.Tensor]] = []
    extractor = extractor.to(device)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        feats = extractor(batch["image"].to(device))
        chunks.append([f.float().cpu() for f in feats])
    if not chunks:
        raise ValueError("the dataset is empty: no features to extract")
    return [torch.cat(scale) for scale in zip(*chunks)]


def cache_key(dataset, **settings) -> str:
    """A short hash of the dataset's files (paths, sizes, mtimes) and the extraction settings."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in getattr(dataset, "paths", []):
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_features(
    extractor: torch.nn.Module,
    dataset: Dataset,
    cache_dir: str | Path | None,
    key_settings: dict,
    **kwargs,
) -> list[torch.Tensor]:
    """:func:`extract_features`, read from / written to ``cache_dir/<hash>.pt`` when ``cache_dir`` is given.

    The cache is loaded with ``weights_only=True``; a damaged file (or one that holds anything but the
    dataset's feature maps) is computed again and rewritten, with a warning."""
    if cache_dir is None:
        return extract_features(extractor, dataset, **kwargs)
    path = Path(cache_dir) / f"features_{cache_key(dataset, **key_settings)}.pt"
    if path.is_file():
        try:
            return _read_cache(path, len(dataset))
        except ValueError as err:
            warnings.warn(f"feature cache {path} is unreadable ({err}); computing the features again and "
                          f"rewriting it", stacklevel=2)
    feats = extract_features(extractor, dataset, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(feats, tmp)
    tmp.replace(path)
    return feats


def _read_cache(path: Path, n: int) -> list[torch.Tensor]:
    """The cached features in ``path`` (a list over scales of ``(n, C_s, h_s, w_s)`` float tensors), loaded with
    ``weights_only=True``; ``ValueError`` when the file is damaged or holds anything else."""
    try:
        feats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        raise ValueError(why_unreadable(path, err)) from err
    if (not isinstance(feats, list) or not feats
            or not all(isinstance(f, torch.Tensor) and f.ndim == 4 and f.shape[0] == n for f in feats)):
        raise ValueError(f"it does not hold {n} images' feature maps")
    return feats


class ReplayExtractor(torch.nn.Module):
    """A frozen extractor that computes the features of a fixed sequence of batches once and replays them.

    Evaluating on the test set every few epochs (best-on-test tracking) passes the same batches, in the same
    order, through the same frozen extractor each time: the first pass keeps every batch's features on the
    CPU, later passes (after :meth:`rewind`) return them instead of running the backbone again. Each replayed
    batch is checked against the one recorded (shape and pixel sum), so a different sequence raises.
    """

    def __init__(self, extractor: torch.nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.channels, self.strides = extractor.channels, extractor.strides
        self._kept: list[tuple[tuple[int, ...], float, list[torch.Tensor]]] = []
        self._next = 0
        #: batches computed by the backbone / replayed from memory, over the wrapper's life
        self.computed = self.replayed = 0

    def rewind(self) -> "ReplayExtractor":
        """Start again at the first batch of the sequence."""
        self._next = 0
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """The wrapped extractor's input normalisation (SANFlow's variance network reads it)."""
        return self.extractor.normalise(images)

    def feature_sizes(self, input_size: int) -> list[int]:
        return self.extractor.feature_sizes(input_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` → the extractor's list of ``(B, C_s, h_s, w_s)``, on ``images``' device."""
        fingerprint = (tuple(images.shape), float(images.double().sum()))
        i, self._next = self._next, self._next + 1
        if i < len(self._kept):
            shape, total, feats = self._kept[i]
            if (shape, total) != fingerprint:
                raise RuntimeError(f"batch {i} differs from the one recorded (shape {fingerprint[0]} vs {shape}); "
                                   "call rewind() before each pass over the same data")
            self.replayed += 1
            return [f.to(images.device, non_blocking=True) for f in feats]
        if i > len(self._kept):
            raise RuntimeError("batches were skipped since the last rewind(); replay needs the same sequence")
        feats = self.extractor(images)
        self._kept.append((fingerprint[0], fingerprint[1], [f.detach().cpu() for f in feats]))
        self.computed += 1
        return feats
