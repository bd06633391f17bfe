"""What every chapter's setup cell needs: the run mode, seeds, the device, data and weights.

One source, three modes (book/intro.md):

- ``full`` — a GPU (Colab): the paper's settings, MS-CaiT with ImageNet weights and real MVTec AD where a
  chapter needs them;
- ``smoke`` — every ``full`` branch at toy scale on a CPU, to prove that path runs: MS-CaiT's real architecture
  with a few blocks and random weights, an offline generated MVTec-layout root whose categories carry MVTec's
  names (:data:`SMOKE_CATEGORIES`), one or two epochs. Its numbers mean nothing; that it finishes does;
- ``ci`` — a CPU in a few minutes: the generated dataset, the offline MobileNetV2 from ``../shared/weights``
  when it is there, else timm's ImageNet MobileNetV2 from the hub when the hub answers (a Colab CPU runtime),
  random weights only as a last resort (and said so); fewer epochs. Same code path, smaller numbers.

The mode comes from the environment variable ``UFLOW_BOOK_MODE`` (``full``, ``smoke`` or ``ci``); unset, it is
``full`` when a CUDA GPU is present and ``ci`` otherwise.

>>> ctx = setup(seed=0, verbose=False)  # doctest: +SKIP
>>> ctx.mode, ctx.device  # doctest: +SKIP
('ci', device(type='cpu'))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .features import default_weights_file
from .runtime import pick_device, seed_everything

__all__ = ["BookContext", "MODES", "SMOKE_CATEGORIES", "setup", "generated_dataset", "smoke_mvtec_root",
           "find_mvtec_root", "mvtec_dir", "runs_dir", "drive_archive"]

MODES = ("full", "smoke", "ci")
#: Where the generated dataset and chapter checkpoints are kept between runs.
CACHE = Path(os.environ.get("UFLOW_BOOK_CACHE", Path.home() / ".cache" / "uflow_book"))
#: Google Drive, when mounted in Colab (``drive.mount("/content/drive")``): survives the VM.
DRIVE = Path("/content/drive/MyDrive")
#: Smoke mode's stand-ins for MVTec AD categories: MVTec name → generated pattern (uflow_lib.synthetic).
SMOKE_CATEGORIES = {"bottle": "tiles", "carpet": "texture"}
#: Smoke mode's MS-CaiT: self-attention blocks at 448 and 224 (the paper uses 41 and 21).
SMOKE_CAIT_BLOCKS = (2, 1)


@dataclass
class BookContext:
    """Settings shared by a chapter's cells."""

    mode: str
    device: torch.device
    seed: int
    #: MVTec-layout root of the generated dataset (always available, offline)
    generated_root: Path
    #: backbone used in CPU mode and its local weights file (None → the hub or random weights)
    cpu_backbone: str
    weights: Path | None
    #: real MVTec AD root if one is found (``../shared/data/mvtec_ad``, or ``UFLOW_MVTEC_ROOT``), else None;
    #: in smoke mode the generated MVTec-layout root
    mvtec_root: Path | None
    #: the CPU backbone's ImageNet weights come from the hub (no offline file, and the hub answered)
    hub_weights: bool = False

    @property
    def pretrained(self) -> bool:
        """Real ImageNet weights for the CPU backbone: the offline file, or the hub (full mode, Colab CPU)."""
        return self.weights is not None or self.hub_weights

    def extractor_kwargs(self) -> dict:
        """Arguments for :func:`uflow_lib.features.build_extractor` of the CPU backbone."""
        return dict(pretrained=self.pretrained, weights=self.weights)

    @property
    def is_ci(self) -> bool:
        return self.mode == "ci"

    @property
    def paper_scale(self) -> bool:
        """Whether the chapters take their paper-scale branches (MS-CaiT, MVTec AD): full and smoke mode."""
        return self.mode in ("full", "smoke")

    @property
    def cait_blocks(self) -> tuple[int, int] | None:
        """MS-CaiT blocks at 448 and 224: None (the paper's) in full mode, a few in smoke mode."""
        return SMOKE_CAIT_BLOCKS if self.mode == "smoke" else None

    @property
    def mcait_pretrained(self) -> bool:
        """MS-CaiT with the hub's ImageNet weights (full mode) or random ones (smoke mode)."""
        return self.mode == "full"


def generated_dataset(seed: int = 0, category: str = "texture") -> Path:
    """The generated MVTec-layout dataset (written once under :data:`CACHE`); returns its root."""
    from .synthetic import make_dataset

    root = CACHE / f"generated_seed{seed}"
    if not (root / category / "test").is_dir():
        make_dataset(root, seed=seed, category=category)
    return root


