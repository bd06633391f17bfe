"""Evaluation on the test split: maps at 256×256, then the paper's metrics (book chapters 4–7).

``predict_maps`` runs a model of any method (:mod:`uflow_lib.methods`, recognised from the model) once over a dataset and keeps everything
later steps need (score maps, −log10 NFA maps, masks, labels, image scores, mean z²); ``compute_metrics`` turns
that into numbers, the same code for every method.

A test set without ground-truth masks (``dataset.has_masks`` False: an MVTec category without ``ground_truth/``,
BTAD without ``ground_truth/ko``, a folder layout without ``--mask-dir``) gives image AUROC only: every metric
that needs masks (:data:`MASK_METRICS`) is ``None``, never 0, and :func:`evaluate_model` says why in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics as M
from .checkpoint import load_trained
from .config import TrainConfig
from .data import AnomalyDataset
from .layouts import open_dataset, override_data, resolve_layout
from .methods import method_of, resolve
from .nfa import tree_nfa
from .nfa_block import block_nfa
from .runtime import pick_device
from .scoring import mean_z2

__all__ = ["nfa_not_applicable", "default_nfa_scales", "latent_sides", "predict_maps", "compute_metrics", "evaluate_model", "evaluate_checkpoint", "EVAL_SIZE",
           "MASK_METRICS", "NO_MASKS", "no_masks_note", "open_test_set"]

#: The paper's evaluation resolution.
EVAL_SIZE = 256

#: The metrics of :func:`compute_metrics` that need ground-truth masks (None without them).
MASK_METRICS: tuple[str, ...] = ("pixel_auroc", "aupro", "aupro_pixel_map", "miou_auto", "miou_oracle",
                                 "oracle_threshold", "miou_oracle_likelihood")

#: How a metric that needs masks is shown when the test set has none.
NO_MASKS = "n/a (no masks)"


def default_nfa_scales(backbone: str, n_scales: int, sizes: Sequence[int] | None = None) -> list[int] | None:
    """Scales the tree NFA uses by default (0 = finest); ``None`` means all of them.

    ``sizes`` (latent sides, fine → coarse), when given, picks for CNN backbones the one scale whose side is
    nearest 16 (the coarser one on a tie) instead of the coarsest: U-Flow's coarsest latents are 16² at 256 for
    every CNN backbone, while MSFlow's and SANFlow's go down to 8² (chapter 7 measures both).

    MS-CaiT: both scales, as in the paper (28² + 14²: log10 N_T ≈ 477, and 816 channels per pixel make a
    region's Chernoff bound steep). CNN backbones: one scale. Their fine maps are large and thin (MobileNetV2:
    44 channels at 32², log10 N_T ≈ 623 with both scales, 155 with the 16² scale alone), so adding them costs
    more in the number of tests than it brings. The rule was first read off bottle's *test* set (chapter 5,
    benchmarks/results/bottle_mobilenetv2.md: history, not a selection); a validation set of held-out training
    images with synthetic anomalies chose the same 16² scale for U-Flow, MSFlow and SANFlow
    (benchmarks/select_nfa_scale.py, benchmarks/results/nfa_scale_validation.md).
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
    (N, H, W) uint8 (``None`` when ``dataset.has_masks`` is False), ``label`` (N,), ``nfa`` (N, H, W) =
    −log10 NFA (when ``nfa`` is ``"tree"`` or ``"block"``; ``None`` skips it), and the method's extra parts
    (MSFlow: ``score_pro``; SANFlow: ``log_prob<l>``, ``variance<l>``). ``keep_latents``: also ``latents``, the
    NFA latents of the whole set (list over scales of ``(N, C_s, h_s, w_s)`` float32 tensors; for SANFlow z/σ).
    The baselines (PatchCore, PaDiM) have no latents: no ``mean_z2``, and ``nfa`` must be None.
    """
    if nfa not in (None, "tree", "block"):
        raise ValueError(f"nfa must be 'tree', 'block' or None, got {nfa!r}")
    flow_method = method_of(model)
    if nfa is not None and not flow_method.has_latents:
        raise ValueError(nfa_not_applicable(flow_method.name))
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    has_masks = getattr(dataset, "has_masks", True)
    out: dict[str, list] = {k: [] for k in ("mean_z2", "mask", "label", "nfa")}
    latents: list[list[torch.Tensor]] = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        z, parts = flow_method.infer(model, extractor, batch["image"].to(device), out_size)
        for k, v in parts.items():
            out.setdefault(k, []).append(v.numpy())
        if flow_method.has_latents:
            out["mean_z2"].append(mean_z2(z).numpy())
        if keep_latents:
            latents.append(z)
        if has_masks:
            out["mask"].append(batch["mask"][:, 0].numpy().astype(np.uint8))
        out["label"].append(np.asarray(batch["label"]))
        if nfa == "tree":
            out["nfa"].append(tree_nfa(z, out_size, bound=nfa_bound, scales=nfa_scales)[:, 0].float().numpy())
        elif nfa == "block":
            out["nfa"].append(block_nfa(z, out_size)[:, 0].float().numpy())
    pred = flow_method.finalize({k: np.concatenate(v) for k, v in out.items() if v}, out_size)
    if not has_masks:
        pred["mask"] = None
    if keep_latents:
        pred["latents"] = [torch.cat(scale) for scale in zip(*latents)]
    return pred


def compute_metrics(pred: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Metrics on 0–1 scale: pixel/image AUROC, AUPRO (FPR ≤ 0.3), mean z² of normal images (flows only), mIoU
    (with NFA).

    AUPRO is computed on ``score_pro`` where the method has one (MSFlow's product map, as its paper), and then
    also on ``score`` as ``aupro_pixel_map``. When ``pred["mask"]`` is None (no ground truth), the metrics of
    :data:`MASK_METRICS` are None.
    """
    masks = pred.get("mask")
    res: dict = dict(
        pixel_auroc=None if masks is None else M.pixel_auroc(pred["score"], masks),
        image_auroc=M.image_auroc(pred["image_score"], pred["label"]),
        aupro=None if masks is None else M.aupro(pred.get("score_pro", pred["score"]), masks),
    )
    if "mean_z2" in pred:  # the flows' latents (the baselines have none)
        res["mean_z2_normal"] = (float(pred["mean_z2"][pred["label"] == 0].mean()) if (pred["label"] == 0).any()
                                 else float("nan"))
    if "score_pro" in pred:
        res["aupro_pixel_map"] = None if masks is None else M.aupro(pred["score"], masks)
    if "nfa" in pred:
        res["miou_auto"] = res["miou_oracle"] = res["oracle_threshold"] = res["miou_oracle_likelihood"] = None
        if masks is not None:
            res["miou_auto"] = M.miou(pred["nfa"] > 0, masks)
            res["miou_oracle"], res["oracle_threshold"] = M.oracle_miou(pred["nfa"], masks)
            res["miou_oracle_likelihood"], _ = M.oracle_miou(pred["score"], masks)
        res["false_detections_normal"] = float(((pred["nfa"] > 0).reshape(len(pred["label"]), -1).any(1)
                                                & (pred["label"] == 0)).sum())
    return {k: None if v is None else float(v) for k, v in res.items()}


