r"""Frozen, pretrained multi-scale feature extractors (book chapter 1).

Every extractor takes RGB images in [0, 1] of shape ``(B, 3, S, S)``, normalises them itself (each backbone
has its own mean/std) and returns a list of feature maps **fine → coarse**, each ``(B, C_s, S/r_s, S/r_s)``
for the strides ``r_s`` in ``extractor.strides``. They are frozen (``requires_grad=False``) and always in eval
mode, so their outputs can be computed once and cached (:mod:`uflow_lib.feature_cache`).

- ``mcait`` — MS-CaiT, the paper's extractor: ``cait_m48_448`` patch embedding + position embedding, blocks
  0..40 and the model's final LayerNorm on the 448 image → 768×28×28; ``cait_s24_224`` blocks 0..20 + norm on
  the bicubic 224 resize of the *normalised* image → 384×14×14. Strides 16 and 32.
- ``resnet18``, ``wide_resnet50_2`` — timm ``features_only``, ``out_indices=(1, 2, 3)``: strides 4/8/16;
  WideResNet50-2 with torchvision's weights (``wide_resnet50_2.tv_in1k``), the ones the field uses.
- ``mobilenetv2`` — the offline ImageNet MobileNetV2 of ``../shared/weights`` (converted from TensorFlow:
  ``pad_type="same"``, mean = std = 0.5), ``out_indices=(2, 3)``: strides 8/16 with 32/96 channels.

Pretrained weights always load through timm's real ``pretrained=True`` path: from the hub (Colab) or, with
``weights=FILE``, from a local state dict via ``pretrained_cfg_overlay=dict(file=FILE)`` (offline machines,
tests). ``pretrained=False`` gives random weights (tests, CI without ``../shared``). A local file is first checked to
hold every tensor the features-only model uses, with the right shapes, and no keys foreign to the architecture
(timm loads features-only models with ``strict=False``, which would leave a wrong file's backbone random).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FeatureExtractor",
    "MSCaiT",
    "TimmCNN",
    "build_extractor",
    "default_weights_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Name of the offline MobileNetV2 state dict in ``../shared/weights`` (see its README).
MOBILENETV2_FILE = "mobilenetv2_100_imagenet_from_tflite.pth"


@dataclass(frozen=True)
class BackboneSpec:
    """What the library needs to know about one backbone."""

    timm_name: str
    out_indices: tuple[int, ...]
    default_input_size: int
    #: extra ``timm.create_model`` arguments when a local weights file is given
    file_kwargs: dict = field(default_factory=dict)
    #: mean/std that go with the local weights file (None: timm's pretrained config)
    file_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", (1, 2, 3), 256),
    # torchvision's ImageNet weights, as PaDiM, CFLOW-AD, MSFlow and SANFlow use (timm's untagged default is
    # another training recipe, racm_in1k)
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2.tv_in1k", (1, 2, 3), 256),
    # The shared file is a TensorFlow conversion: same padding and mean = std = 0.5 (weights/README.md).
    "mobilenetv2": BackboneSpec(
        "mobilenetv2_100", (2, 3), 256, file_kwargs=dict(pad_type="same"), file_mean_std=((0.5,) * 3, (0.5,) * 3)
    ),
    "mcait": BackboneSpec("cait_m48_448", (), 448),
}


def default_weights_file(backbone: str, search_from: Path | None = None) -> Path | None:
    """The offline weights file for ``backbone`` in a ``shared/weights`` folder beside the repository, if any.

    Looks in ``<dir>/shared/weights`` and ``<dir>/../shared/weights`` for ``dir`` = ``search_from`` (default: the
    current directory) and its parents. Only ``mobilenetv2`` has an offline file.
    """
    if backbone != "mobilenetv2":
        return None
    start = (search_from or Path.cwd()).resolve()
    for d in [start, *start.parents]:
        for candidate in (d / "shared" / "weights" / MOBILENETV2_FILE, d.parent / "shared" / "weights" / MOBILENETV2_FILE):
            if candidate.is_file():
                return candidate
    return None


@contextmanager
def _quiet_timm_loading():
    """Silence timm's 'Unexpected keys' log when a classification state dict feeds a features-only model."""
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_weights_file(name: str, weights: Path, kwargs: dict) -> None:
    """Refuse a weights file that is not ``name``'s state dict (timm would load it with ``strict=False`` for a
    features-only model, leaving the backbone silently random). The models compared with are built on the meta
    device: no memory, no time."""
    from .validation import check_state_dict_file

    with torch.device("meta"):
        used = timm.create_model(name, pretrained=False, **kwargs).state_dict()
        full_kwargs = {k: v for k, v in kwargs.items() if k not in ("features_only", "out_indices")}
        full = timm.create_model(name, pretrained=False, **full_kwargs).state_dict()
    check_state_dict_file(weights, full, used, name)


def _create(
    name: str, pretrained: bool, weights: str | Path | None, mean_std=None, **kwargs
) -> nn.Module:
    """``timm.create_model`` through the real pretrained path, from the hub or a local file."""
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"weights file {weights} not found; pass an existing state dict, or omit it to download from the "
                f"hub (needs internet), or use pretrained=False for random weights"
            )
        _check_weights_file(name, weights, kwargs)
        overlay = dict(file=str(weights))
        if mean_std is not None:
            overlay.update(mean=mean_std[0], std=mean_std[1])
        kwargs["pretrained_cfg_overlay"] = overlay
    with _quiet_timm_loading():
        return timm.create_model(name, pretrained=pretrained or weights is not None, **kwargs)


