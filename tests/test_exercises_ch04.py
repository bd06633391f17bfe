"""Chapter 4 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import label as label_regions

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch04 import (
    AUROC_HAND_CASE,
    check_auroc,
    check_blur_maps,
    check_iou,
    check_fpr_and_pro,
    check_product_map,
    pro_at_reference,
    pro_hand_case,
)


def stub(*args, **kwargs):
    raise NotImplementedError


# ------------------------------------------------------------------------------------------ 4.1 product map
def up(x, size):
    return F.interpolate(x.double(), size=(size, size), mode="bilinear", align_corners=False)


def product_map(latents, size=256):
    return -sum(up(-0.5 * z.pow(2).mean(dim=1, keepdim=True), size) for z in latents)


def test_product_map_golden_constant_latents():
    # constant latents z = a on a scale give log p = -a²/2 everywhere, whatever the upsampling: S = Σ a²/2
    latents = [torch.full((1, 44, 8, 8), 2.0), torch.full((1, 48, 4, 4), 3.0)]
    torch.testing.assert_close(product_map(latents, 16), torch.full((1, 1, 16, 16), 2.0 + 4.5, dtype=torch.float64))


def test_product_map_passes_on_solution(capsys):
    check_product_map(product_map)
    assert "Exercise 4.1" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda zs, size=256: product_map(zs, size) / len(zs), "do not average"),
    (lambda zs, size=256: -product_map(zs, size), "mind the sign"),
    (lambda zs, size=256: -sum(up(-0.5 * z.pow(2).sum(1, keepdim=True), size) for z in zs), "not the sum"),
    (lambda zs, size=256: -sum(torch.log(up((-0.5 * z.pow(2).mean(1, keepdim=True)).exp(), size)) for z in zs),
     "inf/NaN"),  # exp underflows on the strong defect, log(0) = -inf
    (lambda zs, size=256: product_map(zs, size)[:, 0], "expected"),
    (None, "define `def product_map"),
    (stub, "not written yet"),
])
def test_product_map_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_product_map(wrong)


# ---------------------------------------------------------------------------------------------- 4.2 AUROC
def auroc(scores, labels):
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tpr = np.cumsum(y) / y.sum()
    fpr = np.cumsum(1 - y) / (1 - y).sum()
    last = np.r_[s[1:] != s[:-1], True]
    return float(np.trapezoid(np.r_[0, tpr[last]], np.r_[0, fpr[last]]))


def auroc_no_ties(scores, labels):  # one point per pixel: a tied pair counts 0 or 1 depending on the order
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    return float(np.trapezoid(np.r_[0, np.cumsum(y) / y.sum()], np.r_[0, np.cumsum(1 - y) / (1 - y).sum()]))


def test_auroc_hand_case_is_three_quarters():
    scores, labels, want = AUROC_HAND_CASE
    assert auroc(scores, labels) == pytest.approx(want)


def auroc_pairs(scores, labels):  # the Mann-Whitney form asked in the chapter
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


@pytest.mark.parametrize("solution", [auroc, auroc_pairs])
def test_auroc_passes_on_solution(solution, capsys):
    check_auroc(solution)
    assert "Exercise 4.2" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda s, y: 1 - auroc(s, y), "reversed"),
    (lambda s, y: float(((s[y == 1][:, None] > s[y == 0][None, :])).mean()), "ties"),
    (auroc_no_ties, "sklearn's roc_auc_score gives"),
    (lambda s, y: "0.75", "expected the area"),
    (None, "define `def auroc"),
    (stub, "not written yet"),
])
def test_auroc_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_auroc(wrong)


# ------------------------------------------------------------------------------------------------ 4.3 PRO
def pro_at(maps, masks, t):  # from scratch, independent of uflow_lib.metrics.pro_curve
    pred, masks = maps >= t, masks.astype(bool)
    fpr = (pred & ~masks).sum() / (~masks).sum()
    shares = []
    for p, m in zip(pred, masks):
        lab = label_regions(m, connectivity=2)
        shares += [p[lab == k].mean() for k in range(1, lab.max() + 1)]
    return float(fpr), float(np.mean(shares))


def test_pro_hand_case_golden():
    maps, masks, t = pro_hand_case()
    fpr, pro = pro_at_reference(maps, masks, t)
    assert pro == pytest.approx((1 + 4 / 16) / 2)  # 0.625, while the pixel recall is 8/20
    assert fpr == pytest.approx(2 / 44)
    assert pro_at(maps, masks, t) == pytest.approx((fpr, pro))


def test_pro_reference_agrees_with_from_scratch_on_random_maps():
    rng = np.random.default_rng(0)
    masks = (rng.random((2, 12, 12)) < 0.15).astype(np.uint8)
    maps = np.round(rng.random((2, 12, 12)) + masks, 1)  # ties
    for t in np.quantile(maps, [0.2, 0.5, 0.9]):
        assert pro_at_reference(maps, masks, t) == pytest.approx(pro_at(maps, masks, t))


def fpr_and_pro(above, defect):
    fpr = (above & ~defect).sum() / (~defect).sum()
    lab = label_regions(defect, connectivity=2)
    return fpr, np.mean([above[lab == k].mean() for k in range(1, lab.max() + 1)])


def fpr_and_pro_via_ndimage(above, defect):  # another correct way: scipy's labelling with an 8-neighbourhood
    lab, k = ndimage.label(defect, structure=np.ones((3, 3)))
    shares = ndimage.mean(above, lab, index=np.arange(1, k + 1))
    return float(np.float32((above & ~defect).mean() / (~defect).mean())), np.float32(np.mean(shares))


@pytest.mark.parametrize("solution", [fpr_and_pro, fpr_and_pro_via_ndimage,
                                      lambda a, d: [torch.tensor(x) for x in fpr_and_pro(a, d)]])
def test_fpr_and_pro_passes(solution, capsys):
    check_fpr_and_pro(solution)
    out = capsys.readouterr().out
    assert "✓ Exercise 4.3" in out and "0.625" not in out and "2/44" not in out  # the success line gives nothing away


def _four_connected(above, defect):
    lab = label_regions(defect, connectivity=1)
    return fpr_and_pro(above, defect)[0], np.mean([above[lab == k].mean() for k in range(1, lab.max() + 1)])


@pytest.mark.parametrize("wrong,match", [
    (lambda a, d: (2 / 44, 0.625), "expected"),  # the hand case's numbers typed in
    (lambda a, d: (fpr_and_pro(a, d)[0], (a & d).sum() / d.sum()), "pixel recall"),
    (lambda a, d: ((a & ~d).sum() / a.size, fpr_and_pro(a, d)[1]), "normal"),
    (_four_connected, "8-connected"),
    (lambda a, d: 0.625, "two numbers"),
    (lambda a, d: ("a", "b"), "expected a number"),
    (stub, "not written yet"),
])
def test_fpr_and_pro_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_fpr_and_pro(wrong)


# ------------------------------------------------------------------------------------------------ 4.4 IoU
def iou(pred, gt, eps=1e-6):
    return float(((pred & gt).sum() + eps) / ((pred | gt).sum() + eps))


def iou_float32(pred, gt, eps=1e-6):
    return np.float32(((pred & gt).sum() + np.float32(eps)) / np.float32((pred | gt).sum() + np.float32(eps)))


def iou_torch(pred, gt, eps=1e-6):
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    return ((p & g).sum() + eps) / ((p | g).sum().float() + eps)  # a 0-d float32 tensor


@pytest.mark.parametrize("solution", [iou, iou_float32, iou_torch])
def test_iou_passes_on_solution(solution, capsys):
    check_iou(solution)
    assert "Exercise 4.4" in capsys.readouterr().out


def test_iou_failure_prints_values_that_differ():
    with pytest.raises(ExerciseFailed) as err:
        check_iou(lambda p, g, eps=1e-6: float(((p & g).sum() + eps) / ((p | g).sum() + eps)) * (1 + 1e-4))
    got, want = re.search(r"= (\S+), expected (\S+)\n", err.value.args[0]).groups()
    assert got != want


@pytest.mark.parametrize("wrong,match", [
    (lambda p, g, eps=1e-6: float((p & g).sum() / max((p | g).sum(), 1)), "0/0"),
    (lambda p, g, eps=1e-6: float((p & g).sum() / ((p | g).sum() + eps)), "0/0"),
    (lambda p, g, eps=1e-6: float(((p & g).sum() + eps) / (p.sum() + g.sum() + eps)), "expected"),
    (None, "define `def iou"),
])
def test_iou_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_iou(wrong)


# ----------------------------------------------------------------------------------------------- 4.5 blur
def blur_maps(maps, sigma):
    return np.stack([ndimage.gaussian_filter(m, sigma) for m in maps])


def test_blur_passes_on_solution(capsys):
    check_blur_maps(blur_maps)
    assert "Exercise 4.5" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda maps, sigma: ndimage.gaussian_filter(maps, sigma), "across the image axis"),
    (lambda maps, sigma: maps, "unchanged"),
    (lambda maps, sigma: ndimage.gaussian_filter(maps[0], sigma), "expected an array of shape"),
    (lambda maps, sigma: torch.from_numpy(blur_maps(maps, 2 * sigma)), "differs from the reference"),
    (stub, "not written yet"),
])
def test_blur_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_blur_maps(wrong)
