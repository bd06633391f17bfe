r"""Checks for the exercises of chapter 4 (likelihood scoring and the metrics).

Each ``check_*`` takes the student's function, calls it on cases it builds itself and compares the result with an *independent* reference: :func:`uflow_lib.methods.uflow.anomaly_score_map`
for the product of the per-scale geometric means, :func:`sklearn.metrics.roc_auc_score` for the AUROC,
:func:`uflow_lib.metrics.pro_curve` for the FPR and PRO at one threshold, :func:`uflow_lib.metrics.iou_per_image` for the
IoU and :func:`scipy.ndimage.gaussian_filter` for the blur, plus small hand-checked cases. A wrong, missing
(``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from ..metrics import IOU_EPS, iou_per_image, pro_curve
from ..methods.uflow import anomaly_score_map
from . import ExerciseFailed, apart, call_student, counts_attempts, passed, require, require_function, tiered

__all__ = ["check_product_map", "check_auroc", "check_fpr_and_pro", "check_iou", "check_blur_maps",
           "pro_hand_case", "pro_at_reference"]


def _as_float(x: Any, name: str, what: str) -> float:
    """A Python float from a number, a 0-d array or a one-element tensor; ExerciseFailed otherwise."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = None if isinstance(x, (str, bytes)) else np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    require(arr is not None and arr.size == 1, f"{name} returned {x!r} ({type(x).__name__}), expected {what}",
            "return one number (a float), e.g. `return float(value)`.")
    return float(arr.reshape(()))


# ---------------------------------------------------------------------------------------------------- 4.1
def _latent_cases() -> list[tuple[list[torch.Tensor], int]]:
    """Latent lists (fine → coarse) with a strong "defect", and the output size to upsample to."""
    g = torch.Generator().manual_seed(4)
    cases = []
    for shapes, size in ((((2, 44, 8, 8), (2, 48, 4, 4)), 32), (((1, 816, 6, 6), (1, 192, 3, 3)), 24),
                         (((3, 5, 8, 8), (3, 7, 4, 4), (3, 9, 2, 2)), 16)):
        latents = [torch.randn(*s, generator=g) for s in shapes]
        latents[0][:, :, 2:4, 2:4] *= 30.0  # mean z² ≈ 900 there: exp(-450) underflows even in float64
        cases.append((latents, size))
    return cases


