"""Compute the frozen backbone's features for a whole dataset once, optionally caching them on disk.

The extractor is frozen and U-Flow uses no augmentation, so every epoch would recompute exactly the same
features: computing them once makes an epoch cost only the flow (``benchmarks/bench_feature_cache.py``
measures the ratio).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = ["extract_features", "cached_features", "cache_key"]


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
    """:func:`extract_features`, read from / written to ``cache_dir/<hash>.pt`` when ``cache_dir`` is given."""
    if cache_dir is None:
        return extract_features(extractor, dataset, **kwargs)
    path = Path(cache_dir) / f"features_{cache_key(dataset, **key_settings)}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu")
    feats = extract_features(extractor, dataset, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(feats, tmp)
    tmp.replace(path)
    return feats
