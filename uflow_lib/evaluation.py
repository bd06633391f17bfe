"""Evaluation on the test split: maps at 256×256, then the paper's metrics (book chapters 4–6).

``predict_maps`` runs the model once over a dataset and keeps everything later steps need (score maps,
−log10 NFA maps, masks, labels, image scores, mean z²); ``compute_metrics`` turns that into numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics as M
from .checkpoint import load_trained, pick_device
from .config import TrainConfig
from .data import MVTecDataset
from .scoring import anomaly_score_map, image_scores, mean_z2

__all__ = ["default_nfa_scales", "predict_maps", "compute_metrics", "evaluate_model", "evaluate_checkpoint", "EVAL_SIZE"]

#: The paper's evaluation resolution.
EVAL_SIZE = 256


def default_nfa_scales(backbone: str, n_scales: int) -> list[int] | None:
    """Scales the tree NFA uses by default (0 = finest); ``None`` means all of them.

    MS-CaiT: both scales, as in the paper (28² + 14²: log10 N_T ≈ 477, and 816 channels per pixel make a
    region's Chernoff bound steep). CNN backbones: only the coarsest scale. Their fine maps are large and thin
    (MobileNetV2: 44 channels at 32², log10 N_T ≈ 623 with both scales, 155 with the 16² scale alone), so
    adding them costs more in the number of tests than it brings: on bottle the automatic mIoU is 0.425 with
    the 16² scale alone, 0.299 with both, 0.249 with the 32² one (benchmarks/results/bottle_mobilenetv2.md).
    """
    return None if backbone == "mcait" or n_scales == 1 else [n_scales - 1]


@torch.no_grad()
def predict_maps(
    model: torch.nn.Module,
    extractor: torch.nn.Module,
    dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 5,
    nfa: str | None = "tree",
    nfa_bound: str = "valid",
    nfa_scales: Sequence[int] | None = None,
    out_size: int = EVAL_SIZE,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``extractor`` + ``model`` over ``dataset``.

    Returns a dict of numpy arrays: ``score`` (N, H, W) non-saturating likelihood score map, ``image_score``
    (N,), ``mean_z2`` (N,), ``mask`` (N, H, W) uint8, ``label`` (N,), and ``nfa`` (N, H, W) = −log10 NFA
    (when ``nfa`` is ``"tree"`` or ``"block"``; ``None`` skips it).
    """
    if nfa is not None:
        from .nfa import block_nfa, tree_nfa

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out: dict[str, list] = {k: [] for k in ("score", "image_score", "mean_z2", "mask", "label", "nfa")}
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        z, _ = model(extractor(batch["image"].to(device)))
        z = [t.float().cpu() for t in z]
        s = anomaly_score_map(z, out_size)  # (B, 1, H, W) float64
        out["score"].append(s[:, 0].float().numpy())
        out["image_score"].append(image_scores(s).numpy())
        out["mean_z2"].append(mean_z2(z).numpy())
        out["mask"].append(batch["mask"][:, 0].numpy().astype(np.uint8))
        out["label"].append(np.asarray(batch["label"]))
        if nfa == "tree":
            out["nfa"].append(tree_nfa(z, out_size, bound=nfa_bound, scales=nfa_scales)[:, 0].float().numpy())
        elif nfa == "block":
            out["nfa"].append(block_nfa(z, out_size)[:, 0].float().numpy())
        elif nfa is not None:
            raise ValueError(f"nfa must be 'tree', 'block' or None, got {nfa!r}")
    return {k: np.concatenate(v) for k, v in out.items() if v}


def compute_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics on 0–1 scale: pixel/image AUROC, AUPRO (FPR ≤ 0.3), mean z² of normal images, mIoU (with NFA)."""
    res = dict(
        pixel_auroc=M.pixel_auroc(pred["score"], pred["mask"]),
        image_auroc=M.image_auroc(pred["image_score"], pred["label"]),
        aupro=M.aupro(pred["score"], pred["mask"]),
        mean_z2_normal=float(pred["mean_z2"][pred["label"] == 0].mean()) if (pred["label"] == 0).any() else float("nan"),
    )
    if "nfa" in pred:
        res["miou_auto"] = M.miou(pred["nfa"] > 0, pred["mask"])
        res["miou_oracle"], res["oracle_threshold"] = M.oracle_miou(pred["nfa"], pred["mask"])
        res["miou_oracle_likelihood"], _ = M.oracle_miou(pred["score"], pred["mask"])
        res["false_detections_normal"] = float(((pred["nfa"] > 0).reshape(len(pred["label"]), -1).any(1)
                                                & (pred["label"] == 0)).sum())
    return {k: float(v) for k, v in res.items()}


def evaluate_model(
    model, extractor, cfg: TrainConfig, device="cpu", progress: bool = True, nfa: bool = True, **kwargs
) -> dict[str, float]:
    """Metrics of ``model`` on the test split of ``cfg.data/cfg.category``."""
    cfg = cfg.resolved()
    dataset = MVTecDataset(cfg.data, cfg.category, "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
    if kwargs.get("nfa_scales") is None:
        kwargs["nfa_scales"] = default_nfa_scales(cfg.backbone, len(model.channels))
    pred = predict_maps(model, extractor, dataset, device, nfa="tree" if nfa else None, progress=progress, **kwargs)
    return compute_metrics(pred)


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    category: str | None = None,
    device: str = "auto",
    weights: str | None = None,
    progress: bool = True,
    **kwargs,
) -> dict[str, float | int | str]:
    """Load a checkpoint and evaluate it (last epoch: the honest protocol). Data/category default to the saved ones."""
    dev = pick_device(device)
    cfg, extractor, model, ckpt = load_trained(checkpoint, dev, weights)
    if data is not None:
        cfg.data = data
    if category is not None:
        cfg.category = category
    res: dict = evaluate_model(model, extractor, cfg, dev, progress, **kwargs)
    res.update(epoch=int(ckpt["epoch"]), category=cfg.category, backbone=cfg.backbone)
    return res
