"""Tests for uflow_lib.metrics: golden hand-derived values and independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score
import torch

from uflow_lib import metrics
from uflow_lib.metrics import aupro, image_auroc, iou_per_image, miou, oracle_miou, pixel_auroc, pro_curve


def blobs(seed: int, n: int = 5, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth maps (n, size, size) and masks of a few blobs, some images left normal."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 3, 3))
    masks = field > 1.6 * field.std()
    masks[0] = False  # one normal image
    maps = masks * 0.8 + ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 1, 1))
    return maps, masks


def ramp(cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The anomalib/MVTec check: scores arange(2800)/2800 as one 400x7 image, given columns anomalous."""
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7)  # (1, 400, 7)
    masks = np.zeros((1, 400, 7), dtype=int)
    masks[..., cols] = 1
    return maps, masks


# ---------------------------------------------------------------- AUROC
def test_image_auroc_hand_case_and_sklearn() -> None:
    # anomalous 0.35 beats 0.1 but not 0.4; 0.8 beats both: 3 of 4 pairs ranked right
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75, abs=1e-12)
    assert image_auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5, abs=1e-12)  # a tie counts half
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_sklearn_on_flattened_pixels() -> None:
    maps, masks = blobs(1)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert 0.7 < expected < 1.0  # the data are informative but not perfect


def test_torch_tensors_are_accepted() -> None:
    maps, masks = blobs(2)
    assert aupro(torch.from_numpy(maps).float(), torch.from_numpy(masks)) == pytest.approx(
        aupro(maps.astype(np.float32), masks), abs=1e-12
    )


# ---------------------------------------------------------------- PRO curve and AUPRO
def test_aupro_one_sixth_golden() -> None:
    # One 400x7 image, s(r, c) = (7r + c)/2800, column 3 anomalous: one 8-connected region of 400 px,
    # 2400 normal px. In decreasing score order row r is visited as c = 6, 5, 4 (normal), 3 (region),
    # 2, 1, 0 (normal). After m full rows FPR = 6m/2400 = m/400 and PRO = m/400. Row m+1 then adds
    # FPR 3/2400 = 1/800 at PRO m/400, a vertical PRO jump to (m+1)/400 (no area), 1/800 at (m+1)/400:
    # area (2m+1)/320000, so M full rows give M^2/320000. alpha = 1/3 = 133/400 + 1/1200: 133 rows give
    # 17689/320000, plus width 1/1200 (< 1/800) at height 133/400, i.e. 133/480000. Total 53333/960000;
    # divided by alpha: 53333/320000 = 0.166665625 = 1/6 - 1/960000. The continuum limit (PRO = FPR,
    # (1/alpha) * alpha^2/2) is exactly 1/6; MVTec's official code prints 0.1666656, the same staircase.
    exact = 53333 / 320000
    maps, masks = ramp([3])
    assert aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(exact, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-5)
    # the same scores as 400 images of 1x7: 400 one-pixel regions of equal size, the same curve
    assert aupro(maps.reshape(400, 1, 7), masks.reshape(400, 1, 7), fpr_limit=1 / 3) == pytest.approx(exact, abs=1e-12)
    # anomalib's second case, columns 1, 3, 5: three regions, 1600 normal px; per row four normal steps of
    # 1/1600 at heights m/400 + j/1200 (j = 0..3) give the same M^2/320000; the partial row adds
    # (133/400)/1600 + (1/3)/4800, so AUPRO = 3 * 319999/5760000 = 319999/1920000 = 1/6 - 1/1920000.
    maps3, masks3 = ramp([1, 3, 5])
    assert aupro(maps3, masks3, fpr_limit=1 / 3) == pytest.approx(319999 / 1920000, abs=1e-12)
    # both images together (anomalib's third case)
    both = aupro(np.concatenate([maps, maps3]), np.concatenate([masks, masks3]), fpr_limit=1 / 3)
    assert both == pytest.approx(1 / 6, abs=1e-5)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
def test_aupro_perfect_detector_is_one(fpr_limit: float) -> None:
    _, masks = blobs(3)
    rng = np.random.default_rng(3)
    maps = masks + 0.4 * rng.random(masks.shape)  # every anomalous pixel above every normal one
    assert aupro(maps, masks, fpr_limit) == pytest.approx(1.0, abs=1e-12)