def nfa_not_applicable(method: str, fix: bool = True) -> str:
    """Why the NFA is not computed for a baseline ``method`` (``fix``: and what to do instead)."""
    why = (f"the NFA does not apply to {method}: it has no latents that are N(0, I) under the null hypothesis, "
           f"so there is no a contrario threshold")
    return why + (" (pass --no-nfa, or use a flow: uflow, msflow, sanflow)" if fix else "")


def no_masks_note(dataset) -> str:
    """The one line :func:`evaluate_model` prints for a test set without masks: why, and what is not computed."""
    return (f"note: {dataset.no_masks_reason}, so the test set has image labels only: pixel AUROC, AUPRO and the "
            f"mIoU metrics need ground-truth masks and are {NO_MASKS}; image AUROC is computed.")


def latent_sides(model: torch.nn.Module) -> list[int]:
    """Side of each NFA latent map of ``model`` (any method), fine → coarse."""
    return method_of(model).latent_sides(model)


def open_test_set(cfg: TrainConfig) -> AnomalyDataset:
    """The test split of ``cfg``'s data as evaluation reads it: images at ``cfg.input_size``, masks at
    :data:`EVAL_SIZE`. Opening it checks the folders, every image's label and every mask's presence."""
    cfg = resolve(resolve_layout(cfg))
    return open_dataset(cfg, "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)


def evaluate_model(
    model, extractor, cfg: TrainConfig, device="cpu", progress: bool = True, nfa: bool = True,
    log: Callable[[str], object] | None = print, dataset: AnomalyDataset | None = None, **kwargs
) -> dict[str, float | None]:
    """Metrics of ``model`` on the test split of ``cfg``'s data (any layout, :func:`uflow_lib.layouts.open_dataset`).

    ``dataset``: that test split already opened (:func:`open_test_set`), e.g. by training, which opens it before the
    first epoch. Without masks in the test set, ``log`` gets :func:`no_masks_note` once (None: say nothing).
    """
    cfg = resolve(resolve_layout(cfg))
    if method_of(model).name != cfg.method:
        raise ValueError(f"the model is a {method_of(model).name} model, but the config says {cfg.method}")
    if dataset is None:
        dataset = open_test_set(cfg)
    if not dataset.has_masks and log is not None:
        log(no_masks_note(dataset))
    if not method_of(model).has_latents:
        if kwargs.get("nfa_scales") is not None:
            raise ValueError(f"--nfa-scales: {nfa_not_applicable(cfg.method)}")
        if nfa and log is not None:
            log(f"note: {nfa_not_applicable(cfg.method, fix=False)}; its mIoU metrics are not computed.")
        nfa = False
    elif kwargs.get("nfa_scales") is None:
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
    *,
    layout: str | None = None,
    normal_dir: str | None = None,
    abnormal_dir: str | None = None,
    mask_dir: str | None = None,
    normal_test_dir: str | None = None,
    normal_split: float | None = None,
    split_seed: int | None = None,
    log: Callable[[str], object] | None = print,
    **kwargs,
) -> dict[str, float | int | str | None]:
    """Load a checkpoint and evaluate it (last epoch: the honest protocol).

    The data is the saved one unless data options are given (:func:`uflow_lib.layouts.override_data`: ``data``
    or folder options name a new source as a whole). Metrics that need masks are None on a test set without
    them.
    """
    dev = pick_device(device)
    cfg, extractor, model, ckpt = load_trained(checkpoint, dev, weights)
    cfg = override_data(cfg, data, category, layout, normal_dir=normal_dir, abnormal_dir=abnormal_dir,
                        mask_dir=mask_dir, normal_test_dir=normal_test_dir, normal_split=normal_split,
                        split_seed=split_seed)
    res: dict = evaluate_model(model, extractor, cfg, dev, progress, log=log, **kwargs)
    res.update(epoch=int(ckpt["epoch"]), category=cfg.category, layout=cfg.layout, backbone=cfg.backbone,
               method=cfg.method)
    return res
