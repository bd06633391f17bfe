"""Datasets beyond MVTec AD's layout: BTAD, a folder of normal and abnormal images, and the one factory for all.

Three layouts (``--layout``), all read into the item format of :class:`uflow_lib.data.AnomalyDataset`:

``mvtec``
    :class:`uflow_lib.data.MVTecDataset`: ``<data>/<category>/train/good``, ``test/good``, ``test/<defect>``,
    ``ground_truth/<defect>/<stem>_mask.png``. Without ``ground_truth/`` the category has image labels only.
``btad``
    :class:`BTADDataset`, the layout of the BTAD dataset (Mishra et al., "VT-ADL: A Vision Transformer Network
    for Image Anomaly Detection and Localization", ISIE 2021): ``<data>/<product>/train/ok``, ``test/ok``
    (label 0), ``test/ko`` (label 1, defect ``"ko"``), masks ``ground_truth/ko/<stem>.png`` or ``.bmp``.
``folder``
    :class:`FolderDataset`, like anomalib's Folder datamodule: ``normal_dir`` (normal images), ``abnormal_dir``
    (anomalous images), optional ``mask_dir``, and the normal test images from ``normal_test_dir`` or held out
    of ``normal_dir`` (``normal_split``, seeded by ``split_seed``). No ``data``/``category``: the run is named
    after the normal folder.

:func:`detect_layout` recognises ``train/good`` (mvtec) and ``train/ok`` with ``test/ko`` (btad);
:func:`resolve_layout` turns a config's ``layout="auto"`` into one of the three; :func:`open_dataset` opens a
config's split whatever its layout.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import FOLDER_OPTIONS, TrainConfig
from .data import (IMAGE_EXTENSIONS, AnomalyDataset, MVTecDataset, _SPLITS, check_mask_folders, find_mask, images_in,
                   missing_category_error)

__all__ = ["BTADDataset", "FolderDataset", "split_normal", "detect_layout", "resolve_layout", "override_data",
           "open_dataset", "BTAD_MASK_EXTENSIONS", "FOLDER_MASK_SUFFIXES"]

#: Mask endings of BTAD (products 01 and 02 ship .png masks, product 03 .bmp ones).
BTAD_MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp")
#: The mask of ``<abnormal_dir>/<stem>.<ext>`` is ``<mask_dir>/<stem><suffix>.<any image ext>``, one of these.
FOLDER_MASK_SUFFIXES: tuple[str, ...] = ("", "_mask")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split={split!r} is not a split; use 'train' or 'test'.")


class BTADDataset(AnomalyDataset):
    """One product and split of a dataset in the BTAD layout.

    Parameters
    ----------
    root : str or Path
        Folder holding the product folders (``<root>/<product>/train/ok/...``).
    category : str
        Product folder name (BTAD: ``"01"``, ``"02"``, ``"03"``).
    split : {"train", "test"}
        ``train/ok`` (label 0), or ``test/ok`` (label 0) and ``test/ko`` (label 1).
    input_size, mask_size : int
        Sides of the returned images and masks in pixels.

    Notes
    -----
    ``defects`` are the folder names, ``"ok"`` and ``"ko"``. The mask of ``test/ko/<stem>.<ext>`` is
    ``ground_truth/ko/<stem>.png`` or ``.bmp``; without ``ground_truth/ko`` the product has image labels only
    (``has_masks`` False), with it every ``ko`` image needs its mask.
    """

    layout = "btad"

    def __init__(self, root: str | Path, category: str, split: str, input_size: int = 256,
                 mask_size: int = 256) -> None:
        _check_split(split)
        super().__init__(input_size, mask_size)
        self.root, self.category, self.split = Path(root), str(category), split
        folder = self.root / self.category
        if not folder.is_dir():
            raise missing_category_error(self.root, self.category)
        classes = ["ok"] if split == "train" else ["ok", "ko"]
        extra = sorted(p.name for p in (folder / split).glob("*") if p.is_dir() and not p.name.startswith(".")
                       and p.name not in classes)
        if extra:
            raise ValueError(f"{folder / split} has folders {extra} besides {classes}; the BTAD layout has only "
                             f"{'/'.join(classes)} there: move them out, or use --layout folder.")
        gt = folder / "ground_truth"
        if split == "test" and not check_mask_folders(gt, ["ko"]):
            self._without_masks(f"{gt / 'ko'} does not exist")
        for name in classes:
            for path in images_in(folder / split / name, f"BTAD folder ({folder}/{split}/{name} expected)"):
                mask_path = None
                if name == "ko" and self.has_masks:
                    mask_path = find_mask(gt / "ko", path.stem, extensions=BTAD_MASK_EXTENSIONS)
                    if mask_path is None:
                        raise FileNotFoundError(f"defect image {path} has no mask: neither {path.stem}.png nor "
                                                f"{path.stem}.bmp is in {gt / 'ko'}; restore it or remove the image.")
                self._add(path, int(name == "ko"), name, mask_path)

    def __repr__(self) -> str:
        return (f"BTADDataset(root={str(self.root)!r}, category={self.category!r}, split={self.split!r}, "
                f"n={len(self)}, has_masks={self.has_masks})")


def split_normal(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out ``round(fraction * N)`` of the N ``paths`` for testing → ``(train, test)``, both in input order.

    The held-out files are the first ones of ``numpy.random.default_rng(seed).permutation(N)``: the same
    files, folder contents and seed give the same split, and no file is in both parts. Each part keeps at
    least one file.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"normal_split={fraction!r}: expected a fraction strictly between 0 and 1, e.g. 0.2.")
    n, k = len(paths), int(round(fraction * len(paths)))
    if not 1 <= k <= n - 1:
        raise ValueError(f"normal_split={fraction} of {n} normal images holds out {k}: both parts need at least "
                         "one image; add images or change --normal-split.")
    held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return ([p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held])


class FolderDataset(AnomalyDataset):
    """A split of a folder of normal images and a folder of anomalous ones (anomalib's Folder form).

    Parameters
    ----------
    normal_dir : str or Path
        Normal images. Train: all of them, or those not held out by ``normal_split``.
    abnormal_dir : str or Path
        Anomalous images (label 1, defect ``"abnormal"``), test split only.
    split : {"train", "test"}
    mask_dir : str or Path, optional
        Masks of the anomalous images: the mask of ``<stem>.<ext>`` is ``<mask_dir>/<stem>.<e>`` or
        ``<mask_dir>/<stem>_mask.<e>`` for any image ending ``<e>`` (exactly one must exist). None: image labels
        only (``has_masks`` False).
    normal_test_dir : str or Path, optional
        Normal test images (label 0, defect ``"normal"``); give this or ``normal_split``.
    normal_split : float, optional
        Fraction of ``normal_dir`` held out as normal test images (:func:`split_normal`).
    split_seed : int
        Seed of that split.
    input_size, mask_size : int
        Sides of the returned images and masks in pixels.
    """

    layout = "folder"

    def __init__(self, normal_dir: str | Path, abnormal_dir: str | Path, split: str,
                 mask_dir: str | Path | None = None, normal_test_dir: str | Path | None = None,
                 normal_split: float | None = None, split_seed: int = 0, input_size: int = 256,
                 mask_size: int = 256) -> None:
        _check_split(split)
        if (normal_test_dir is None) == (normal_split is None):
            raise ValueError("the folder layout needs the normal test images from exactly one of --normal-test-dir "
                             "DIR or --normal-split FRACTION (e.g. 0.2 holds out 20% of --normal-dir).")
        super().__init__(input_size, mask_size)
        self.split = split
        self.normal_dir, self.abnormal_dir = Path(normal_dir), Path(abnormal_dir)
        normal = images_in(self.normal_dir, "--normal-dir")
        if normal_split is not None:
            train, normal_test = split_normal(normal, normal_split, split_seed)
        else:
            train, normal_test = normal, images_in(normal_test_dir, "--normal-test-dir")
            if {p.resolve() for p in train} & {p.resolve() for p in normal_test}:
                raise ValueError(f"--normal-test-dir {normal_test_dir} shares images with --normal-dir {normal_dir}; "
                                 "test images must not be trained on: pass another folder or --normal-split.")
        if split == "train":
            for path in train:
                self._add(path, 0, "normal")
            return
        for path in normal_test:
            self._add(path, 0, "normal")
        abnormal = images_in(self.abnormal_dir, "--abnormal-dir")
        if mask_dir is None:
            self._without_masks("no --mask-dir was given")
        elif not Path(mask_dir).is_dir():
            raise FileNotFoundError(f"--mask-dir {mask_dir} does not exist; fix the path, or drop --mask-dir to "
                                    "evaluate with image labels only.")
        for path in abnormal:
            mask_path = None if mask_dir is None else find_mask(Path(mask_dir), path.stem, FOLDER_MASK_SUFFIXES)
            if mask_dir is not None and mask_path is None:
                raise FileNotFoundError(f"abnormal image {path} has no mask: no {path.stem}.<ext> or "
                                        f"{path.stem}_mask.<ext> in {mask_dir} ({', '.join(IMAGE_EXTENSIONS)}).")
            self._add(path, 1, "abnormal", mask_path)

    def __repr__(self) -> str:
        return (f"FolderDataset(normal_dir={str(self.normal_dir)!r}, abnormal_dir={str(self.abnormal_dir)!r}, "
                f"split={self.split!r}, n={len(self)}, has_masks={self.has_masks})")


def detect_layout(root: str | Path, category: str) -> str:
    """``"mvtec"`` for ``<root>/<category>/train/good``, ``"btad"`` for ``train/ok`` with ``test/ko``.

    Raises ValueError (one line, naming ``--layout``) when both or neither are there.
    """
    folder = Path(root) / category
    if not folder.is_dir():
        raise missing_category_error(Path(root), category)
    mvtec = (folder / "train" / "good").is_dir()
    btad = (folder / "train" / "ok").is_dir() and (folder / "test" / "ko").is_dir()
    if mvtec and btad:
        raise ValueError(f"{folder} has both train/good (mvtec layout) and train/ok + test/ko (btad layout); "
                         "pass --layout mvtec or --layout btad.")
    if not (mvtec or btad):
        raise ValueError(f"{folder} is in no known layout: expected train/good (mvtec) or train/ok with test/ko "
                         "(btad); pass --layout, or --layout folder with --normal-dir/--abnormal-dir.")
    return "mvtec" if mvtec else "btad"


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_layout(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` with ``layout`` decided ("auto" → detected) and checked against the data options.

    Folder options (``normal_dir`` ...) make "auto" the folder layout, whose ``category`` defaults to the
    normal folder's name; otherwise the layout is detected from ``<data>/<category>`` (:func:`detect_layout`).
    """
    given = [k for k in FOLDER_OPTIONS if k != "split_seed" and getattr(cfg, k) is not None]
    layout = cfg.layout
    if layout == "auto":
        layout = "folder" if given else None
    if layout != "folder":
        if given:
            raise ValueError(f"{', '.join(map(_option, given))} only apply to --layout folder; drop them or pass "
                             "--layout folder.")
        if cfg.data is None or cfg.category is None:
            raise ValueError("pass --data and --category (a dataset root and its category folder), or "
                             "--normal-dir/--abnormal-dir for a folder of images (--layout folder).")
        return replace(cfg, layout=layout or detect_layout(cfg.data, cfg.category))
    if cfg.data is not None:
        raise ValueError(f"--data {cfg.data} is not used with --layout folder (images come from --normal-dir and "
                         "--abnormal-dir); drop --data.")
    for name in ("normal_dir", "abnormal_dir"):
        if getattr(cfg, name) is None:
            raise ValueError("--layout folder needs --normal-dir (normal images) and --abnormal-dir (anomalous "
                             f"ones); {_option(name)} is missing.")
    for name in ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"{_option(name)} {path} does not exist; fix the path.")
    if (cfg.normal_test_dir is None) == (cfg.normal_split is None):
        raise ValueError("--layout folder needs the normal test images from exactly one of --normal-test-dir DIR "
                         "or --normal-split FRACTION (e.g. 0.2 holds out 20% of --normal-dir).")
    return replace(cfg, layout="folder", category=cfg.category or Path(cfg.normal_dir).name)