def test_aupro_invariant_to_strictly_monotone_transform() -> None:
    maps, masks = blobs(4)
    base = aupro(maps, masks)
    assert 0.2 < base < 1.0
    for f in (lambda s: 3 * s - 7, np.exp, lambda s: np.arctan(s) ** 3):
        assert aupro(f(maps), masks) == pytest.approx(base, abs=1e-12)


def slow_aupro(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray, fpr_limit: float) -> float:
    """Reference: a loop over thresholds, scipy.ndimage regions, piecewise-linear integration."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]  # 8-connectivity
    regions = [lab == k for lab in labelled for k in range(1, lab.max() + 1)]
    region_maps = [mp for mp, lab in zip(maps, labelled) for _ in range(lab.max())]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in np.sort(thresholds)[::-1]:
        fprs.append(np.sum((maps >= t) & normal) / normal.sum())
        pros.append(np.mean([np.mean(mp[r] >= t) for mp, r in zip(region_maps, regions)]))
    area = 0.0
    for x0, x1, y0, y1 in zip(fprs[:-1], fprs[1:], pros[:-1], pros[1:]):
        if x0 >= fpr_limit or x1 == x0:
            continue
        xe = min(x1, fpr_limit)  # clip the segment at the limit, PRO linear along it
        ye = y0 + (y1 - y0) * (xe - x0) / (x1 - x0)
        area += np.trapezoid([y0, ye], [x0, xe])
    return area / fpr_limit


def test_aupro_matches_slow_reference() -> None:
    maps, masks = blobs(5, n=4, size=24)
    # a threshold at every distinct score reproduces the exact curve
    exact = slow_aupro(maps, masks, np.unique(maps), 0.3)
    assert aupro(maps, masks, 0.3) == pytest.approx(exact, abs=1e-10)
    # a fine uniform grid approximates it
    grid = np.linspace(maps.min(), maps.max(), 3000)
    for limit in (0.05, 0.3):
        assert aupro(maps, masks, limit) == pytest.approx(slow_aupro(maps, masks, grid, limit), abs=1e-3)


def test_pro_curve_monotone_from_origin_to_one() -> None:
    maps, masks = blobs(6)
    maps = np.round(maps, 1)  # many ties
    fpr, pro = pro_curve(maps, masks)
    assert fpr.shape == pro.shape == (np.unique(maps).size + 1,)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_regions_weigh_equally_and_are_8_connected() -> None:
    # region A: 1 px at score 1; region B: 3x3 = 9 px at score 0.5; normal px at 0
    maps, masks = np.zeros((1, 8, 8)), np.zeros((1, 8, 8), dtype=int)
    masks[0, 1, 1], maps[0, 1, 1] = 1, 1.0
    masks[0, 4:7, 4:7], maps[0, 4:7, 4:7] = 1, 0.5
    fpr, pro = pro_curve(maps, masks)
    # at t = 1 region A is fully found: PRO = (1 + 0)/2, not the pixel share 1/10
    np.testing.assert_allclose(fpr, [0, 0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 0.5, 1, 1], atol=1e-15)
    # diagonal neighbours are one region: {(0,0), (1,1)} (size 2) and {(5,5)}; only (0,0) above t = 1
    maps, masks = np.zeros((1, 8, 8)), np.zeros((1, 8, 8), dtype=int)
    masks[0, [0, 1, 5], [0, 1, 5]] = 1
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 5, 5] = 1.0, 0.5, 0.5
    _, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx((1 / 2 + 0) / 2, abs=1e-15)  # 4-connectivity would give 1/3


# ---------------------------------------------------------------- mIoU
def test_iou_hand_cases() -> None:
    masks = np.zeros((3, 4, 4), dtype=int)
    pred = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2, :2] = 1  # G: 4 px
    pred[0, 0, :4] = True  # P: 4 px, 2 of them in G: I = 2, U = 6
    pred[2, 3, 3] = True  # image 1 normal and empty: 1; image 2 normal with one false positive: ~0
    eps = metrics.IOU_EPS
    expected = [(2 + eps) / (6 + eps), 1.0, eps / (1 + eps)]
    np.testing.assert_allclose(iou_per_image(pred, masks), expected, rtol=1e-12)
    assert iou_per_image(pred, masks)[2] < 1e-5
    assert miou(pred, masks) == pytest.approx(np.mean(expected), abs=1e-12)
    assert miou(masks, masks) == 1.0


def brute_force_oracle(maps: np.ndarray, masks: np.ndarray) -> float:
    """Best mIoU by the public miou() at every distinct score and above the max."""
    thresholds = np.append(np.unique(maps), np.inf)
    return max(miou(maps >= t, masks) for t in thresholds)


def test_oracle_separable_toy_finds_exact_threshold() -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 16, 16), dtype=int)
    masks[1, 2:6, 3:9] = masks[2, 10:14, 10:12] = 1  # images 0 and 3 normal
    maps = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.55 * rng.random(masks.shape))
    for m in (maps, maps.astype(np.float32)):
        best, thr = oracle_miou(m, masks)
        assert best == pytest.approx(1.0, abs=1e-12)
        assert thr == m[masks == 1].min()  # the lowest threshold with P = G
        assert miou(m >= thr, masks) == best
    # no anomaly at all: predicting nothing (t = inf) is best, mIoU = 1, in float32 as well
    best, thr = oracle_miou(maps.astype(np.float32), np.zeros_like(masks))
    assert (best, thr) == (pytest.approx(1.0, abs=1e-12), np.inf)


@pytest.mark.parametrize("max_exact", [50_000, 7])  # 7 forces the quantile-narrowing loop
def test_oracle_matches_brute_force_and_beats_any_threshold(monkeypatch: pytest.MonkeyPatch, max_exact: int) -> None:
    monkeypatch.setattr(metrics, "_MAX_EXACT", max_exact)
    maps, masks = blobs(8, n=4, size=16)
    best, thr = oracle_miou(maps, masks, num_thresholds=4)
    assert best == pytest.approx(brute_force_oracle(maps, masks), abs=1e-12)
    assert miou(maps >= thr, masks) == pytest.approx(best, abs=1e-12)
    for t in np.quantile(maps, np.linspace(0, 1, 41)):
        assert best >= miou(maps >= t, masks) - 1e-12
    assert 0.3 < best < 1.0


def test_oracle_on_evaluation_size_data() -> None:
    maps, masks = blobs(9, n=6, size=256)  # ~400k pixels: exercises the bracket refinement
    best, thr = oracle_miou(maps, masks, num_thresholds=64)
    assert miou(maps >= thr, masks) == pytest.approx(best, abs=1e-12)
    for t in np.quantile(maps, np.linspace(0.5, 1, 101)):
        assert best >= miou(maps >= t, masks) - 1e-12


# ---------------------------------------------------------------- input validation
def test_bad_inputs_raise_with_helpful_messages() -> None:
    maps = np.random.default_rng(10).random((2, 8, 8))
    masks = np.zeros((2, 8, 8), dtype=int)
    masks[1, 2:4, 2:5] = 1
    with pytest.raises(ValueError, match=r"same \(N, H, W\) shape"):
        aupro(maps, masks[:, :4])
    with pytest.raises(ValueError, match=r"shape \(N, H, W\), got \(8, 8\).*x\[None\]"):
        pixel_auroc(maps[0], masks[0])
    with pytest.raises(ValueError, match="must be binary.*> 0.5"):
        aupro(maps, masks * 0.7)
    with pytest.raises(ValueError, match="all normal"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="all anomalous"):
        pixel_auroc(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="NaN or inf"):
        aupro(np.where(masks, np.nan, maps), masks)
    for bad in (0.0, 1.5, -0.3):
        with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\], got"):
            aupro(maps, masks, fpr_limit=bad)
    with pytest.raises(TypeError, match="fpr_limit must be a number"):
        aupro(maps, masks, fpr_limit="0.3")
    with pytest.raises(ValueError, match="labels of images are all normal"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="pred must be binary"):
        miou(maps, masks)
    with pytest.raises(ValueError, match="num_thresholds must be an int >= 2"):
        oracle_miou(maps, masks, num_thresholds=1)
    with pytest.raises(TypeError, match="numeric array"):
        image_auroc(["a", "b"], [0, 1])