@counts_attempts("Exercise 4.1")
def check_product_map(fn: Callable[..., torch.Tensor]) -> None:
    r"""Exercise 4.1: ``fn(latents, size)`` → :math:`S_\times = -\sum_s \operatorname{up}(\log p_s)`.

    Shape ``(B, 1, size, size)``; ``latents`` is a list of ``(B, C_s, h_s, w_s)`` tensors (fine → coarse),
    :math:`\log p_s = -\frac12 \operatorname{mean}_c z^2` and ``up`` is bilinear (``align_corners=False``).
    Compared with :func:`uflow_lib.methods.uflow.anomaly_score_map` (``combine="product"``) on 2 and 3 scales, with
    up to 816 channels and a strong defect, to a relative tolerance of 1e-5.
    """
    require_function(fn, "product_map", "(latents, size=256)")
    for latents, size in _latent_cases():
        want = anomaly_score_map(latents, size, combine="product")  # (B, 1, size, size) float64
        got = call_student(fn, "product_map", [z.clone() for z in latents], size)
        require(isinstance(got, torch.Tensor), f"product_map returned {type(got).__name__}, expected a "
                f"torch.Tensor", "compute with torch operations (F.interpolate) and return the tensor.")
        B = latents[0].shape[0]
        require(tuple(got.shape) == (B, 1, size, size),
                f"for latents {[tuple(z.shape) for z in latents]} and size {size} you returned shape "
                f"{tuple(got.shape)}, expected {(B, 1, size, size)}",
                "keep the channel axis (mean(dim=1, keepdim=True)) and upsample each scale to (size, size).")
        got = got.detach().double()
        if torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            continue

        def up(x: torch.Tensor) -> torch.Tensor:  # (B, 1, h, w) -> (B, 1, size, size)
            return F.interpolate(x.double(), size=(size, size), mode="bilinear", align_corners=False)

        lps = [-0.5 * z.double().pow(2).mean(1, keepdim=True) for z in latents]
        hint = tiered("independent scales multiply their likelihoods, so their log-likelihoods add: bring each "
                      "scale's log-likelihood map to the output size, add them, and turn the sum into a score "
                      "(larger = more anomalous).",
                      r"S_× = −Σ_s up(log p_s) with log p_s = −½·mean_c z², up = bilinear, align_corners=False.")
        if not torch.isfinite(got).all():
            hint = ("your map has inf/NaN: exp(log p) underflows to 0 on a strong defect (log 0 = −inf). Stay in "
                    "the log domain: upsample log p_s itself, never p_s.")
        elif torch.allclose(got, want / len(latents), rtol=1e-5, atol=1e-6):
            hint = "the joint likelihood of independent scales is a product: sum the log-likelihoods, do not average."
        elif torch.allclose(got, -want, rtol=1e-5, atol=1e-6):
            hint = "mind the sign: the score is −log of the likelihood, larger = more anomalous."
        elif torch.allclose(got, -sum(up(-0.5 * z.double().pow(2).sum(1, keepdim=True)) for z in latents),
                            rtol=1e-5, atol=1e-6):
            hint = "use the mean over channels (dim=1), not the sum: each scale must weigh the same."
        elif torch.allclose(got, -sum(torch.log(up(lp.exp())) for lp in lps), rtol=1e-5, atol=1e-6):
            hint = "upsample log p_s, not p_s (the library interpolates the log-likelihood for the product)."
        err = (got - want).abs().max().item()
        require(False, f"for latents {[tuple(z.shape) for z in latents]} your map differs from "
                f"anomaly_score_map(..., combine='product') by up to {err:.3g}", hint)
    passed("Exercise 4.1", "your product map matches uflow_lib.methods.uflow.anomaly_score_map(combine='product')")


# ---------------------------------------------------------------------------------------------------- 4.2
#: The hand case of the chapter: 4 pairs (anomalous, normal); 3 are ranked correctly → 3/4.
AUROC_HAND_CASE = (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), 0.75)


def _auroc_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    scores, labels, _ = AUROC_HAND_CASE
    cases = [(scores, labels),
             (np.array([1.0, 1.0, 2.0, 2.0, 3.0]), np.array([0, 1, 0, 1, 1])),  # ties across classes
             (np.array([5.0, 5.0, 5.0]), np.array([1, 0, 0]))]  # everything tied: 0.5
    rng = np.random.default_rng(42)
    for n in (10, 57, 400):
        labels_r = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        cases.append(((rng.integers(0, 6, n) + labels_r).astype(float), labels_r))  # many ties across classes
        cases.append((rng.normal(size=n) + labels_r, labels_r))
    return cases


