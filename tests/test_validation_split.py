"""The validation set: held-out normal training images plus synthetic anomalies with exact masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from uflow_lib.data import MVTecDataset
from uflow_lib.validation_split import VALIDATION_DEFECT, make_validation_set


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("val_source")
    make_dataset(root, seed=2, image_size=96, n_train=10, n_test_good=1, n_test_defect=1)
    return root


def test_split_counts_and_disjoint_parts(source, tmp_path):
    out = make_validation_set(source, "texture", tmp_path / "val", fraction=0.2, seed=0)
    root = out / "texture"
    train = sorted(p.name for p in (root / "train" / "good").iterdir())
    good = sorted(p.name for p in (root / "test" / "good").iterdir())
    assert len(train) == 8 and len(good) == 2 and not set(train) & set(good)
    assert set(train) | set(good) == {p.name for p in (source / "texture" / "train" / "good").iterdir()}
    test = MVTecDataset(out, "texture", "test", input_size=64)
    assert test.has_masks and sorted(test.labels) == [0, 0, 1, 1]
    assert set(test.defects) == {"good", VALIDATION_DEFECT}
    # nothing of the real test set is used
    assert not any("test" in str(p.resolve().relative_to(source)) for p in (root / "train" / "good").iterdir())


def test_anomalies_change_exactly_their_masks(source, tmp_path):
    root = make_validation_set(source, "texture", tmp_path / "val", seed=0) / "texture"
    for p in sorted((root / "test" / VALIDATION_DEFECT).iterdir()):
        original = np.asarray(Image.open(root / "test" / "good" / p.name).convert("RGB"), dtype=np.int16)
        changed = np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
        mask = np.asarray(Image.open(root / "ground_truth" / VALIDATION_DEFECT / f"{p.stem}_mask.png")) > 0
        assert changed.shape == original.shape and mask.shape == original.shape[:2]
        assert 0 < mask.mean() < 0.5
        assert np.array_equal(changed[~mask], original[~mask])  # untouched outside the mask
        assert np.abs(changed[mask] - original[mask]).max() > 0


def test_same_seed_same_set_other_seed_other_split(source, tmp_path):
    a = make_validation_set(source, "texture", tmp_path / "a", seed=0) / "texture"
    b = make_validation_set(source, "texture", tmp_path / "b", seed=0) / "texture"
    c = make_validation_set(source, "texture", tmp_path / "c", seed=1) / "texture"
    files = lambda r: sorted(p.name for p in (r / "test" / VALIDATION_DEFECT).iterdir())  # noqa: E731
    assert files(a) == files(b) != files(c)
    for name in files(a):
        assert (a / "test" / VALIDATION_DEFECT / name).read_bytes() == (b / "test" / VALIDATION_DEFECT / name).read_bytes()


def test_refuses_to_overwrite(source, tmp_path):
    make_validation_set(source, "texture", tmp_path / "val")
    with pytest.raises(FileExistsError, match="already exists"):
        make_validation_set(source, "texture", tmp_path / "val")