class FeatureExtractor(nn.Module):
    """Base class: frozen, eval-mode, normalises its [0, 1] input itself.

    Attributes
    ----------
    channels : list[int]
        Channels per scale, fine → coarse.
    strides : list[int]
        Downsampling factor per scale w.r.t. the input.
    """

    channels: list[int]
    strides: list[int]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "FeatureExtractor":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":  # always eval: frozen batch norms, no dropout
        return super().train(False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [0, 1] → normalised ``(B, 3, S, S)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, S, S), got {tuple(images.shape)}")
        return (images - self.mean) / self.std

    def feature_sizes(self, input_size: int) -> list[int]:
        """Spatial size of each feature map for a square input of side ``input_size``."""
        return [input_size // r for r in self.strides]


class TimmCNN(FeatureExtractor):
    """A timm CNN with ``features_only=True`` (ResNets, MobileNetV2)."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__(mean, std)
        self.model = model
        self.channels = list(model.feature_info.channels())
        self.strides = list(model.feature_info.reduction())
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` in [0, 1] → list of ``(B, C_s, S/r_s, S/r_s)``, fine → coarse."""
        return list(self.model(self.normalise(images)))


class MSCaiT(FeatureExtractor):
    """MS-CaiT: two CaiT transformers at 448 and 224, 768×28×28 and 384×14×14 for a 448 input.

    Parameters
    ----------
    fine, coarse : nn.Module
        timm CaiT models (``cait_m48_448``, ``cait_s24_224``).
    fine_blocks, coarse_blocks : int
        Self-attention blocks used (paper: 41 and 21, i.e. blocks 0..40 and 0..20).
    """

    def __init__(self, fine: nn.Module, coarse: nn.Module, fine_blocks: int = 41, coarse_blocks: int = 21) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.fine, self.coarse = fine, coarse
        self.fine_blocks, self.coarse_blocks = fine_blocks, coarse_blocks
        # Drop what is never used (class-attention blocks, head) so it takes no memory.
        for m in (self.fine, self.coarse):
            m.blocks_token_only = None
            m.head = nn.Identity()
        self.fine.blocks = self.fine.blocks[:fine_blocks]
        self.coarse.blocks = self.coarse.blocks[:coarse_blocks]
        self.channels = [fine.embed_dim, coarse.embed_dim]
        self.strides = [16, 32]
        self.freeze()

    @staticmethod
    def _tokens_to_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, S, S)`` → patch embedding + position embedding → blocks → norm → ``(B, C, S/16, S/16)``."""
        B = x.shape[0]
        x = model.patch_embed(x)  # (B, N, C)
        x = model.pos_drop(x + model.pos_embed)
        x = model.norm(model.blocks(x))  # (B, N, C), no class token anywhere
        side = int(round(x.shape[1] ** 0.5))
        return x.transpose(1, 2).reshape(B, -1, side, side)  # (B, C, side, side)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, 448, 448)`` in [0, 1] → ``[(B, 768, 28, 28), (B, 384, 14, 14)]``."""
        x = self.normalise(images)
        if x.shape[-1] != 448 or x.shape[-2] != 448:
            raise ValueError(f"MS-CaiT needs 448×448 inputs (CaiT position embeddings are fixed), got {tuple(x.shape)}")
        x224 = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)  # (B, 3, 224, 224)
        return [self._tokens_to_map(self.fine, x), self._tokens_to_map(self.coarse, x224)]


def build_extractor(
    backbone: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    cait_blocks: tuple[int, int] = (41, 21),
    out_indices: Sequence[int] | None = None,
) -> FeatureExtractor:
    """Build a frozen feature extractor.

    Parameters
    ----------
    backbone : {"mcait", "resnet18", "wide_resnet50_2", "mobilenetv2"}
    pretrained : bool
        Load ImageNet weights through timm's pretrained path (hub unless ``weights`` is given).
        ``False``: random weights (fast tests, machines with neither internet nor the weights file).
    weights : path, optional
        Local state dict for the backbone (for ``mcait``: not supported, the two CaiTs come from the hub).
    cait_blocks : (int, int)
        MS-CaiT blocks used at 448 and 224 (paper: 41, 21). Tests pass fewer to check the wiring quickly.
    out_indices : sequence of int, optional
        CNN stages to return (timm ``features_only`` indices; 0 = stride 2, ..., 4 = stride 32). Default: the
        backbone's U-Flow stages (:data:`BACKBONES`). MSFlow and SANFlow pick their own
        (:mod:`uflow_lib.methods`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    if backbone == "mcait":
        if weights is not None:
            raise ValueError("a local weights file is not supported for mcait (two models); it loads from the hub")
        if out_indices is not None:
            raise ValueError(f"out_indices={list(out_indices)} applies to CNN backbones only; MS-CaiT always "
                             f"returns its two transformer maps")
        # pretrained: build the full models (strict state-dict loading) and keep the first blocks;
        # random: build only the blocks that are used
        depth = (lambda n: {}) if pretrained else (lambda n: dict(depth=n))
        fine = _create("cait_m48_448", pretrained, None, **depth(cait_blocks[0]))
        coarse = _create("cait_s24_224", pretrained, None, **depth(cait_blocks[1]))
        return MSCaiT(fine, coarse, *cait_blocks)
    indices = tuple(int(i) for i in (spec.out_indices if out_indices is None else out_indices))
    if not indices or any(i not in range(5) for i in indices) or list(indices) != sorted(set(indices)):
        raise ValueError(f"out_indices must be increasing stage indices in 0..4 (stride 2..32), got {list(indices)}")
    kwargs = dict(features_only=True, out_indices=indices)
    if weights is not None or (not pretrained and spec.file_kwargs):
        # random weights take the same architecture as the offline file so shapes and code paths agree
        kwargs.update(spec.file_kwargs)
    model = _create(spec.timm_name, pretrained, weights, spec.file_mean_std if weights else None, **kwargs)
    cfg = model.pretrained_cfg
    return TimmCNN(model, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
