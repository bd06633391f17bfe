"""Data beyond MVTec AD's exact layout (uflow_lib.layouts): MVTec without ground truth, BTAD, a generic folder.

Every dataset here is built on the fly from the tiny generated category (``tiny_root``: 6 train images, 2 normal
and 2 per defect type × 4 types in test, 128 px): copied, renamed, partly re-encoded as .bmp. Counts and labels
are exact; the end-to-end runs train one epoch at 64 px with random MobileNetV2 weights.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from uflow_lib.cli import main
from uflow_lib.config import TrainConfig
from uflow_lib.data import MVTecDataset
from uflow_lib.evaluation import MASK_METRICS, NO_MASKS, compute_metrics, predict_maps
from uflow_lib.layouts import (BTADDataset, FolderDataset, detect_layout, open_dataset, override_data,
                               resolve_layout, split_normal)
from uflow_lib.synthetic import CATEGORIES

DEFECTS = sorted(CATEGORIES["texture"][1])  # fold, hole, scratch, stain
N_TRAIN, N_GOOD, N_PER_DEFECT = 6, 2, 2  # tiny_root (tests/conftest.py)
N_BAD = N_PER_DEFECT * len(DEFECTS)
#: MVTec test labels in folder order: fold, good, hole, scratch, stain (2 images each).
MVTEC_TEST_LABELS = [1, 1, 0, 0, 1, 1, 1, 1, 1, 1]

#: Train 1 epoch, tiny: random MobileNetV2 at 64 px.
TINY = ["--backbone", "mobilenetv2", "--random-weights", "--input-size", "64", "--epochs", "1", "--batch-size", "4",
        "--flow-steps", "2", "--no-progress"]


def _copy_image(src: Path, dst: Path) -> Path:
    """Copy an image, re-encoding it when the ending changes (.png → .bmp)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == dst.suffix:
        shutil.copy(src, dst)
    else:
        Image.open(src).save(dst)
    return dst


def _no_gt(src_root: Path, dst: Path) -> Path:
    """The tiny category with ground_truth/ deleted; returns the root."""
    shutil.copytree(src_root / "texture", dst / "texture")
    shutil.rmtree(dst / "texture" / "ground_truth")
    return dst


def _defect_images(src_root: Path) -> list[tuple[str, Path, Path]]:
    """(new stem, image, mask) for every defect image, the stem made unique across defect types."""
    folder = src_root / "texture"
    return [(f"{d}_{p.stem}", p, folder / "ground_truth" / d / f"{p.stem}_mask.png")
            for d in DEFECTS for p in sorted((folder / "test" / d).glob("*.png"))]


def _btad(src_root: Path, dst: Path, masks: bool = True) -> Path:
    """BTAD layout <dst>/prod: every other training image and every other defect image and mask as .bmp."""
    prod, folder = dst / "prod", src_root / "texture"
    for i, p in enumerate(sorted((folder / "train" / "good").glob("*.png"))):
        _copy_image(p, prod / "train" / "ok" / f"{p.stem}{'.bmp' if i % 2 else '.png'}")
    for p in sorted((folder / "test" / "good").glob("*.png")):
        _copy_image(p, prod / "test" / "ok" / p.name)
    for i, (stem, image, mask) in enumerate(_defect_images(src_root)):
        _copy_image(image, prod / "test" / "ko" / f"{stem}.png")
        if masks:
            _copy_image(mask, prod / "ground_truth" / "ko" / f"{stem}{'.bmp' if i % 2 else '.png'}")
    return dst


def _folder(src_root: Path, dst: Path) -> dict[str, Path]:
    """normal/ (train + test good: 8 images), abnormal/ (8), masks/ (<stem>_mask.png and <stem>.png alternately)."""
    folder = src_root / "texture"
    for p in sorted((folder / "train" / "good").glob("*.png")) + sorted((folder / "test" / "good").glob("*.png")):
        _copy_image(p, dst / "normal" / f"{p.parent.parent.name}_{p.name}")
    for i, (stem, image, mask) in enumerate(_defect_images(src_root)):
        _copy_image(image, dst / "abnormal" / f"{stem}.png")
        _copy_image(mask, dst / "masks" / f"{stem}{'_mask' if i % 2 else ''}.png")
    return dict(normal=dst / "normal", abnormal=dst / "abnormal", masks=dst / "masks")


