"""The typed configuration of a training run, which the command line parses into.

Fields left ``None`` are filled from the method's recipe (epochs, batch size, learning rate: the paper's
per-category table for U-Flow, see :mod:`uflow_lib.methods`) and from the backbone (input size) by
:func:`uflow_lib.methods.resolve`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["TrainConfig", "DEFAULT_INPUT_SIZE", "LAYOUTS", "FOLDER_OPTIONS"]

#: Input size per backbone: MS-CaiT needs 448 (fixed position embeddings); CNNs run at 256 as in the paper.
DEFAULT_INPUT_SIZE = {"mcait": 448, "resnet18": 256, "wide_resnet50_2": 256, "mobilenetv2": 256}

#: Dataset layouts (uflow_lib.layouts): MVTec AD, BTAD, a folder of normal and abnormal images.
LAYOUTS: tuple[str, ...] = ("mvtec", "btad", "folder")

#: The fields of the folder layout (``--normal-dir`` ...), all None or default outside it.
FOLDER_OPTIONS: tuple[str, ...] = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "normal_split",
                                   "split_seed")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` fields are filled by :func:`uflow_lib.methods.resolve`.

    The data: ``data``/``category`` (a root and its category folder) in the ``mvtec`` or ``btad`` layout, or the
    folder options (``normal_dir`` ...) in the ``folder`` layout, where ``data`` is None and ``category`` names
    the run (default: the normal folder's name). :func:`uflow_lib.layouts.resolve_layout` decides ``"auto"``.
    """

    #: dataset root holding the category folders (None in the folder layout)
    data: str | None
    #: category (product) folder under ``data``; folder layout: the run's name (None: the normal folder's name)
    category: str | None
    out: str
    #: "uflow" (the paper), "msflow" or "sanflow", or the baselines "patchcore" and "padim" (book chapter 7); see
    #: uflow_lib.methods.METHODS
    method: str = "uflow"
    backbone: str = "mcait"
    #: MS-CaiT only: self-attention blocks used at 448 and 224; None → the paper's (41, 21). Fewer, with random
    #: weights, run the real architecture quickly (the book's smoke mode, tests)
    cait_blocks: list[int] | None = None
    #: local weights file (offline); None → hub (Colab) unless ``pretrained`` is False
    weights: str | None = None
    #: False → random backbone weights (tests; machines with neither internet nor a weights file)
    pretrained: bool = True
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    #: Adam's L2 weight decay (U-Flow), paper: 1e-5
    weight_decay: float = 1e-5
    #: SANFlow only: side of the image the variance network sees (0: the full input; 64 keeps a CPU epoch near
    #: 23 s on bottle, one thread; at 128 the network alone takes two thirds of a step)
    variance_size: int = 64
    #: PatchCore only: fraction of the training patch features the greedy coreset keeps in the memory bank (1: all)
    coreset_ratio: float = 0.1
    #: PaDiM only: size d of the random channel subset, paper: 100 (ResNet18)
    padim_channels: int = 100
    #: U-Flow only: AllInOneBlocks per flow stage, paper: 4
    flow_steps: int = 4
    #: U-Flow only, an option beside the paper: kernel side of each flow step's subnet, one per step (None: the
    #: paper's 3, 1, 3, 1, ...; e.g. [1, 1, 1, 1] keeps a defect's score from spreading to its neighbours)
    subnet_kernels: list[int] | None = None
    #: U-Flow on a CNN backbone only, an option beside the paper: the feature strides read, fine → coarse, each
    #: twice the previous (None: the backbone's default, 8/16 for mobilenetv2; e.g. [4, 8, 16])
    strides: list[int] | None = None
    #: U-Flow only: feature normalisation (see uflow_lib.methods.uflow); None → "identity" for mcait,
    #: "standardize" for CNNs
    norm: str | None = None
    seed: int = 0
    #: stop cleanly at the first epoch boundary after this many minutes of training (None: no limit)
    max_minutes: float | None = None
    #: evaluate on the test set every N epochs to track best-on-test (0: never; the paper's protocol is last epoch)
    eval_every: int = 0
    #: write last.pt every N epochs (and at the end, and when max_minutes stops the run); a crash loses < N epochs
    checkpoint_every: int = 1
    #: also write last.pt when this many minutes have passed since the last write (None: only every N epochs)
    checkpoint_minutes: float | None = None
    #: folder for cached features (None: computed once per run, in memory)
    cache_dir: str | None = None
    #: recompute features at every step instead of caching (only to measure what caching saves)
    recompute_features: bool = False
    device: str = "auto"
    num_workers: int = 0
    #: "auto" (detected from the folders), or one of LAYOUTS; training saves the decided one. Checkpoints from
    #: before layouts existed hold "mvtec" (TrainConfig.from_dict)
    layout: str = "auto"
    #: folder layout: the normal images (training, and the held-out part of normal_split for testing)
    normal_dir: str | None = None
    #: folder layout: the anomalous test images
    abnormal_dir: str | None = None
    #: folder layout: masks of the anomalous images, <stem>.<ext> or <stem>_mask.<ext> (None: image labels only)
    mask_dir: str | None = None
    #: folder layout: the normal test images (or normal_split)
    normal_test_dir: str | None = None
    #: folder layout: fraction of normal_dir held out as normal test images (or normal_test_dir)
    normal_split: float | None = None
    #: folder layout: seed of the normal_split hold-out (independent of ``seed``, so seeds share a test set)
    split_seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # paths are stored as strings: checkpoints load with weights_only=True, which refuses pathlib objects
        for name in ("data", "out", "weights", "cache_dir", "normal_dir", "abnormal_dir", "mask_dir",
                     "normal_test_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))

        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"layout={self.layout!r}: expected 'auto' or one of {LAYOUTS}")
        if self.normal_split is not None and not 0.0 < self.normal_split < 1.0:
            raise ValueError(f"normal_split={self.normal_split!r}: expected a fraction strictly between 0 and 1, "
                             "e.g. 0.2")
        if self.cait_blocks is not None:
            self.cait_blocks = [int(b) for b in self.cait_blocks]
            if len(self.cait_blocks) != 2 or min(self.cait_blocks) < 1:
                raise ValueError(f"cait_blocks must be two positive block counts (448, 224), got {self.cait_blocks}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0 or None, got {self.checkpoint_minutes!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config a checkpoint saved. Checkpoints from before MSFlow and SANFlow joined carry no ``method``:
        they hold U-Flow models; those from before layouts carry no ``layout``: their data is in MVTec's."""
        names = {f.name for f in fields(cls)}
        return cls(**{"method": "uflow", "layout": "mvtec", **{k: v for k, v in d.items() if k in names}})
