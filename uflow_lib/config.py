"""Training settings: the paper's per-category table and the typed configuration the CLI parses into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

__all__ = ["CategorySettings", "CATEGORY_SETTINGS", "CI_SETTINGS", "METHODS", "METHOD_SETTINGS", "TrainConfig",
           "DEFAULT_INPUT_SIZE", "ci_config"]

#: The flow methods the library trains (``--method``); see :mod:`uflow_lib.methods`.
METHODS = ("uflow", "msflow", "sanflow")


@dataclass(frozen=True)
class CategorySettings:
    epochs: int
    batch_size: int
    lr: float


#: The authors' per-category settings (tuned for MS-CaiT at 448; used for every backbone), paper section 5.
CATEGORY_SETTINGS: dict[str, CategorySettings] = {
    "bottle": CategorySettings(200, 23, 1.1290e-4),
    "cable": CategorySettings(200, 14, 1.6160e-3),
    "capsule": CategorySettings(200, 14, 1.2119e-3),
    "carpet": CategorySettings(200, 13, 3.1634e-5),
    "grid": CategorySettings(500, 12, 3.6225e-5),
    "hazelnut": CategorySettings(500, 21, 1.3269e-3),
    "leather": CategorySettings(500, 15, 6.1247e-4),
    "metal_nut": CategorySettings(200, 11, 8.1489e-4),
    "pill": CategorySettings(200, 11, 1.0756e-3),
    "screw": CategorySettings(500, 11, 4.1560e-4),
    "tile": CategorySettings(200, 30, 6.0458e-3),
    "toothbrush": CategorySettings(200, 21, 1.2873e-4),
    "transistor": CategorySettings(400, 20, 1.1213e-3),
    "wood": CategorySettings(500, 22, 2.4665e-4),
    "zipper": CategorySettings(200, 24, 4.5525e-5),
}
#: Categories not in the table (e.g. the generated dataset).
DEFAULT_SETTINGS = CategorySettings(200, 8, 1e-4)

#: The CPU ("CI") setting for the generated dataset with MobileNetV2: 30 epochs of 60 images reach pixel AUROC
#: ≈ 0.97 in well under 2 minutes (benchmarks/results/generated.md); the paper's lr 1e-4 would need ~10× more epochs.
CI_SETTINGS = CategorySettings(30, 8, 1e-3)

#: MSFlow's and SANFlow's own recipes (other-flows.md), the same for every category: MSFlow 100 epochs, batch 8,
#: Adam 1e-4; SANFlow batch 8, Adam 5e-4, the authors' 25 × 8 = 200 epochs.
METHOD_SETTINGS: dict[str, CategorySettings] = {
    "msflow": CategorySettings(100, 8, 1e-4),
    "sanflow": CategorySettings(200, 8, 5e-4),
}
#: The CPU setting of each method on the generated dataset (uflow_lib.methods, book chapter 7): like U-Flow's,
#: 10× the recipe's learning rate so that a few hundred steps suffice; SANFlow also shows its variance network
#: 64-px images (:data:`CI_VARIANCE_SIZE`), which is most of its cost per step.
CI_METHOD_SETTINGS: dict[str, CategorySettings] = {
    "uflow": CI_SETTINGS,
    "msflow": CategorySettings(30, 8, 1e-3),
    "sanflow": CategorySettings(10, 8, 2e-3),
}
CI_VARIANCE_SIZE = 64

#: Input size per backbone: MS-CaiT needs 448 (fixed position embeddings); CNNs run at 256 as in the paper.
DEFAULT_INPUT_SIZE = {"mcait": 448, "resnet18": 256, "wide_resnet50_2": 256, "mobilenetv2": 256}


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` fields are filled by :meth:`resolved`."""

    data: str
    category: str
    out: str
    #: "uflow" (the paper), "msflow" or "sanflow" (book chapter 7)
    method: str = "uflow"
    backbone: str = "mcait"
    #: local weights file (offline); None → hub (Colab) unless ``pretrained`` is False
    weights: str | None = None
    #: False → random backbone weights (tests; machines with neither internet nor a weights file)
    pretrained: bool = True
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    #: Adam's L2 weight decay, paper: 1e-5
    weight_decay: float = 1e-5
    #: SANFlow only: side of the image the variance network sees (0: the full input; 128 keeps a CPU epoch short)
    variance_size: int = 128
    #: AllInOneBlocks per flow stage, paper: 4
    flow_steps: int = 4
    #: feature normalisation (see uflow_lib.model); None → "identity" for mcait, "standardize" for CNNs
    norm: str | None = None
    seed: int = 0
    #: stop cleanly at the first epoch boundary after this many minutes of training (None: no limit)
    max_minutes: float | None = None
    #: evaluate on the test set every N epochs to track best-on-test (0: never; the paper's protocol is last epoch)
    eval_every: int = 0
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
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` default filled from the per-category table and the backbone."""
        from .model import default_norm

        if self.method == "uflow":
            table = CATEGORY_SETTINGS.get(self.category, DEFAULT_SETTINGS)
        else:
            table = METHOD_SETTINGS[self.method]
        return replace(
            self,
            input_size=self.input_size or DEFAULT_INPUT_SIZE.get(self.backbone, 256),
            epochs=self.epochs if self.epochs is not None else table.epochs,
            batch_size=self.batch_size or table.batch_size,
            lr=self.lr or table.lr,
            norm=self.norm or (default_norm(self.backbone) if self.method == "uflow" else "identity"),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def architecture(self) -> dict:
        """The settings a checkpoint's weights depend on (a resumed run must match them)."""
        r = self.resolved()
        arch = dict(method=r.method, backbone=r.backbone, input_size=r.input_size, seed=r.seed)
        if r.method == "uflow":
            arch.update(flow_steps=r.flow_steps, norm=r.norm)
        if r.method == "sanflow":
            arch.update(variance_size=r.variance_size)
        return arch


def ci_config(data: str, out: str, weights: str | None = None, category: str = "texture", method: str = "uflow",
              **overrides) -> TrainConfig:
    """The default CPU configuration on the generated dataset: MobileNetV2 at 256, :data:`CI_METHOD_SETTINGS`.

    ``weights``: the offline MobileNetV2 file; ``None`` → random backbone weights (much weaker features).
    """
    if method not in CI_METHOD_SETTINGS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    ci = CI_METHOD_SETTINGS[method]
    base = dict(data=str(data), category=category, out=str(out), method=method, backbone="mobilenetv2",
                weights=weights, pretrained=weights is not None, epochs=ci.epochs, batch_size=ci.batch_size,
                lr=ci.lr, device="cpu")
    if method == "sanflow":
        base["variance_size"] = CI_VARIANCE_SIZE
    base.update(overrides)
    return TrainConfig(**{k: (str(v) if k == "weights" and v is not None else v) for k, v in base.items()})
