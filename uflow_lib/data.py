"""Images, masks and labels from a folder in the MVTec AD layout.

The MVTec AD layout (Bergmann et al., CVPR 2019), also written by :func:`uflow_lib.synthetic.make_dataset`::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png                    label 0, mask all zero
    <root>/<category>/test/<defect>/000.png                label 1
    <root>/<category>/ground_truth/<defect>/000_mask.png   values {0, 255}

Images become RGB (grayscale categories such as grid, screw and zipper are repeated to three channels, an
alpha channel is dropped) and are resized with PIL's antialiased bilinear filter. They stay in [0, 1] and are
*not* normalised: each feature extractor applies its own mean and std. Masks are resized bilinearly to the
evaluation resolution and binarised at 0.5.

The mask of ``test/<defect>/<stem>.png`` is found from the path's parts, as
``<category>/ground_truth/<defect>/<stem>_mask.png``; it is never made by replacing the text "test" in the
path, which breaks for roots such as ``/home/me/test_data``.

A category without ``ground_truth/`` is read with image labels only: ``has_masks`` is False, and metrics that
need masks are reported as unavailable (:mod:`uflow_lib.evaluation`). A ``ground_truth/`` folder that holds some
defect types' masks but not others' is an error naming the defect types without masks (pixel metrics computed
on part of the defects would be wrong without saying so). Other layouts (BTAD, a folder of normal and abnormal
images) are in :mod:`uflow_lib.layouts`; every dataset here and there is an :class:`AnomalyDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
    "tile", "toothbrush", "transistor", "wood", "zipper",
)
"""The 15 categories of MVTec AD."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Image file endings read by the dataset (compared case-insensitively)."""

_SPLITS = ("train", "test")


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int number of pixels, got {value!r} of type "
                        f"{type(value).__name__}; pass e.g. {name}=256.")
    if value < 1:
        raise ValueError(f"{name} must be a positive number of pixels, got {value}; pass e.g. {name}=256.")
    return int(value)


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image, turning every decoding failure into a ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {what} {path} ({err}); the file is corrupt, truncated or not an image: "
                         "re-extract or re-download it, or remove it from the folder.") from err


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: rescale to 8 bits first
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / (65535.0 if im.mode.startswith("I;16") else max(arr.max(), 1.0))
                                     * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return im.convert("RGB")  # L, LA, RGBA, CMYK, ... -> RGB (alpha dropped)


def _image_to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    im = _to_rgb(im)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)  # PIL widens the filter when shrinking: antialiased
    arr = np.asarray(im, dtype=np.float32) / 255.0  # (S, S, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, S, S)


def load_image(path: str | Path, size: int = 256) -> torch.Tensor:
    """Read any image file as an RGB tensor, resized to ``size`` x ``size``.

    Parameters
    ----------
    path : str or Path
        Image file (PNG, JPEG, BMP, TIFF, ...; grayscale, RGBA and palette images become RGB).
    size : int
        Output side S in pixels (PIL bilinear resize, antialiased).

    Returns
    -------
    torch.Tensor
        (3, S, S) float32 in [0, 1], channels R, G, B, not normalised.
    """
    size = _check_size("size", size)
    return _image_to_tensor(_open(Path(path), "image"), size)


def load_mask(path: str | Path, size: int = 256) -> torch.Tensor:
    """Read a ground-truth mask, resize it bilinearly to ``size`` and binarise it at 0.5.

    Parameters
    ----------
    path : str or Path
        Mask file, 0 for normal pixels and 255 for anomalous ones (any mode; it is read as 8-bit gray).
    size : int
        Output side S in pixels.

    Returns
    -------
    torch.Tensor
        (1, S, S) float32 with values in {0, 1}.
    """
    size = _check_size("size", size)
    return _mask_to_tensor(_open(Path(path), "mask"), size)