@counts_attempts("Exercise 4.2")
def check_auroc(fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
    r"""Exercise 4.2: ``fn(scores, labels)`` → area under the ROC curve (ties between classes count ½).

    The chapter asks for the pair-counting (Mann–Whitney) form, but any correct method passes. Compared with
    :func:`sklearn.metrics.roc_auc_score` on the chapter's hand case, on tied scores and on random cases of 10
    to 400 samples.
    """
    require_function(fn, "auroc", "(scores, labels)")
    for scores, labels in _auroc_cases():
        want = float(roc_auc_score(labels, scores))
        got = _as_float(call_student(fn, "auroc", scores.copy(), labels.copy()), "auroc",
                        "the area, a float in [0, 1]")
        if math.isclose(got, want, abs_tol=1e-9):
            continue
        pos, neg = scores[labels == 1], scores[labels == 0]
        greater = (pos[:, None] > neg[None, :]).mean()
        ties = (pos[:, None] == neg[None, :]).mean()
        hint = tiered("the AUROC is the probability that a random anomalous sample scores higher than a random "
                      "normal one, ties counting half: look at every (anomalous, normal) pair.",
                      "((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()")
        if math.isclose(got, 1 - want, abs_tol=1e-9):
            hint = "your comparison is reversed: a pair is well ranked when the *anomalous* sample scores higher."
        elif math.isclose(got, greater, abs_tol=1e-9) or math.isclose(got, greater + ties, abs_tol=1e-9):
            hint = ("ties: a tied (anomalous, normal) pair counts ½ (on the ROC curve, equal scores cross the "
                    "threshold together and draw a diagonal segment).")
        g, w = apart(got, want)
        require(False, f"auroc({np.round(scores[:6], 3).tolist()}{'…' if len(scores) > 6 else ''}, labels) = "
                f"{g}, but sklearn's roc_auc_score gives {w}", hint)
    passed("Exercise 4.2", "the same area as sklearn's roc_auc_score on every case, ties included")


# ---------------------------------------------------------------------------------------------------- 4.3
def pro_at_reference(maps: np.ndarray, masks: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FPR, PRO) at ``threshold`` (prediction: score ≥ threshold), read off :func:`uflow_lib.metrics.pro_curve`.

    The curve has one point per distinct score, in decreasing order, so the point of ``threshold`` is the
    number of distinct scores ≥ ``threshold``. maps, masks: ``(N, H, W)``.
    """
    fpr, pro = pro_curve(maps, masks)
    distinct = np.unique(np.asarray(maps, dtype=np.float64))
    k = int(distinct.size - np.searchsorted(distinct, threshold, side="left"))
    return float(fpr[k]), float(pro[k])


def pro_hand_case() -> tuple[np.ndarray, np.ndarray, float]:
    """The chapter's hand case: one 8×8 image with a 2×2 region fully detected, a 4×4 region of which one 2×2
    quarter is detected, and 2 false alarms in the corners; ``(maps, masks, threshold)``, shapes (1, 8, 8)."""
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[0, 4:8, 4:8] = 1
    maps = np.zeros((1, 8, 8))
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 4:6, 4:6] = 1.0
    maps[0, 0, 7] = maps[0, 7, 0] = 1.0
    return maps, masks, 1.0


def _pro_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """(above, defect) pairs of one (H, W) image: the chapter's hand case, then made-up ones (seeded, not printed).

    Each made-up defect is 1 to 3 rectangles, two of them touching only at a corner (one region with
    8-connectivity, two with 4); the prediction covers part of each and a few normal pixels.
    """
    maps, masks, t = pro_hand_case()
    cases = [(maps[0] >= t, masks[0] > 0)]
    rng = np.random.default_rng(43)
    for h, w in ((12, 15), (20, 20), (9, 16), (16, 11)):
        defect = np.zeros((h, w), dtype=bool)
        defect[1:4, 1:4] = True
        defect[4:7, 4:8] = True  # touches the first square at its corner only
        r, c = int(rng.integers(1, h - 4)), int(rng.integers(w // 2, w - 3))
        defect[r:r + 3, c:c + 3] = True
        above = (rng.random((h, w)) < np.where(defect, 0.5, 0.05)) & (rng.random((h, w)) < 0.9)
        above[2, 2] = True  # every region is at least partly found
        cases.append((above, defect))
    return cases


def _region_shares(above: np.ndarray, defect: np.ndarray, connectivity: int) -> list[float]:
    from skimage.measure import label

    regions = label(defect, connectivity=connectivity)
    return [float(above[regions == k].mean()) for k in range(1, regions.max() + 1)]


@counts_attempts("Exercise 4.3")
def check_fpr_and_pro(fn: Callable[[np.ndarray, np.ndarray], tuple[float, float]]) -> None:
    """Exercise 4.3: ``fn(above, defect)`` → ``(fpr, pro)`` of one image at one threshold.

    ``above`` is the boolean ``(H, W)`` map of the pixels whose score reaches the threshold, ``defect`` the ground
    truth. The reference is :func:`uflow_lib.metrics.pro_curve` read at that threshold (:func:`pro_at_reference`).
    """
    require_function(fn, "fpr_and_pro", "(above, defect)")
    for above, defect in _pro_cases():
        want_fpr, want_pro = pro_at_reference(above[None].astype(float), defect[None].astype(np.uint8), 1.0)
        call = f"fpr_and_pro(above, defect) on a {above.shape[0]}×{above.shape[1]} image"
        answer = call_student(fn, "fpr_and_pro", above.copy(), defect.copy())
        require(isinstance(answer, (tuple, list)) and len(answer) == 2, f"{call} returned {answer!r}",
                "return two numbers: `return fpr, pro`.")
        fpr = _as_float(answer[0], f"{call}[0] (fpr)", "a number")
        pro = _as_float(answer[1], f"{call}[1] (pro)", "a number")
        if not math.isclose(fpr, want_fpr, rel_tol=1e-6, abs_tol=1e-9):
            hint = tiered("the FPR is the share of the normal pixels that are above the threshold.",
                          "(above & ~defect).sum() / (~defect).sum()")
            if math.isclose(fpr, float((above & ~defect).sum() / above.size), rel_tol=1e-6):
                hint = "divide by the number of *normal* pixels, not by all the pixels."
            g, w = apart(fpr, want_fpr)
            raise ExerciseFailed(f"{call}: fpr = {g}, expected {w}\nHint: {hint}")
        if math.isclose(pro, want_pro, rel_tol=1e-6, abs_tol=1e-9):
            continue
        hint = tiered("PRO averages, over the connected regions of the defect, the share of each region's pixels "
                      "that are above the threshold.",
                      "label the regions (skimage.measure.label(defect, connectivity=2)), then the mean of "
                      "above[regions == k].mean() over k.")
        if math.isclose(pro, float((above & defect).sum() / defect.sum()), rel_tol=1e-6):
            hint = ("that is the pixel recall (all defect pixels pooled): PRO first computes the recall of each "
                    "connected region, then averages the regions, so a small defect weighs as much as a large one.")
        elif math.isclose(pro, float(np.mean(_region_shares(above, defect, 1))), rel_tol=1e-6):
            hint = ("regions are 8-connected: pixels touching at a corner belong to the same region "
                    "(connectivity=2 in skimage.measure.label).")
        g, w = apart(pro, want_pro)
        raise ExerciseFailed(f"{call}: pro = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 4.3", "your FPR and PRO agree with uflow_lib.metrics.pro_curve on every image of the check")


# ---------------------------------------------------------------------------------------------------- 4.4
def _iou_cases() -> list[tuple[np.ndarray, np.ndarray, str]]:
    z = np.zeros((6, 6), dtype=bool)
    gt = z.copy()
    gt[1:3, 1:4] = True  # 6 pixels
    pred = z.copy()
    pred[2:4, 1:4] = True  # 6 pixels, 3 shared: IoU 3/9
    fp = z.copy()
    fp[5, 5] = True
    cases = [(z, z, "a normal image with an empty prediction"), (fp, z, "a normal image with one false alarm"),
             (z, gt, "a defect that was missed"), (pred, gt, "a half-overlapping prediction"),
             (gt, gt, "a perfect prediction")]
    rng = np.random.default_rng(3)
    for _ in range(4):
        cases.append((rng.random((9, 9)) < 0.3, rng.random((9, 9)) < 0.2, "a random case"))
    return cases


@counts_attempts("Exercise 4.4")
def check_iou(fn: Callable[..., float]) -> None:
    r"""Exercise 4.4: ``fn(pred, gt, eps=1e-6)`` → :math:`(|P\cap G| + \varepsilon)/(|P\cup G| + \varepsilon)`.

    ``pred`` and ``gt`` are boolean ``(H, W)`` arrays of one image. Compared with
    :func:`uflow_lib.metrics.iou_per_image` (hand cases first: empty/empty must give 1).
    """
    require_function(fn, "iou", "(pred, gt, eps=1e-6)")
    for pred, gt, what in _iou_cases():
        want = float(iou_per_image(pred[None], gt[None], eps=IOU_EPS)[0])
        got = _as_float(call_student(fn, "iou", pred.copy(), gt.copy(), eps=IOU_EPS), "iou", "a float in [0, 1]")
        if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-12):  # float32 welcome
            continue
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        hint = tiered("the overlap of prediction and ground truth divided by their union, with eps keeping the "
                      "empty case defined.", "IoU = (|P ∩ G| + eps) / (|P ∪ G| + eps), eps in numerator AND "
                      "denominator.")
        if math.isnan(got) or (union == 0 and got == 0.0):
            hint = ("0/0: add eps to the numerator and the denominator, so that an empty prediction on a normal "
                    "image counts as a perfect answer (IoU 1).")
        elif union and math.isclose(got, inter / union, rel_tol=1e-6):
            hint = "add eps to both numerator and denominator (it only matters for the 0/0 case, but there it decides)."
        g, w = apart(got, want)
        require(False, f"iou on {what} (|P ∩ G| = {inter}, |P ∪ G| = {union}) = {g}, expected {w}", hint)
    passed("Exercise 4.4", "your IoU matches uflow_lib.metrics.iou_per_image on every case, empty ones included")


# ---------------------------------------------------------------------------------------------------- 4.5
@counts_attempts("Exercise 4.5")
def check_blur_maps(fn: Callable[[np.ndarray, float], np.ndarray]) -> None:
    r"""Exercise 4.5: ``fn(maps, sigma)`` → each ``(H, W)`` map of ``maps`` ``(N, H, W)`` blurred on its own.

    Compared with :func:`scipy.ndimage.gaussian_filter` with ``sigma=(0, sigma, sigma)`` (its defaults:
    ``mode="reflect"``, ``truncate=4``), to a relative tolerance of 1e-6.
    """
    require_function(fn, "blur_maps", "(maps, sigma)")
    rng = np.random.default_rng(5)
    maps = rng.random((3, 40, 40))
    maps[1, 10:14, 20:24] += 50.0  # one image with a strong spot: must not leak into its neighbours
    for sigma in (1.0, 4.0):
        want = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))
        got = call_student(fn, "blur_maps", maps.copy(), sigma)
        if hasattr(got, "detach"):
            got = got.detach().cpu().numpy()
        require(isinstance(got, np.ndarray) and got.shape == maps.shape,
                f"blur_maps returned {type(got).__name__} of shape {getattr(got, 'shape', '—')}, expected an "
                f"array of shape {maps.shape}", "return one blurred map per input map, stacked: (N, H, W).")
        if np.allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max()):
            continue
        hint = tiered("each map is an image of its own: blur it in its two spatial axes only, never across maps.",
                      "np.stack([ndimage.gaussian_filter(m, sigma) for m in maps]), or sigma=(0, sigma, sigma).")
        if np.allclose(got, ndimage.gaussian_filter(maps, sigma), rtol=1e-6, atol=1e-6):
            hint = ("you blurred across the image axis too: gaussian_filter on an (N, H, W) array mixes "
                    "neighbouring images. Use sigma=(0, sigma, sigma), or blur image by image.")
        elif np.allclose(got, maps):
            hint = "the maps came back unchanged: return the blurred maps."
        err = float(np.abs(got - want).max())
        require(False, f"blur_maps(maps, sigma={sigma}) differs from the reference by up to {err:.3g}", hint)
    passed("Exercise 4.5", "each map is blurred on its own, as scipy.ndimage.gaussian_filter does")