def smoke_mvtec_root(seed: int = 0) -> Path:
    """An offline MVTec-layout root whose categories have MVTec's names (:data:`SMOKE_CATEGORIES`), small."""
    from .synthetic import make_dataset

    root = CACHE / f"smoke_mvtec_seed{seed}"
    for name, pattern in SMOKE_CATEGORIES.items():
        make_dataset(root, seed=seed, category=pattern, name=name, n_train=8, n_test_good=2, n_test_defect=1)
    return root


def find_mvtec_root(category: str = "bottle") -> Path | None:
    """A real MVTec AD root holding ``category``: ``$UFLOW_MVTEC_ROOT``, :func:`mvtec_dir`, or a
    ``shared/data/mvtec_ad`` nearby."""
    candidates = []
    if os.environ.get("UFLOW_MVTEC_ROOT"):
        candidates.append(Path(os.environ["UFLOW_MVTEC_ROOT"]))
    candidates.append(mvtec_dir())
    start = Path.cwd().resolve()
    for d in [start, *start.parents]:
        candidates += [d / "shared" / "data" / "mvtec_ad", d.parent / "shared" / "data" / "mvtec_ad"]
    return next((c for c in candidates if (c / category / "train").is_dir()), None)


def mvtec_dir() -> Path:
    """Where chapter 6 unpacks MVTec AD and chapter 7 reads it: ``$UFLOW_MVTEC_ROOT``, else ``/content/mvtec_ad``
    in Colab (fast local disk), else ``mvtec_ad`` under :data:`CACHE`."""
    if os.environ.get("UFLOW_MVTEC_ROOT"):
        return Path(os.environ["UFLOW_MVTEC_ROOT"])
    return Path("/content/mvtec_ad") if Path("/content").is_dir() else CACHE / "mvtec_ad"


def runs_dir() -> Path:
    """Where long runs keep their checkpoints: ``uflow_runs`` on Google Drive when it is mounted (it outlives the
    Colab VM), else under :data:`CACHE`."""
    return DRIVE / "uflow_runs" if DRIVE.is_dir() else CACHE / "runs"


def drive_archive() -> Path | None:
    """The MVTec AD archive's place on a mounted Google Drive (kept there after the first download), else None."""
    return DRIVE / "mvtec_anomaly_detection.tar.xz" if DRIVE.is_dir() else None


def _hub_answers(backbone: str) -> bool:
    """Whether timm can fetch ``backbone``'s ImageNet weights from the hub now (downloads them once)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    from .features import build_extractor

    try:
        build_extractor(backbone, pretrained=True)
    except Exception:  # noqa: BLE001 — no network, hub down, rate limit: all mean "use something else"
        return False
    return True


def setup(seed: int = 0, verbose: bool = True) -> BookContext:
    """Seed everything, pick the device and the mode, find or generate the data. Prints a short summary."""
    seed_everything(seed)
    device = pick_device("auto")
    mode = os.environ.get("UFLOW_BOOK_MODE") or ("full" if device.type == "cuda" else "ci")
    if mode not in MODES:
        raise ValueError(f"UFLOW_BOOK_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    weights = default_weights_file("mobilenetv2")
    if mode != "full":
        # one thread: identical numbers on every CPU machine (reduction order), and no thread thrashing on
        # small models when the machine is shared
        torch.set_num_threads(1)
    hub = mode == "full" or (weights is None and mode == "ci" and _hub_answers("mobilenetv2"))
    mvtec = smoke_mvtec_root(seed) if mode == "smoke" else find_mvtec_root()
    ctx = BookContext(mode, device, seed, generated_dataset(seed), "mobilenetv2", weights, mvtec, hub)
    if verbose:
        source = ("offline ImageNet file" if weights else "ImageNet, from the hub" if hub else
                  "RANDOM (no offline file, hub unreachable): features, and every number below, are much weaker")
        print(f"mode: {mode} | device: {device.type} | MobileNetV2 weights: {source} | "
              f"real MVTec AD: {'generated stand-in (smoke)' if mode == 'smoke' else 'found' if mvtec else 'not found'}")
        if mode == "smoke":
            print("Smoke mode: the paper-scale code path at toy scale (MS-CaiT with "
                  f"{SMOKE_CAIT_BLOCKS[0]}+{SMOKE_CAIT_BLOCKS[1]} random blocks, generated categories "
                  f"{', '.join(SMOKE_CATEGORIES)}): it checks that the path runs; its numbers mean nothing.")
        elif device.type == "cpu":
            print("No GPU: running the small CPU version. In Colab choose Runtime > Change runtime type > GPU.")
    return ctx