def _mask_to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0  # (H, W) in [0, 1]
    if gray.shape != (size, size):  # resize the soft mask in float ("F" mode), then threshold
        gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))  # (S, S)
    return torch.from_numpy((gray > 0.5).astype(np.float32))[None]  # (1, S, S)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def images_in(folder: str | Path, what: str = "image folder") -> list[Path]:
    """The sorted image files of ``folder`` (hidden files and other endings skipped); raises if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist; check the path.")
    images = _images_in(folder)
    if not images:
        raise ValueError(f"{folder} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                         "point to a folder of images or remove the empty folder.")
    return images


def find_mask(folder: Path, stem: str, suffixes: tuple[str, ...] = ("",),
              extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Path | None:
    """The one file ``folder/<stem><suffix><ext>`` for the given suffixes and extensions, or None if there is none.

    Raises ValueError when several files match (e.g. ``001.png`` and ``001.bmp``): which one is the mask is then
    a guess.
    """
    names = {f"{stem}{suffix}{ext}".lower() for suffix in suffixes for ext in extensions}
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower() in names) if folder.is_dir() else []
    if len(found) > 1:
        raise ValueError(f"several masks for image {stem!r} in {folder}: {[p.name for p in found]}; keep one.")
    return found[0] if found else None


def check_mask_folders(gt: Path, defects: list[str]) -> bool:
    """Whether the defect types ``defects`` have masks under ``gt`` (one ``gt/<defect>`` folder each).

    True when every defect type has its folder, False when none has (image labels only, pixel metrics n/a);
    a mix raises ValueError naming the defect types without masks.
    """
    without = [d for d in defects if not (gt / d).is_dir()]
    if not without:
        return True
    if len(without) == len(defects):
        return False
    raise ValueError(f"{gt} has masks for {sorted(set(defects) - set(without))} but not for {without}; pixel "
                     f"metrics need every defect image's mask: add {gt}/<defect>/ for {without}, or delete {gt} "
                     "to evaluate with image labels only.")


def missing_category_error(root: Path, category: str) -> FileNotFoundError:
    """The error for ``root/category`` not existing, listing the categories found under ``root``."""
    if not root.is_dir():
        return FileNotFoundError(
            f"dataset root {root} does not exist; pass the folder that contains the category folders "
            "(e.g. '.../mvtec_ad' with 'bottle/' inside), or create it with "
            "uflow_lib.download.download_mvtec or uflow_lib.synthetic.make_dataset.")
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
    return FileNotFoundError(
        f"category {category!r} not found: {root / category} does not exist. Categories found under "
        f"{root}: {found or 'none'}; pick one of them or fix the root.")


class AnomalyDataset(torch.utils.data.Dataset):
    """Images with labels and, where known, masks: the item format every layout shares.

    Subclasses (:class:`MVTecDataset`, :class:`uflow_lib.layouts.BTADDataset`,
    :class:`uflow_lib.layouts.FolderDataset`) fill the lists with :meth:`_add`.

    Attributes
    ----------
    paths : list of Path
        Image files, in a deterministic order.
    labels : list of int
        0 for a normal image, 1 for an anomalous one, one per path.
    defects : list of str
        The name of each image's class (its folder in MVTec AD and BTAD), one per path.
    mask_paths : list of Path or None
        The ground-truth file of each anomalous image; None for normal ones (their mask is all zero) and for
        every image when ``has_masks`` is False.
    has_masks : bool
        Whether every item's mask is known. False: the anomalous images have no masks, their ``mask`` items are
        zeros that mean nothing, and pixel metrics cannot be computed (image labels only).
    no_masks_reason : str
        Why there are no masks ("" when ``has_masks``), e.g. "no folder .../ground_truth".
    """

    layout: str = ""

    def __init__(self, input_size: int, mask_size: int) -> None:
        self.input_size = _check_size("input_size", input_size)
        self.mask_size = _check_size("mask_size", mask_size)
        self.paths: list[Path] = []
        self.labels: list[int] = []
        self.defects: list[str] = []
        self.mask_paths: list[Path | None] = []
        self.has_masks = True
        self.no_masks_reason = ""

    def _add(self, path: Path, label: int, defect: str, mask_path: Path | None = None) -> None:
        self.paths.append(path)
        self.labels.append(label)
        self.defects.append(defect)
        self.mask_paths.append(mask_path)

    def _without_masks(self, reason: str) -> None:
        self.has_masks, self.no_masks_reason = False, reason

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` as a dict.

        Returns
        -------
        dict
            ``image`` (3, input_size, input_size) float32 RGB in [0, 1]; ``mask`` (1, mask_size, mask_size)
            float32 in {0, 1} (zeros when the image has no mask: see ``has_masks``); ``label`` int (0 normal,
            1 anomalous); ``path`` str; ``defect`` str.
        """
        path, mask_path = self.paths[index], self.mask_paths[index]
        im = _open(path, "image")
        image = _image_to_tensor(im, self.input_size)
        if mask_path is None:
            mask = torch.zeros(1, self.mask_size, self.mask_size)
        else:
            mask_im = _open(mask_path, "mask")
            if mask_im.size != im.size:
                raise ValueError(f"mask {mask_path} is {mask_im.size[0]}x{mask_im.size[1]} but its image {path} "
                                 f"is {im.size[0]}x{im.size[1]} (width x height); a mask must have its image's "
                                 "size: restore the original files.")
            mask = _mask_to_tensor(mask_im, self.mask_size)
        return {"image": image, "mask": mask, "label": self.labels[index], "path": str(path),
                "defect": self.defects[index]}


