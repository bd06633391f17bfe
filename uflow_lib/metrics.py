r"""Evaluation metrics of the U-Flow paper: AUROC, AUPRO and mIoU, at 256×256.

An anomaly detector returns a score map per test image; the benchmark asks three questions of it
(book chapter 04 derives them, chapter 05 uses mIoU for the a contrario masks):

* **Detection.** Image AUROC (image score = max of the map) and pixel AUROC over all pixels of all
  test images: threshold-free, computed with :func:`sklearn.metrics.roc_auc_score`.
* **Localisation that weighs every defect equally.** Pixel AUROC is dominated by large defects. The
  *per-region overlap* (PRO) of Bergmann et al. averages, over the connected ground-truth regions
  :math:`C_k`, the share of each region above the threshold :math:`t`, and plots it against the false
  positive rate over all normal pixels:

  .. math:: \mathrm{PRO}(t) = \frac{1}{K}\sum_{k=1}^{K} \frac{|\{p \in C_k : s(p) \ge t\}|}{|C_k|},
            \qquad \mathrm{FPR}(t) = \frac{|\{p \in \mathcal{N} : s(p) \ge t\}|}{|\mathcal{N}|}.

  AUPRO is the area under this curve for FPR in :math:`[0, \alpha]` (:math:`\alpha = 0.3`), divided
  by :math:`\alpha`, so that a perfect detector scores 1.
* **Segmentation.** mIoU: the IoU of a binary prediction per test image, averaged over all test
  images, normal ones included; ``oracle_miou`` picks the best single threshold per category.

All functions take numpy arrays (torch tensors are converted) and return Python floats.

References
----------
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with
Unsupervised Threshold", J. Math. Imaging Vis. 2024, doi:10.1007/s10851-024-01193-y.
P. Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, doi:10.1007/s11263-020-01400-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import label as _label_regions
from sklearn.metrics import roc_auc_score

__all__ = ["image_auroc", "pixel_auroc", "pro_curve", "aupro", "iou_per_image", "miou", "oracle_miou"]

#: ``eps`` of the IoU: it only decides the 0/0 case (a normal image with an empty prediction counts 1);
#: elsewhere it moves an IoU by less than 1e-6, far below the 4 decimals the paper reports.
IOU_EPS = 1e-6


def _as_array(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array (torch is never imported)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}; convert it with np.asarray(..., float).")
    return x


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as bool after checking every value is 0 or 1."""
    if x.dtype != bool and not np.all((x == 0) | (x == 1)):
        found = np.unique(x)[:5]
        raise ValueError(
            f"{name} must be binary (0/1 or bool), found values such as {found}; "
            f"binarise it, e.g. {name} > 0.5."
        )
    return x.astype(bool)


def _maps_and_masks(maps: Any, masks: Any, maps_name: str = "maps") -> tuple[np.ndarray, np.ndarray]:
    """Validate score maps ``(N, H, W)`` and ground-truth masks ``(N, H, W)``; return (float, bool)."""
    maps, masks = _as_array(maps, maps_name), _as_array(masks, "masks")
    for arr, name in ((maps, maps_name), (masks, "masks")):
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must have shape (N, H, W), got {arr.shape}; add a batch axis with x[None] "
                f"for one image, or drop a channel axis with x[:, 0] for (N, 1, H, W)."
            )
    if maps.shape != masks.shape:
        raise ValueError(f"{maps_name} {maps.shape} and masks {masks.shape} must have the same (N, H, W) shape.")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"{maps_name} contains NaN or inf; replace them (np.nan_to_num) before evaluating.")
    return maps.astype(np.float64, copy=False), _binary(masks, "masks")