# ------------------------------------------------------------------------------------------ datasets, exact counts
def test_mvtec_without_ground_truth_has_labels_only(tiny_root, tmp_path):
    root = _no_gt(tiny_root, tmp_path)
    test = MVTecDataset(root, "texture", "test", input_size=32, mask_size=32)
    assert len(test) == N_GOOD + N_BAD and test.labels == MVTEC_TEST_LABELS
    assert test.has_masks is False and "ground_truth does not exist" in test.no_masks_reason
    assert test.mask_paths == [None] * len(test)
    assert sorted(set(test.defects)) == sorted(["good", *DEFECTS])
    assert set(test[0]) == {"image", "mask", "label", "path", "defect"}  # the keys MVTecDataset always had
    train = MVTecDataset(root, "texture", "train", input_size=32)
    assert len(train) == N_TRAIN and train.has_masks  # nothing to mask in normal images
    assert MVTecDataset(tiny_root, "texture", "test", input_size=32).has_masks  # the original is untouched


def test_mvtec_with_masks_for_some_defect_types_is_an_error(tiny_root, tmp_path):
    shutil.copytree(tiny_root / "texture", tmp_path / "texture")
    shutil.rmtree(tmp_path / "texture" / "ground_truth" / "scratch")
    shutil.rmtree(tmp_path / "texture" / "ground_truth" / "hole")
    with pytest.raises(ValueError, match=r"masks for \['fold', 'stain'\] but not for \['hole', 'scratch'\]"):
        MVTecDataset(tmp_path, "texture", "test")


def test_btad_counts_labels_and_masks_by_stem(tiny_root, tmp_path):
    root = _btad(tiny_root, tmp_path)
    train = BTADDataset(root, "prod", "train", input_size=32)
    assert len(train) == N_TRAIN and train.labels == [0] * N_TRAIN and set(train.defects) == {"ok"}
    assert sorted(p.suffix for p in train.paths) == [".bmp"] * 3 + [".png"] * 3
    test = BTADDataset(root, "prod", "test", input_size=32, mask_size=128)
    assert len(test) == N_GOOD + N_BAD and test.labels == [0] * N_GOOD + [1] * N_BAD
    assert test.defects == ["ok"] * N_GOOD + ["ko"] * N_BAD and test.has_masks
    found = [(p.stem, m.stem, m.suffix) for p, m in zip(test.paths, test.mask_paths) if m is not None]
    assert [(s, s) for s, _, _ in found] == [(s, m) for s, m, _ in found]  # a mask has its image's stem
    assert sorted(e for _, _, e in found) == [".bmp"] * 4 + [".png"] * 4
    for i in (N_GOOD, N_GOOD + 1):  # a .png mask and a .bmp one, read exactly at the source size
        stem = test.paths[i].stem
        source = next(m for s, _, m in _defect_images(tiny_root) if s == stem)
        expected = torch.tensor(np.asarray(Image.open(source)) > 127, dtype=torch.float32)
        torch.testing.assert_close(test[i]["mask"][0], expected)
        assert expected.sum() > 0
    assert test[0]["mask"].sum() == 0 and test[0]["label"] == 0


def test_btad_without_ground_truth_and_with_a_missing_mask(tiny_root, tmp_path):
    bare = _btad(tiny_root, tmp_path / "bare", masks=False)
    test = BTADDataset(bare, "prod", "test", input_size=32)
    assert test.has_masks is False and len(test) == N_GOOD + N_BAD and sum(test.labels) == N_BAD
    root = _btad(tiny_root, tmp_path / "full")
    victim = sorted((root / "prod" / "ground_truth" / "ko").iterdir())[0]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"{victim.stem}.png has no mask: neither {victim.stem}.png nor"):
        BTADDataset(root, "prod", "test")
    (root / "prod" / "test" / "other").mkdir()
    with pytest.raises(ValueError, match=r"folders \['other'\] besides \['ok', 'ko'\].*--layout folder"):
        BTADDataset(root, "prod", "test")


