"""Tests of uflow_lib.synthetic: layout, exact masks, visibility of defects, determinism, reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uflow_lib.synthetic import CATEGORIES, DEFAULT_CATEGORY, make_dataset, render_sample


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_default_layout(generated_root):
    folder = generated_root / DEFAULT_CATEGORY
    defects = list(CATEGORIES[DEFAULT_CATEGORY][1])
    assert DEFAULT_CATEGORY == "texture" and len(defects) >= 3
    assert len(list((folder / "train" / "good").glob("*.png"))) == 60
    assert len(list((folder / "test" / "good").glob("*.png"))) == 10
    assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(["good", *defects])
    for d in defects:
        images = sorted((folder / "test" / d).glob("*.png"))
        masks = sorted((folder / "ground_truth" / d).glob("*.png"))
        assert len(images) == 8 and [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
        for m in masks[:3]:
            mask = np.asarray(Image.open(m))
            assert mask.shape == (256, 256) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            assert 0.001 < (mask > 0).mean() < 0.15  # a defect, not the whole image
        image = Image.open(images[0])
        assert image.mode == "RGB" and image.size == (256, 256)
    assert json.loads((folder / "synthetic.json").read_text())["seed"] == 0
    assert not (folder / "ground_truth" / "good").exists()


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_masks_are_exactly_the_changed_pixels(category):
    for d, defect in enumerate(CATEGORIES[category][1]):
        for i in range(3):
            clean, image, mask = render_sample(category, defect, np.random.default_rng([1, d, i]), 128)
            assert clean.shape == image.shape == (128, 128, 3) and mask.shape == (128, 128)
            changed = (clean != image).any(-1)
            assert not (changed & ~mask).any(), f"{defect}: pixels changed outside the mask"
            assert changed[mask].mean() > 0.85, f"{defect}: most of the mask must actually change"


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_defects_visible_and_not_flat(category):
    for d, defect in enumerate(CATEGORIES[category][1]):
        for i in range(3):
            clean, image, mask = render_sample(category, defect, np.random.default_rng([2, d, i]), 256)
            diff = np.abs(image.astype(float) - clean.astype(float)).mean(-1)  # (S, S)
            assert diff[mask].mean() > 12, f"{defect}: mean change {diff[mask].mean():.1f}/255 is too faint"
            assert image[mask].astype(float).std(0).max() > 8, f"{defect}: a constant colour"


def test_normal_images_vary_naturally():
    images = [render_sample("texture", None, np.random.default_rng([0, 0, i]), 128)[1].astype(float)
              for i in range(6)]
    means = np.array([im.mean((0, 1)) for im in images])  # (6, 3) mean colour per image
    assert np.ptp(means, 0).max() < 25  # one product: similar colour ...
    assert min(np.abs(a - b).mean() for a, b in zip(images, images[1:])) > 10  # ... but not copies
    clean, image, mask = render_sample("texture", None, np.random.default_rng(5), 64)
    assert (clean == image).all() and not mask.any()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(image_size=64, n_train=3, n_test_good=2, n_test_defect=2)
    a = _hashes(make_dataset(tmp_path / "a", seed=11, **kw) / "texture")
    b = _hashes(make_dataset(tmp_path / "b", seed=11, **kw) / "texture")
    c = _hashes(make_dataset(tmp_path / "c", seed=12, **kw) / "texture")
    assert a == b and len(a) == 3 + 2 + 2 * 2 * len(CATEGORIES["texture"][1])
    assert all(a[k] != c[k] for k in a)
    # images do not depend on the other counts: the first train image is the same with more images
    d = _hashes(make_dataset(tmp_path / "d", seed=11, **(kw | dict(n_train=5))) / "texture")
    assert d["train/good/000.png"] == a["train/good/000.png"] and len(d) == len(a) + 2


def test_tiles_and_defect_subset(tmp_path):
    root = make_dataset(tmp_path, category="tiles", image_size=96, n_train=2, n_test_good=1, n_test_defect=2,
                        defect_types=["crack", "chip"])
    assert root == tmp_path
    assert sorted(p.name for p in (root / "tiles" / "test").iterdir()) == ["chip", "crack", "good"]
    assert Image.open(root / "tiles" / "test" / "crack" / "001.png").size == (96, 96)


def test_reuse_and_replace(tmp_path):
    kw = dict(image_size=64, n_train=2, n_test_good=1, n_test_defect=1)
    make_dataset(tmp_path, **kw)
    first = tmp_path / "texture" / "train" / "good" / "000.png"
    first.write_bytes(b"sentinel")  # untouched when the parameters are the same
    make_dataset(tmp_path, **kw)
    assert first.read_bytes() == b"sentinel"
    make_dataset(tmp_path, **(kw | dict(n_train=1)))  # other parameters: regenerated
    assert first.read_bytes()[:4] == b"\x89PNG" and not (first.parent / "001.png").exists()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "texture").mkdir()
    (tmp_path / "texture" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by make_dataset"):
        make_dataset(tmp_path, image_size=64, n_train=1, n_test_good=0, n_test_defect=1)
    assert (tmp_path / "texture" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, match", [
    (dict(category="carpet"), r"category='carpet'.*\['texture', 'tiles'\]"),
    (dict(defect_types=["crack"]), "defect_types=.*'crack'.*expected distinct names"),
    (dict(defect_types=[]), "defect_types=.*expected"),
    (dict(image_size=32), "image_size=32: expected an integer >= 64"),
    (dict(n_train=0), "n_train=0"),
    (dict(n_test_defect=1.5), "n_test_defect=1.5"),
    (dict(seed=-1), "seed=-1"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(tmp_path, **kwargs)