def override_data(cfg: TrainConfig, data: str | None = None, category: str | None = None,
                  layout: str | None = None, **folder) -> TrainConfig:
    """``cfg`` with its data replaced by the options given (not None), then :func:`resolve_layout`.

    ``data`` or any folder option (``normal_dir``, ``abnormal_dir``, ``mask_dir``, ``normal_test_dir``,
    ``normal_split``) names a new source as a whole: the saved one is dropped, and the layout is detected again
    unless ``layout`` is given. ``category``, ``layout`` and ``split_seed`` alone change only themselves.
    """
    unknown = set(folder) - set(FOLDER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown data options {sorted(unknown)}; expected some of {FOLDER_OPTIONS}")
    folder = {k: v for k, v in folder.items() if v is not None}
    seed = folder.pop("split_seed", cfg.split_seed)
    if data is not None or folder:
        cleared = {k: None for k in FOLDER_OPTIONS if k != "split_seed"}
        keep_category = data is not None and not folder
        cfg = replace(cfg, data=data, layout="auto", category=cfg.category if keep_category else None,
                      **{**cleared, **folder})
    cfg = replace(cfg, split_seed=seed, category=category or cfg.category, layout=layout or cfg.layout)
    return resolve_layout(cfg)


def open_dataset(cfg: TrainConfig, split: str, input_size: int, mask_size: int = 256) -> AnomalyDataset:
    """The ``split`` ("train" or "test") of ``cfg``'s data, in its layout (see the module docstring)."""
    cfg = resolve_layout(cfg)
    if cfg.layout == "mvtec":
        return MVTecDataset(cfg.data, cfg.category, split, input_size=input_size, mask_size=mask_size)
    if cfg.layout == "btad":
        return BTADDataset(cfg.data, cfg.category, split, input_size=input_size, mask_size=mask_size)
    return FolderDataset(cfg.normal_dir, cfg.abnormal_dir, split, mask_dir=cfg.mask_dir,
                         normal_test_dir=cfg.normal_test_dir, normal_split=cfg.normal_split,
                         split_seed=cfg.split_seed, input_size=input_size, mask_size=mask_size)