def _both_classes(gt: np.ndarray, what: str) -> None:
    if gt.all() or not gt.any():
        only = "anomalous" if gt.any() else "normal"
        raise ValueError(
            f"{what} are all {only}; the metric needs at least one normal and one anomalous {what[:-1]}. "
            f"Evaluate on a test set that contains both."
        )


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC.

    Parameters
    ----------
    scores : array of float, shape (N,)
        One anomaly score per image (U-Flow: the max of the anomaly map).
    labels : array of {0, 1} or bool, shape (N,)
        1 for anomalous images.

    Returns
    -------
    float
        Area under the ROC curve, in [0, 1].
    """
    scores, labels = _as_array(scores, "scores"), _as_array(labels, "labels")
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both have shape (N,), got {scores.shape} and {labels.shape}.")
    labels = _binary(labels, "labels")
    _both_classes(labels, "labels of images")
    return float(roc_auc_score(labels, scores))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over all pixels of all images.

    Parameters
    ----------
    maps : array of float, shape (N, H, W)
        Anomaly maps.
    masks : array of {0, 1} or bool, shape (N, H, W)
        Ground-truth masks.

    Returns
    -------
    float
        Area under the ROC curve of the N·H·W pixels, in [0, 1].
    """
    maps, masks = _maps_and_masks(maps, masks)
    _both_classes(masks, "mask pixels")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""The PRO curve (FPR, PRO) at every distinct score threshold.

    Regions :math:`C_k` are the 8-connected components of each mask (``skimage.measure.label``,
    ``connectivity=2``), pooled over all images; the FPR is over all normal pixels of all images.
    Exact and vectorised: sort all pixel scores in decreasing order; a normal pixel adds
    :math:`1/|\mathcal{N}|` to the FPR and a pixel of :math:`C_k` adds :math:`1/(K|C_k|)` to the PRO;
    the cumulative sums, read at the last pixel of each run of equal scores, are the curve at
    threshold :math:`t` = that score (prediction :math:`s \ge t`; tied pixels cross together).

    Parameters
    ----------
    maps : array of float, shape (N, H, W)
        Anomaly maps.
    masks : array of {0, 1} or bool, shape (N, H, W)
        Ground-truth masks with at least one anomalous and one normal pixel.

    Returns
    -------
    fpr, pro : ndarray of float64, shape (D + 1,)
        Non-decreasing, from (0, 0) to (1, 1); D = number of distinct scores.
    """
    maps, masks = _maps_and_masks(maps, masks)
    _both_classes(masks, "mask pixels")
    # region ids, unique over the whole set: 0 = normal, 1..K = regions  (N, H, W)
    regions = np.zeros(masks.shape, dtype=np.int64)
    num_regions = 0
    for n in range(masks.shape[0]):
        lab, k = _label_regions(masks[n], connectivity=2, return_num=True)
        regions[n] = np.where(lab > 0, lab + num_regions, 0)
        num_regions += k
    regions = regions.ravel()  # (N·H·W,)
    region_size = np.bincount(regions, minlength=num_regions + 1)  # (K + 1,)
    is_normal = regions == 0
    num_normal = int(is_normal.sum())
    # 1 / (K |C_k|) on region pixels, 0 on normal ones  (N·H·W,)
    pro_weight = np.where(is_normal, 0.0, 1.0 / (num_regions * region_size[regions]))

    scores = maps.ravel()  # (N·H·W,)
    order = np.argsort(scores, kind="stable")[::-1]  # decreasing scores
    s_sorted = scores[order]
    # integer counts keep the FPR exact; the last value is exactly 1
    fpr = np.cumsum(is_normal[order]) / num_normal
    pro = np.minimum(np.cumsum(pro_weight[order]), 1.0)
    last_of_run = np.append(s_sorted[1:] != s_sorted[:-1], True)
    return np.r_[0.0, fpr[last_of_run]], np.r_[0.0, pro[last_of_run]]


def aupro(scores: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    r"""Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition).

    .. math:: \mathrm{AUPRO}_\alpha = \frac{1}{\alpha}\int_0^\alpha \mathrm{PRO}\, d\mathrm{FPR}

    by the trapezoid rule on the exact curve of :func:`pro_curve`; the PRO at exactly
    :math:`\alpha` is linearly interpolated between the two curve points around it.

    Parameters
    ----------
    scores : array of float, shape (N, H, W)
        Anomaly maps.
    masks : array of {0, 1} or bool, shape (N, H, W)
        Ground-truth masks with at least one anomalous and one normal pixel.
    fpr_limit : float
        Integration limit :math:`\alpha` in (0, 1]; the paper uses 0.3.

    Returns
    -------
    float
        AUPRO in [0, 1]; 1 for a detector that ranks every anomalous pixel above every normal one.

    Examples
    --------
    The MVTec/anomalib check (derived in tests/test_metrics.py): exactly 53333/320000, about 1/6.

    >>> maps = (np.arange(2800) / 2800).reshape(1, 400, 7)
    >>> masks = np.zeros((1, 400, 7), dtype=int); masks[..., 3] = 1
    >>> round(aupro(maps, masks, fpr_limit=1 / 3), 9)
    0.166665625
    """
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, (int, float, np.number)):
        raise TypeError(f"fpr_limit must be a number in (0, 1], got {type(fpr_limit).__name__}.")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; the paper uses 0.3.")
    fpr, pro = pro_curve(scores, masks)
    # points with FPR <= limit; fpr[-1] == 1 >= limit, so idx >= 1 and fpr[idx] exists if needed
    idx = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:idx], pro[:idx]
    if x[-1] < fpr_limit:  # interpolate PRO(alpha) on the segment that crosses alpha
        slope = (pro[idx] - y[-1]) / (fpr[idx] - x[-1])
        x = np.append(x, fpr_limit)
        y = np.append(y, y[-1] + slope * (fpr_limit - x[-2]))
    return float(np.trapezoid(y, x) / fpr_limit)


def iou_per_image(pred: Any, masks: Any, eps: float = IOU_EPS) -> np.ndarray:
    r"""IoU of a binary prediction with the ground truth, image by image.

    .. math:: \mathrm{IoU}_n = \frac{|P_n \cap G_n| + \varepsilon}{|P_n \cup G_n| + \varepsilon}

    so a normal image with an empty prediction scores 1 and one with any false positive about 0.

    Parameters
    ----------
    pred : array of bool or {0, 1}, shape (N, H, W)
        Predicted anomalous pixels P.
    masks : array of {0, 1} or bool, shape (N, H, W)
        Ground-truth masks G.
    eps : float
        Smoothing :math:`\varepsilon > 0` (see :data:`IOU_EPS`).

    Returns
    -------
    ndarray of float64, shape (N,)
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}; it decides the 0/0 case of a normal image.")
    pred, masks = _maps_and_masks(pred, masks, maps_name="pred")
    pred = _binary(pred, "pred")
    inter = (pred & masks).sum(axis=(1, 2))  # (N,)
    union = (pred | masks).sum(axis=(1, 2))  # (N,)
    return (inter + eps) / (union + eps)


