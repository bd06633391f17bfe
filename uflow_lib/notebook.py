"""What every chapter's setup cell needs: the run mode, seeds, the device, data and weights.

One source, two modes (book/intro.md):

- ``full`` — a GPU (Colab): the paper's settings, MS-CaiT and real MVTec AD where a chapter needs them;
- ``ci`` — a CPU in a few minutes: the generated dataset, the offline MobileNetV2 from ``../shared/weights``
  when it is there (random weights otherwise), fewer epochs. Same code path, smaller numbers.

The mode comes from the environment variable ``UFLOW_BOOK_MODE`` (``full`` or ``ci``); unset, it is ``full``
when a CUDA GPU is present and ``ci`` otherwise.

>>> ctx = setup(seed=0, verbose=False)  # doctest: +SKIP
>>> ctx.mode, ctx.device  # doctest: +SKIP
('ci', device(type='cpu'))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .runtime import pick_device, seed_everything
from .features import default_weights_file

__all__ = ["BookContext", "setup", "generated_dataset", "find_mvtec_root"]

#: Where the generated dataset and chapter checkpoints are kept between runs.
CACHE = Path(os.environ.get("UFLOW_BOOK_CACHE", Path.home() / ".cache" / "uflow_book"))


@dataclass
class BookContext:
    """Settings shared by a chapter's cells."""

    mode: str
    device: torch.device
    seed: int
    #: MVTec-layout root of the generated dataset (always available, offline)
    generated_root: Path
    #: backbone used in CPU mode and its local weights file (None → random weights)
    cpu_backbone: str
    weights: Path | None
    #: real MVTec AD root if one is found (``../shared/data/mvtec_ad``, or ``UFLOW_MVTEC_ROOT``), else None
    mvtec_root: Path | None

    @property
    def pretrained(self) -> bool:
        """Real ImageNet weights for the CPU backbone: the offline file here, the hub in full mode (Colab)."""
        return self.weights is not None or self.mode == "full"

    def extractor_kwargs(self) -> dict:
        """Arguments for :func:`uflow_lib.features.build_extractor` of the CPU backbone."""
        return dict(pretrained=self.pretrained, weights=self.weights)

    @property
    def is_ci(self) -> bool:
        return self.mode == "ci"


def generated_dataset(seed: int = 0, category: str = "texture") -> Path:
    """The generated MVTec-layout dataset (written once under :data:`CACHE`); returns its root."""
    from .synthetic import make_dataset

    root = CACHE / f"generated_seed{seed}"
    if not (root / category / "test").is_dir():
        make_dataset(root, seed=seed, category=category)
    return root


def find_mvtec_root(category: str = "bottle") -> Path | None:
    """A real MVTec AD root holding ``category``: ``$UFLOW_MVTEC_ROOT``, or a ``shared/data/mvtec_ad`` nearby."""
    candidates = []
    if os.environ.get("UFLOW_MVTEC_ROOT"):
        candidates.append(Path(os.environ["UFLOW_MVTEC_ROOT"]))
    start = Path.cwd().resolve()
    for d in [start, *start.parents]:
        candidates += [d / "shared" / "data" / "mvtec_ad", d.parent / "shared" / "data" / "mvtec_ad"]
    return next((c for c in candidates if (c / category / "train").is_dir()), None)


def setup(seed: int = 0, verbose: bool = True) -> BookContext:
    """Seed everything, pick the device and the mode, find or generate the data. Prints a short summary."""
    seed_everything(seed)
    device = pick_device("auto")
    mode = os.environ.get("UFLOW_BOOK_MODE") or ("full" if device.type == "cuda" else "ci")
    if mode not in ("full", "ci"):
        raise ValueError(f"UFLOW_BOOK_MODE must be 'full' or 'ci', got {mode!r}")
    weights = default_weights_file("mobilenetv2")
    if mode == "ci":
        # one thread: identical numbers on every CPU machine (reduction order), and no thread thrashing on
        # small models when the machine is shared
        torch.set_num_threads(1)
    ctx = BookContext(mode, device, seed, generated_dataset(seed), "mobilenetv2", weights, find_mvtec_root())
    if verbose:
        print(f"mode: {mode} | device: {device.type} | MobileNetV2 weights: "
              f"{'offline ImageNet file' if weights else 'none found (random weights)'} | "
              f"real MVTec AD: {'found' if ctx.mvtec_root else 'not found'}")
        if device.type == "cpu":
            print("No GPU: running the small CPU version. In Colab choose Runtime > Change runtime type > GPU.")
    return ctx
