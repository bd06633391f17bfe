"""The typed configuration of a training run, which the command line parses into.

Fields left ``None`` are filled from the method's recipe (epochs, batch size, learning rate: the paper's
per-category table for U-Flow, see :mod:`uflow_lib.methods`) and from the backbone (input size) by
:func:`uflow_lib.methods.resolve`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["TrainConfig", "DEFAULT_INPUT_SIZE"]

#: Input size per backbone: MS-CaiT needs 448 (fixed position embeddings); CNNs run at 256 as in the paper.
DEFAULT_INPUT_SIZE = {"mcait": 448, "resnet18": 256, "wide_resnet50_2": 256, "mobilenetv2": 256}


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` fields are filled by :func:`uflow_lib.methods.resolve`."""

    data: str
    category: str
    out: str
    #: "uflow" (the paper), "msflow" or "sanflow" (book chapter 7); see uflow_lib.methods.METHODS
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
    #: SANFlow only: side of the image the variance network sees (0: the full input; 128 keeps a CPU epoch short)
    variance_size: int = 128
    #: U-Flow only: AllInOneBlocks per flow stage, paper: 4
    flow_steps: int = 4
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
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # paths are stored as strings: checkpoints load with weights_only=True, which refuses pathlib objects
        for name in ("data", "out", "weights", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))

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
        they hold U-Flow models."""
        names = {f.name for f in fields(cls)}
        return cls(**{"method": "uflow", **{k: v for k, v in d.items() if k in names}})