class MVTecDataset(AnomalyDataset):
    """One category and split of a dataset in the MVTec AD layout.

    Parameters
    ----------
    root : str or Path
        Folder holding the category folders (``<root>/<category>/train/good/...``).
    category : str
        Category folder name, e.g. ``"bottle"`` (any name: generated categories work the same way).
    split : {"train", "test"}
        Which split to read; every subfolder of it is a class (``good`` is label 0, any other name is 1).
    input_size : int
        Side of the returned images in pixels (448 for MS-CaiT, per the paper).
    mask_size : int
        Side of the returned masks (the evaluation resolution, 256).

    Attributes
    ----------
    paths, labels, defects, mask_paths, has_masks, no_masks_reason
        As :class:`AnomalyDataset`; paths are sorted by folder then file name, ``defects`` holds the subfolder
        name (``"good"`` or the defect type). Without ``<category>/ground_truth`` ``has_masks`` is False.

    Notes
    -----
    Missing folders, empty folders, missing mask files and a ground-truth folder with masks for only some defect
    types raise when the dataset is built; a corrupt image or a mask whose size differs from its image's raises
    when that item is read (naming the file).
    """

    layout = "mvtec"

    def __init__(self, root: str | Path, category: str, split: str, input_size: int = 256,
                 mask_size: int = 256) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} is not an MVTec split; use 'train' or 'test'.")
        super().__init__(input_size, mask_size)
        self.root, self.category, self.split = Path(root), str(category), split
        folder = self.root / self.category
        if not folder.is_dir():
            raise missing_category_error(self.root, self.category)
        split_dir = folder / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"split folder {split_dir} does not exist; expected the MVTec layout "
                                    f"{folder}/{split}/<good|defect>/*.png (is the extraction incomplete?).")
        classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"{split_dir} has no class subfolders; expected {split_dir}/good/*.png "
                             "(and, for test, one folder per defect type).")
        gt = folder / "ground_truth"
        if not check_mask_folders(gt, [c.name for c in classes if c.name != "good"]):
            self._without_masks(f"{gt} does not exist" if not gt.is_dir() else f"{gt} has no defect folders")
        for cls in classes:
            images = _images_in(cls)
            if not images:
                raise ValueError(f"{cls} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                                 "re-extract the category or remove the empty folder.")
            for path in images:
                mask_path = None
                if cls.name != "good" and self.has_masks:
                    # <category>/test/<defect>/<stem>.png -> <category>/ground_truth/<defect>/<stem>_mask.png
                    mask_path = path.parents[2] / "ground_truth" / cls.name / f"{path.stem}_mask.png"
                    if not mask_path.is_file():
                        raise FileNotFoundError(f"defect image {path} has no mask: {mask_path} does not "
                                                "exist; restore the ground_truth folder or remove the image.")
                self._add(path, 0 if cls.name == "good" else 1, cls.name, mask_path)

    def __repr__(self) -> str:
        return (f"MVTecDataset(root={str(self.root)!r}, category={self.category!r}, split={self.split!r}, "
                f"n={len(self)}, defects={sorted(set(self.defects))})")