def test_layout_detection_and_its_errors(tiny_root, tmp_path):
    assert detect_layout(tiny_root, "texture") == "mvtec"
    btad = _btad(tiny_root, tmp_path / "btad")
    assert detect_layout(btad, "prod") == "btad"
    assert resolve_layout(TrainConfig(data=str(btad), category="prod", out="o")).layout == "btad"
    forced = resolve_layout(TrainConfig(data=str(btad), category="prod", out="o", layout="btad"))
    assert forced.layout == "btad" and len(open_dataset(forced, "train", 32)) == N_TRAIN
    (btad / "prod" / "train" / "good").mkdir()
    with pytest.raises(ValueError, match="both train/good .*pass --layout mvtec or --layout btad"):
        detect_layout(btad, "prod")
    (tmp_path / "odd" / "thing" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no known layout: expected train/good \(mvtec\) or train/ok with test/ko "
                                         r"\(btad\); pass --layout"):
        detect_layout(tmp_path / "odd", "thing")
    with pytest.raises(FileNotFoundError, match=r"category 'nope' not found.*\['texture'\]"):
        detect_layout(tiny_root, "nope")


def test_normal_split_is_seeded_deterministic_and_disjoint(tiny_root, tmp_path):
    d = _folder(tiny_root, tmp_path)
    normal = sorted(d["normal"].iterdir())
    assert len(normal) == N_TRAIN + N_GOOD
    splits = {}
    for seed in range(5):
        train, test = split_normal(normal, 0.25, seed)
        assert len(train) == 6 and len(test) == 2 and not set(train) & set(test)
        assert sorted(train + test) == normal
        held = sorted(np.random.default_rng(seed).permutation(8)[:2].tolist())  # the documented rule
        assert test == [normal[i] for i in held]
        assert split_normal(normal, 0.25, seed) == (train, test)
        splits[seed] = tuple(test)
    assert len(set(splits.values())) > 1  # the seed matters
    with pytest.raises(ValueError, match="holds out 0: both parts need at least one image"):
        split_normal(normal, 0.01, 0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_normal(normal, 1.0, 0)


def test_folder_dataset_counts_and_masks_with_and_without_suffix(tiny_root, tmp_path):
    d = _folder(tiny_root, tmp_path)
    kw = dict(normal_dir=d["normal"], abnormal_dir=d["abnormal"], normal_split=0.25, split_seed=1, input_size=32)
    train, test = FolderDataset(split="train", **kw), FolderDataset(split="test", mask_dir=d["masks"], **kw)
    assert len(train) == 6 and len(test) == 2 + N_BAD and test.labels == [0, 0] + [1] * N_BAD
    assert not set(train.paths) & set(test.paths)
    assert test.defects == ["normal"] * 2 + ["abnormal"] * N_BAD and test.has_masks
    names = sorted(m.name for m in test.mask_paths if m is not None)
    assert len(names) == N_BAD and sum(n.endswith("_mask.png") for n in names) == N_BAD // 2
    for p, m in zip(test.paths, test.mask_paths):
        assert m is None or m.name in (f"{p.stem}.png", f"{p.stem}_mask.png")
    bare = FolderDataset(split="test", **kw)
    assert bare.has_masks is False and bare.no_masks_reason == "no --mask-dir was given"
    # two candidate masks for one image, and a missing one, are errors
    stem = test.paths[-1].stem
    _copy_image(d["masks"] / next(n for n in names if n.startswith(stem)), d["masks"] / f"{stem}_mask.bmp")
    with pytest.raises(ValueError, match=f"several masks for image '{stem}'"):
        FolderDataset(split="test", mask_dir=d["masks"], **kw)
    for m in d["masks"].glob(f"{stem}*"):
        m.unlink()
    with pytest.raises(FileNotFoundError, match=f"{stem}.png has no mask"):
        FolderDataset(split="test", mask_dir=d["masks"], **kw)


def test_folder_normal_test_dir(tiny_root, tmp_path):
    d = _folder(tiny_root, tmp_path)
    extra = tmp_path / "normal_test"
    extra.mkdir()
    first = sorted(d["normal"].glob("test_*"))[0]
    shutil.move(first, extra / first.name)
    kw = dict(normal_dir=d["normal"], abnormal_dir=d["abnormal"], input_size=32)
    assert len(FolderDataset(split="train", normal_test_dir=extra, **kw)) == 7
    assert FolderDataset(split="test", normal_test_dir=extra, **kw).labels == [0] + [1] * N_BAD
    with pytest.raises(ValueError, match="shares images with --normal-dir"):
        FolderDataset(split="test", normal_test_dir=d["normal"], **kw)
    with pytest.raises(ValueError, match="exactly one of --normal-test-dir DIR or --normal-split"):
        FolderDataset(split="test", **kw)


def test_resolve_layout_names_the_fix(tiny_root, tmp_path):
    d = _folder(tiny_root, tmp_path)
    folder = dict(normal_dir=str(d["normal"]), abnormal_dir=str(d["abnormal"]), normal_split=0.25)
    cfg = resolve_layout(TrainConfig(data=None, category=None, out="o", **folder))
    assert (cfg.layout, cfg.category) == ("folder", "normal")  # named after the normal folder
    assert resolve_layout(TrainConfig(data=None, category="parts", out="o", **folder)).category == "parts"
    cases = [
        (dict(data=str(tiny_root), category="texture", layout="mvtec", **folder),
         "--normal-dir, --abnormal-dir, --normal-split only apply to --layout folder"),
        (dict(data=str(tiny_root), category=None, **folder), "is not used with --layout folder"),
        (dict(data=None, category=None, normal_dir=str(d["normal"]), normal_split=0.2), "--abnormal-dir is missing"),
        (dict(data=None, category=None, normal_dir=str(d["normal"]), abnormal_dir=str(d["abnormal"])),
         "exactly one of --normal-test-dir"),
        (dict(data=None, category=None), "pass --data and --category"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            resolve_layout(TrainConfig(out="o", **kwargs))
    with pytest.raises(ValueError, match="layout='voc'"):
        TrainConfig(data="d", category="c", out="o", layout="voc")
    # checkpoints from before layouts hold MVTec data
    assert TrainConfig.from_dict(dict(data="d", category="c", out="o")).layout == "mvtec"
    # evaluate's overrides: a new source replaces the saved one as a whole
    saved = resolve_layout(TrainConfig(data=None, category=None, out="o", **folder))
    moved = override_data(saved, data=str(tiny_root), category="texture")
    assert (moved.layout, moved.normal_dir, moved.normal_split) == ("mvtec", None, None)
    assert override_data(saved, split_seed=4).split_seed == 4 and override_data(saved).normal_split == 0.25


# ------------------------------------------------------------------------------------------ every layout, as a table
def _folder_cfg(d: dict[str, Path], masks: bool = True, normal_test: bool = False) -> dict:
    """TrainConfig fields of the folder layout on :func:`_folder`'s tree (the 2 test_* normals as the test set
    when ``normal_test``, else a 0.25 split of the 8 normals)."""
    cfg = dict(data=None, category=None, normal_dir=str(d["normal"]), abnormal_dir=str(d["abnormal"]),
               mask_dir=str(d["masks"]) if masks else None)
    if not normal_test:
        return cfg | dict(normal_split=0.25)
    held = d["normal"].parent / "normal_test"
    held.mkdir()
    for p in sorted(d["normal"].glob("test_*")):
        shutil.move(p, held / p.name)
    return cfg | dict(normal_test_dir=str(held))


#: name → (TrainConfig fields of a tree built in tmp_path from tiny_root; layout detected; train size; test labels;
#: whether the test set has masks). Nothing here passes ``layout``: every case is detected.
LAYOUT_CASES = {
    "mvtec": (lambda src, dst: dict(data=str(src), category="texture"),
              "mvtec", N_TRAIN, MVTEC_TEST_LABELS, True),
    "mvtec, no ground_truth": (lambda src, dst: dict(data=str(_no_gt(src, dst)), category="texture"),
                               "mvtec", N_TRAIN, MVTEC_TEST_LABELS, False),
    "btad, .png and .bmp": (lambda src, dst: dict(data=str(_btad(src, dst)), category="prod"),
                            "btad", N_TRAIN, [0] * N_GOOD + [1] * N_BAD, True),
    "btad, no ground_truth": (lambda src, dst: dict(data=str(_btad(src, dst, masks=False)), category="prod"),
                              "btad", N_TRAIN, [0] * N_GOOD + [1] * N_BAD, False),
    "folder, split, masks": (lambda src, dst: _folder_cfg(_folder(src, dst)),
                             "folder", N_TRAIN, [0] * 2 + [1] * N_BAD, True),
    "folder, split, no masks": (lambda src, dst: _folder_cfg(_folder(src, dst), masks=False),
                                "folder", N_TRAIN, [0] * 2 + [1] * N_BAD, False),
    "folder, normal test dir": (lambda src, dst: _folder_cfg(_folder(src, dst), normal_test=True),
                                "folder", N_TRAIN, [0] * N_GOOD + [1] * N_BAD, True),
}


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_every_layout_detected_with_exact_counts_and_labels(case, tiny_root, tmp_path):
    build, layout, n_train, test_labels, has_masks = LAYOUT_CASES[case]
    cfg = TrainConfig(out="o", **build(tiny_root, tmp_path))
    assert cfg.layout == "auto" and resolve_layout(cfg).layout == layout
    train, test = open_dataset(cfg, "train", 32), open_dataset(cfg, "test", 32, mask_size=32)
    assert (train.layout, test.layout) == (layout, layout)
    assert len(train) == n_train and train.labels == [0] * n_train
    assert test.labels == test_labels and not {p.resolve() for p in train.paths} & {p.resolve() for p in test.paths}
    assert test.has_masks is has_masks and bool(test.no_masks_reason) is not has_masks
    masked = [(p, m) for p, m, label in zip(test.paths, test.mask_paths, test.labels) if m is not None]
    assert len(masked) == (sum(test_labels) if has_masks else 0)  # every anomalous image, and only those
    for image, mask in masked:  # matched by stem: MVTec's <stem>_mask.png, BTAD's <stem>.png|.bmp, folder's both
        assert mask.stem in (image.stem, f"{image.stem}_mask")
    assert all(m is None for m, label in zip(test.mask_paths, test.labels) if label == 0)
    for i in (0, len(test) - 1):  # a normal item and an anomalous one read back
        item = test[i]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
        assert item["label"] == test_labels[i]
        assert bool(item["mask"].sum() > 0) is (has_masks and test_labels[i] == 1)


def _ambiguous(src: Path, dst: Path) -> dict:
    root = _btad(src, dst)
    (root / "prod" / "train" / "good").mkdir()
    return dict(data=str(root), category="prod")


def _unknown(src: Path, dst: Path) -> dict:
    (dst / "thing" / "images").mkdir(parents=True)
    return dict(data=str(dst), category="thing")


def _btad_missing_mask(src: Path, dst: Path) -> dict:
    root = _btad(src, dst)
    (root / "prod" / "ground_truth" / "ko" / "hole_001.bmp").unlink()  # every other mask is a .bmp
    return dict(data=str(root), category="prod")


def _mvtec_missing_mask(src: Path, dst: Path) -> dict:
    shutil.copytree(src / "texture", dst / "texture")
    (dst / "texture" / "ground_truth" / "stain" / "001_mask.png").unlink()
    return dict(data=str(dst), category="texture")


def _folder_missing_mask(src: Path, dst: Path) -> dict:
    d = _folder(src, dst)
    next(d["masks"].glob("scratch_001*")).unlink()
    return _folder_cfg(d)


#: name → (TrainConfig fields of a broken tree, exception, what the one-line message must say).
ERROR_CASES = {
    "both layouts": (_ambiguous, ValueError, r"both train/good .* and train/ok \+ test/ko .*pass --layout mvtec "
                                             r"or --layout btad"),
    "no layout": (_unknown, ValueError, r"no known layout.*pass --layout"),
    "btad mask missing": (_btad_missing_mask, FileNotFoundError,
                          r"test/ko/hole_001\.png has no mask: neither hole_001\.png nor hole_001\.bmp is in "
                          r".*ground_truth/ko"),
    "mvtec mask missing": (_mvtec_missing_mask, FileNotFoundError,
                           r"test/stain/001\.png has no mask: .*ground_truth/stain/001_mask\.png does not exist"),
    "folder mask missing": (_folder_missing_mask, FileNotFoundError,
                            r"abnormal/scratch_001\.png has no mask: no scratch_001\.<ext> or "
                            r"scratch_001_mask\.<ext> in .*masks"),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=str)
def test_unreadable_test_sets_fail_in_one_line(case, tiny_root, tmp_path):
    build, error, message = ERROR_CASES[case]
    cfg = TrainConfig(out="o", **build(tiny_root, tmp_path))
    with pytest.raises(error, match=message) as e:
        open_dataset(cfg, "test", 32)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ metrics without masks
def test_compute_metrics_without_masks_gives_none_not_zero():
    rng = np.random.default_rng(0)
    label = np.array([0, 0, 0, 1, 1, 1, 1])
    pred = dict(score=rng.random((7, 8, 8)), image_score=rng.random(7) + label * 0.3, mean_z2=rng.random(7),
                label=label, nfa=rng.normal(size=(7, 8, 8)), score_pro=rng.random((7, 8, 8)), mask=None)
    res = compute_metrics(pred)
    assert {k for k, v in res.items() if v is None} == set(MASK_METRICS)
    assert res["image_auroc"] == roc_auc_score(label, pred["image_score"])
    assert res["false_detections_normal"] == float((pred["nfa"][:3] > 0).reshape(3, -1).any(1).sum())


# ------------------------------------------------------------------------------------------ end to end, one per layout
def _evaluate_json(capsys, checkpoint: Path, *extra: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--json", "--no-progress", *extra]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_cli_mvtec_without_ground_truth(tiny_root, tmp_path, capsys):
    """reproduce (train 1 epoch with --eval-every, evaluate, table) and evaluate on a root without masks."""
    root, out = _no_gt(tiny_root, tmp_path / "data"), tmp_path / "repro"
    assert main(["reproduce", "--data", str(root), "--categories", "texture", "--backbone", "mobilenetv2",
                 "--random-weights", "--epochs", "1", "--eval-every", "1", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("note: ") == 2  # once at the first test evaluation, once at the last epoch's
    md = (out / "results.md").read_text()
    assert ("| texture | 1 | this run: last epoch | mobilenetv2, 256 px | one: the scale nearest 16² "
            "| n/a | n/a | n/a | n/a |") in md and "n/a: the category's test set" in md
    # best-on-test: epoch 1, selected on image AUROC, no pixel metric and no NFA
    assert "| texture | 1 | this run: best on test (selected on test) | mobilenetv2, 256 px | — (no NFA) | n/a | n/a | — | — |" in md
    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["pixel_auroc"] == row["aupro"] == row["miou_auto"] == "" and 0 <= float(row["image_auroc"]) <= 100
    metrics = json.loads((out / "texture" / "metrics.json").read_text())
    assert {k for k, v in metrics.items() if v is None} == set(MASK_METRICS) - {"aupro_pixel_map"}  # null, not 0
    assert metrics["layout"] == "mvtec" and metrics["false_detections_normal"] >= 0
    ckpt = out / "texture" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["config"]["layout"] == "mvtec"
    assert "image AUROC" in torch.load(out / "texture" / "best_on_test.pt", weights_only=True)["selected_on"]
    # the evaluate table shows pixel metrics as unavailable and says why once
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--no-progress", "--no-nfa"]) == 0
    shown = capsys.readouterr()
    assert f"pixel_auroc  {NO_MASKS}" in shown.out and f"aupro  {NO_MASKS}" in shown.out
    assert f"image_auroc  {metrics['image_auroc']:.4f}" in shown.out
    assert shown.err.count("note:") == 1 and "ground_truth does not exist" in shown.err


def test_cli_btad(tiny_root, tmp_path, capsys):
    root, out = _btad(tiny_root, tmp_path / "data"), tmp_path / "run"
    assert main(["train", "--data", str(root), "--category", "prod", "--out", str(out), *TINY]) == 0
    res, err = _evaluate_json(capsys, out / "last.pt", "--no-nfa")
    assert res["layout"] == "btad" and res["category"] == "prod" and "note:" not in err
    assert 0.0 <= res["pixel_auroc"] <= 1.0 and 0.0 <= res["aupro"] <= 1.0 and 0.0 <= res["image_auroc"] <= 1.0


def test_cli_folder(tiny_root, tmp_path, capsys):
    d, out = _folder(tiny_root, tmp_path / "data"), tmp_path / "run"
    folder = ["--normal-dir", str(d["normal"]), "--abnormal-dir", str(d["abnormal"]), "--normal-split", "0.25"]
    assert main(["train", *folder, "--out", str(out), *TINY]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (cfg["layout"], cfg["category"], cfg["data"], cfg["normal_split"]) == ("folder", "normal", None, 0.25)
    res, err = _evaluate_json(capsys, out / "last.pt", "--no-nfa")
    assert res["pixel_auroc"] is None and res["aupro"] is None and "no --mask-dir" in err
    # image AUROC is sklearn's on the scores the model gives; predict works
    from uflow_lib.checkpoint import load_trained

    cfg, extractor, model, _ = load_trained(out / "last.pt")
    test = open_dataset(cfg, "test", cfg.input_size)
    pred = predict_maps(model, extractor, test, nfa=None, progress=False)
    assert pred["mask"] is None and pred["label"].tolist() == [0, 0] + [1] * N_BAD
    assert res["image_auroc"] == pytest.approx(roc_auc_score(pred["label"], pred["image_score"]), abs=1e-12)
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--input", str(d["abnormal"]),
                 "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").iterdir())) == 2 * N_BAD
    with_masks, _ = _evaluate_json(capsys, out / "last.pt", "--no-nfa", *folder, "--mask-dir", str(d["masks"]))
    assert 0.0 <= with_masks["pixel_auroc"] <= 1.0 and with_masks["image_auroc"] == res["image_auroc"]
    assert main(["train", "--data", str(tiny_root), *folder, "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "is not used with --layout folder" in capsys.readouterr().err


def test_eval_every_opens_the_test_set_before_any_training(tiny_root, tmp_path, capsys, monkeypatch):
    """A test set that cannot be read fails at once (no backbone, no epoch), naming the file."""
    import uflow_lib.training as training

    def started(*_args, **_kwargs):
        raise AssertionError("training started before the test set was checked")

    monkeypatch.setattr(training, "_start", started)
    root = _btad(tiny_root, tmp_path / "data")
    (root / "prod" / "ground_truth" / "ko" / "stain_000.png").unlink()
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--category", "prod", "--eval-every", "1", "--out", str(out),
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "stain_000.png has no mask" in err
    assert not (out / "last.pt").exists()
    # without --eval-every the test set is not needed, and training gets as far as starting
    with pytest.raises(AssertionError, match="training started"):
        main(["train", "--data", str(root), "--category", "prod", "--out", str(out), *TINY])
