"""Evaluation on the test split: maps at 256×256, then the paper's metrics (book chapters 4–7).

``predict_maps`` runs a model of any method (:mod:`uflow_lib.methods`, recognised from the model) once over a dataset and keeps everything
later steps need (score maps, −log10 NFA maps, masks, labels, image scores, mean z²); ``compute_metrics`` turns
that into numbers, the same code for every method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics as M
from .checkpoint import load_trained
from .config import TrainConfig
from .data import MVTecDataset
from .methods import method_of, resolve
from .nfa import tree_nfa
from .nfa_block import block_nfa
from .runtime import pick_device
from .scoring import mean_z2

__all__ = ["default_nfa_scales", "latent_sides", "predict_maps", "compute_metrics", "evaluate_model", "evaluate_checkpoint", "EVAL_SIZE"]

#: The paper's evaluation resolution.
EVAL_SIZE = 256


def default_nfa_scales(backbone: str, n_scales: int, sizes: Sequence[int] | None = None) -> list[int] | None:
    """Scales the tree NFA uses by default (0 = finest); ``None`` means all of them.

    ``sizes`` (latent sides, fine → coarse), when given, picks for CNN backbones the one scale whose side is
    nearest 16 (the coarser one on a tie) instead of the coarsest: U-Flow's coarsest latents are 16² at 256 for
    every CNN backbone, while MSFlow's and SANFlow's go down to 8² (chapter 7 measures both).

    MS-CaiT: both scales, as in the paper (28² + 14²: log10 N_T ≈ 477, and 816 channels per pixel make a
    region's Chernoff bound steep). CNN backbones: only the coarsest scale. Their fine maps are large and thin
    (MobileNetV2: 44 channels at 32², log10 N_T ≈ 623 with both scales, 155 with the 16² scale alone), so
    adding them costs more in the number of tests than it brings (chapter 5 measures the choices on bottle,
    benchmarks/results/bottle_mobilenetv2.md).
    """
    if backbone == "mcait" or n_scales == 1:
        return None
    if sizes is None:
        return [n_scales - 1]
    return [min(range(n_scales), key=lambda i: (abs(sizes[i] - 16), -i))]


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
    keep_latents: bool = False,
) -> dict:
    """Run ``extractor`` + ``model`` (of any method: :func:`uflow_lib.methods.method_of`) over ``dataset``.

    Returns a dict of numpy arrays: ``score`` (N, H, W) the method's pixel score map (for U-Flow the
    non-saturating likelihood score), ``image_score`` (N,), ``mean_z2`` (N,) of the NFA latents, ``mask``
    (N, H, W) uint8, ``label`` (N,), ``nfa`` (N, H, W) = −log10 NFA (when ``nfa`` is ``"tree"`` or
    ``"block"``; ``None`` skips it), and the method's extra parts (MSFlow: ``score_pro``; SANFlow:
    ``log_prob<l>``, ``variance<l>``). ``keep_latents``: also ``latents``, the NFA latents of the whole set
    (list over scales of ``(N, C_s, h_s, w_s)`` float32 tensors; for SANFlow z/σ).
    """
    if nfa not in (None, "tree", "block"):
        raise ValueError(f"nfa must be 'tree', 'block' or None, got {nfa!r}")
    flow_method = method_of(model)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out: dict[str, list] = {k: [] for k in ("mean_z2", "mask", "label", "nfa")}
    latents: list[list[torch.Tensor]] = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        z, parts = flow_method.infer(model, extractor, batch["image"].to(device), out_size)
        for k, v in parts.items():
            out.setdefault(k, []).append(v.numpy())
        out["mean_z2"].append(mean_z2(z).numpy())
        if keep_latents:
            latents.append(z)
        out["mask"].append(batch["mask"][:, 0].numpy().astype(np.uint8))
        out["label"].append(np.asarray(batch["label"]))
        if nfa == "tree":
            out["nfa"].append(tree_nfa(z, out_size, bound=nfa_bound, scales=nfa_scales)[:, 0].float().numpy())
        elif nfa == "block":
            out["nfa"].append(block_nfa(z, out_size)[:, 0].float().numpy())
    pred = flow_method.finalize({k: np.concatenate(v) for k, v in out.items() if v}, out_size)
    if keep_latents:
        pred["latents"] = [torch.cat(scale) for scale in zip(*latents)]
    return pred


def compute_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics on 0–1 scale: pixel/image AUROC, AUPRO (FPR ≤ 0.3), mean z² of normal images, mIoU (with NFA).

    AUPRO is computed on ``score_pro`` where the method has one (MSFlow's product map, as its paper), and then
    also on ``score`` as ``aupro_pixel_map``.
    """
    res = dict(
        pixel_auroc=M.pixel_auroc(pred["score"], pred["mask"]),
        image_auroc=M.image_auroc(pred["image_score"], pred["label"]),
        aupro=M.aupro(pred.get("score_pro", pred["score"]), pred["mask"]),
        mean_z2_normal=float(pred["mean_z2"][pred["label"] == 0].mean()) if (pred["label"] == 0).any() else float("nan"),
    )
    if "score_pro" in pred:
        res["aupro_pixel_map"] = M.aupro(pred["score"], pred["mask"])
    if "nfa" in pred:
        res["miou_auto"] = M.miou(pred["nfa"] > 0, pred["mask"])
        res["miou_oracle"], res["oracle_threshold"] = M.oracle_miou(pred["nfa"], pred["mask"])
        res["miou_oracle_likelihood"], _ = M.oracle_miou(pred["score"], pred["mask"])
        res["false_detections_normal"] = float(((pred["nfa"] > 0).reshape(len(pred["label"]), -1).any(1)
                                                & (pred["label"] == 0)).sum())
    return {k: float(v) for k, v in res.items()}


def latent_sides(model: torch.nn.Module) -> list[int]:
    """Side of each NFA latent map of ``model`` (any method), fine → coarse."""
    return method_of(model).latent_sides(model)


def evaluate_model(
    model, extractor, cfg: TrainConfig, device="cpu", progress: bool = True, nfa: bool = True, **kwargs
) -> dict[str, float]:
    """Metrics of ``model`` on the test split of ``cfg.data/cfg.category``."""
    cfg = resolve(cfg)
    if method_of(model).name != cfg.method:
        raise ValueError(f"the model is a {method_of(model).name} model, but the config says {cfg.method}")
    dataset = MVTecDataset(cfg.data, cfg.category, "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
    if kwargs.get("nfa_scales") is None:
        kwargs["nfa_scales"] = default_nfa_scales(cfg.backbone, len(model.channels), latent_sides(model))
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
    res.update(epoch=int(ckpt["epoch"]), category=cfg.category, backbone=cfg.backbone, method=cfg.method)
    return res