def miou(pred: Any, masks: Any) -> float:
    """Mean IoU over all images, normal ones included (shapes as in :func:`iou_per_image`)."""
    return float(iou_per_image(pred, masks).mean())


#: refinement of ``oracle_miou``: brackets refined around this many best coarse thresholds, and
#: brackets with at most this many distinct scores evaluated exhaustively.
_REFINE_TOP, _MAX_EXACT = 3, 50_000


def oracle_miou(maps: Any, masks: Any, num_thresholds: int = 1000) -> tuple[float, float]:
    r"""Best mIoU over a single threshold :math:`t` per category, prediction :math:`P = \{s \ge t\}`.

    mIoU(t) only changes at the distinct scores, and for one image it only needs the counts
    :math:`|P_n(t)|` and :math:`|P_n(t) \cap G_n|`, read for many thresholds at once with
    ``searchsorted`` on the image's sorted scores: memory O(N·H·W + T), no (T, N, H, W) array.
    Search: (1) coarse, at ``num_thresholds`` quantiles of all scores, the same number of quantiles
    of the anomalous scores, and "predict nothing" (t = +inf); (2) refine around the 3 best
    coarse thresholds: every distinct score between a coarse threshold's two neighbours is
    evaluated (exact within the bracket), or, for more than 50 000 of them, quantiles again, repeated
    on a narrowing bracket. Global exactness is not guaranteed if mIoU(t) has a far-away better peak
    that no coarse threshold lands near; ``num_thresholds`` trades time for that risk.

    Parameters
    ----------
    maps : array of float, shape (N, H, W)
        Anomaly maps.
    masks : array of {0, 1} or bool, shape (N, H, W)
        Ground-truth masks.
    num_thresholds : int
        Coarse quantiles per distribution, >= 2.

    Returns
    -------
    best_miou : float
    best_threshold : float
        The lowest evaluated threshold that attains ``best_miou`` (a score of ``maps``, or ``inf`` when
        predicting nothing is best); ``miou(maps >= best_threshold, masks)`` gives ``best_miou``.
    """
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an int >= 2, got {num_thresholds!r}; the default is 1000.")
    maps, masks = _maps_and_masks(maps, masks)
    n_img, hw = maps.shape[0], maps.shape[1] * maps.shape[2]
    # per-image sorted scores, and sorted scores of the anomalous pixels (normal ones at -inf)  (N, H·W)
    all_sorted = np.sort(maps.reshape(n_img, hw), axis=1)
    anom_sorted = np.sort(np.where(masks, maps, -np.inf).reshape(n_img, hw), axis=1)
    gt_size = masks.sum(axis=(1, 2))  # |G_n|  (N,)

    def miou_at(t: np.ndarray) -> np.ndarray:  # (T,) -> (T,)
        total = np.zeros(len(t))
        for n in range(n_img):  # a loop over images; thresholds are vectorised
            p = hw - np.searchsorted(all_sorted[n], t, side="left")  # |P_n(t)|
            i = hw - np.searchsorted(anom_sorted[n], t, side="left")  # |P_n(t) ∩ G_n|
            total += (i + IOU_EPS) / (p + gt_size[n] - i + IOU_EPS)
        return total / n_img

    flat = np.sort(maps.ravel())  # (N·H·W,)
    # distinct scores, plus +inf that predicts nothing (exact in any dtype, unlike nextafter)  (D,)
    distinct = np.append(flat[np.append(True, flat[1:] != flat[:-1])], np.inf)
    anom = np.sort(maps[masks])
    picks = [flat[np.linspace(0, flat.size - 1, num_thresholds).round().astype(int)]]
    if anom.size:
        picks.append(anom[np.linspace(0, anom.size - 1, num_thresholds).round().astype(int)])
    coarse = np.unique(np.searchsorted(distinct, np.concatenate(picks)))  # indices into distinct
    coarse = np.append(coarse, distinct.size - 1)
    values = miou_at(distinct[coarse])
    tried_idx, tried_val = [coarse], [values]

    for j in np.argsort(-values, kind="stable")[:_REFINE_TOP]:
        lo = coarse[j - 1] + 1 if j > 0 else 0  # bracket of distinct indices [lo, hi)
        hi = coarse[j + 1] if j + 1 < coarse.size else distinct.size
        while hi - lo > _MAX_EXACT:  # too many: quantiles again, narrow the bracket (>= 128x a step)
            idx = np.unique(np.linspace(lo, hi - 1, max(num_thresholds, 256)).round().astype(int))
            val = miou_at(distinct[idx])
            tried_idx.append(idx)
            tried_val.append(val)
            k = int(np.argmax(val))
            lo, hi = (idx[k - 1] + 1 if k > 0 else lo), (idx[k + 1] if k + 1 < idx.size else hi)
        tried_idx.append(np.arange(lo, hi))
        tried_val.append(miou_at(distinct[lo:hi]))

    idx, val = np.concatenate(tried_idx), np.concatenate(tried_val)
    order = np.argsort(idx, kind="stable")  # ascending thresholds: argmax returns the lowest
    best = order[int(np.argmax(val[order]))]
    return float(val[best]), float(distinct[idx[best]])
