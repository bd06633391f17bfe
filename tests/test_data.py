"""Tests of uflow_lib.data: layout, labels, masks, conversions and the error for every broken input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uflow_lib.data import IMAGE_EXTENSIONS, MVTEC_CATEGORIES, MVTecDataset, load_image, load_mask
from uflow_lib.synthetic import CATEGORIES, make_dataset


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _tiny_layout(root: Path, category: str = "cat", size: int = 16) -> Path:
    """root/category with 2 train/good, 1 test/good, 2 test/crack (+ masks); returns root."""
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 2), ("test/good", 1), ("test/crack", 2)):
        for i in range(n):
            _save(root / category / sub / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for i in range(2):
        mask = np.zeros((size, size), np.uint8)
        mask[: size // 2, : size // 2] = 255
        _save(root / category / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def test_categories_constant():
    assert len(MVTEC_CATEGORIES) == 15 and len(set(MVTEC_CATEGORIES)) == 15
    assert {"bottle", "grid", "metal_nut", "zipper"} <= set(MVTEC_CATEGORIES)


def test_generated_layout_counts_and_labels(generated_root):
    defects = list(CATEGORIES["texture"][1])
    train = MVTecDataset(generated_root, "texture", "train", input_size=64, mask_size=32)
    test = MVTecDataset(generated_root, "texture", "test", input_size=64, mask_size=32)
    assert len(train) == 60 and set(train.labels) == {0} and set(train.defects) == {"good"}
    assert len(test) == 10 + 8 * len(defects)
    assert sum(test.labels) == 8 * len(defects)
    assert sorted(set(test.defects)) == sorted(["good", *defects])
    assert test.paths == sorted(test.paths)  # sorted by folder then name: deterministic
    for label, defect, mask_path in zip(test.labels, test.defects, test.mask_paths):
        assert label == (defect != "good") and (mask_path is None) == (defect == "good")
    for i in (0, test.labels.index(1), len(test) - 1):
        item = test[i]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, 32, 32)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert (item["mask"].sum() > 0) == bool(item["label"])
        assert item["path"] == str(test.paths[i]) and item["defect"] == test.defects[i]
    loader = torch.utils.data.DataLoader(test, batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].tolist() == test.labels[:4]


def test_item_is_deterministic(generated_root):
    a = MVTecDataset(generated_root, "texture", "test", input_size=32)
    b = MVTecDataset(generated_root, "texture", "test", input_size=32)
    assert a.paths == b.paths
    j = a.labels.index(1)
    torch.testing.assert_close(a[j]["image"], b[j]["image"], rtol=0, atol=0)
    torch.testing.assert_close(a[j]["mask"], b[j]["mask"], rtol=0, atol=0)


def test_image_matches_pil_resize(generated_root):
    ds = MVTecDataset(generated_root, "texture", "train", input_size=100)
    expected = np.asarray(Image.open(ds.paths[0]).convert("RGB").resize((100, 100), Image.BILINEAR)) / 255.0
    torch.testing.assert_close(ds[0]["image"], torch.tensor(expected, dtype=torch.float32).permute(2, 0, 1))


def test_real_bottle(bottle_root):
    train = MVTecDataset(bottle_root, "bottle", "train")
    test = MVTecDataset(bottle_root, "bottle", "test", input_size=448, mask_size=256)
    assert len(train) == 209 and len(test) == 83 and sum(test.labels) == 63
    assert test.defects.count("good") == 20
    assert sorted(set(test.defects)) == ["broken_large", "broken_small", "contamination", "good"]
    assert all(p.is_file() for p in test.mask_paths if p is not None)
    good, bad = test[test.labels.index(0)], test[test.labels.index(1)]  # only two items: decoding 900x900 PNGs is slow
    assert good["image"].shape == (3, 448, 448) and good["mask"].sum() == 0 and good["label"] == 0
    assert bad["label"] == 1 and bad["defect"] == "broken_large"
    assert 0 < bad["mask"].mean() < 0.5 and set(bad["mask"].unique().tolist()) == {0.0, 1.0}


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    gray = np.array([[0, 255], [51, 102]], np.uint8)
    out = load_image(_save(tmp_path / "g.png", gray), size=2)
    assert out.shape == (3, 2, 2)
    for c in range(3):  # golden: v / 255 in every channel
        torch.testing.assert_close(out[c], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7  # red, nearly transparent: alpha is dropped
    out = load_image(_save(tmp_path / "a.png", rgba), size=2)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    Image.fromarray(np.full((4, 4, 3), 51, np.uint8)).convert("P").save(tmp_path / "p.bmp")
    torch.testing.assert_close(load_image(tmp_path / "p.bmp", 8), torch.full((3, 8, 8), 0.2))
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grayscale, full scale -> 1.0
    deep.save(tmp_path / "d.png")
    torch.testing.assert_close(load_image(tmp_path / "d.png", 4), torch.ones(3, 4, 4))


def test_grayscale_category_dataset(tmp_path):
    root = _tiny_layout(tmp_path)
    gray = np.tile(np.arange(16, dtype=np.uint8)[None] * 16, (16, 1))
    _save(root / "cat" / "train" / "good" / "000.png", gray)  # like MVTec grid/screw/zipper
    image = MVTecDataset(root, "cat", "train", input_size=16)[0]["image"]
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image[0], image[2])
    torch.testing.assert_close(image[0], torch.tensor(gray / 255.0, dtype=torch.float32))


def test_mask_binarisation_golden(tmp_path):
    half = np.zeros((8, 8), np.uint8)
    half[:, :4] = 255  # left half anomalous; bilinear to 4x4 gives 0.875 / 0.125 per column pair
    out = load_mask(_save(tmp_path / "h.png", half), size=4)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)[None])
    soft = np.array([[100, 200], [127, 128]], np.uint8)  # same size: plain threshold at 0.5 (127.5 / 255)
    torch.testing.assert_close(load_mask(_save(tmp_path / "s.png", soft), 2), torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_mask_resize_agrees_with_torch_antialiased_bilinear(tmp_path):
    rng = np.random.default_rng(3)
    blob = (np.hypot(*np.mgrid[-40:41, -40:41]) < rng.uniform(10, 30)).astype(np.uint8) * 255  # (81, 81)
    blob = np.pad(blob, ((7, 12), (3, 16)))  # (100, 100), off centre
    ours = load_mask(_save(tmp_path / "m.png", blob), size=37)
    soft = F.interpolate(torch.tensor(blob / 255.0)[None, None], size=(37, 37), mode="bilinear",
                         antialias=True, align_corners=False)[0]  # (1, 37, 37), an independent resize
    clear = (soft - 0.5).abs() > 0.02  # compare away from ties at the threshold
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(ours[clear], (soft[clear] > 0.5).float())
    assert 0.02 < ours.mean() < 0.5


def test_root_containing_test_in_its_path(tmp_path):
    root = make_dataset(tmp_path / "test" / "my_test_data", category="tiles", image_size=64, n_train=2,
                        n_test_good=1, n_test_defect=1)
    ds = MVTecDataset(root, "tiles", "test", input_size=64, mask_size=64)
    for path, mask_path in zip(ds.paths, ds.mask_paths):
        if mask_path is not None:
            assert mask_path == root / "tiles" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
    j = ds.labels.index(1)
    assert ds[j]["mask"].sum() > 0
    expected = np.asarray(Image.open(ds.mask_paths[j])) > 127
    torch.testing.assert_close(ds[j]["mask"][0], torch.tensor(expected, dtype=torch.float32))


def test_extensions_case_insensitive_hidden_and_other_files_ignored(tmp_path):
    root = _tiny_layout(tmp_path)
    good = root / "cat" / "train" / "good"
    arr = np.zeros((16, 16, 3), np.uint8)
    Image.fromarray(arr).save(good / "z.JPG", format="JPEG")
    Image.fromarray(arr).save(good / "y.Tiff", format="TIFF")
    (good / "notes.txt").write_text("not an image")
    _save(good / "._000.png", arr)  # macOS resource fork
    (root / "cat" / "train" / ".ipynb_checkpoints").mkdir()
    ds = MVTecDataset(root, "cat", "train", input_size=16)
    assert [p.name for p in ds.paths] == ["000.png", "001.png", "y.Tiff", "z.JPG"]
    assert ds[3]["image"].shape == (3, 16, 16)
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(split="val"), ValueError, "split='val'.*'train' or 'test'"),
    (dict(input_size=0), ValueError, "input_size must be a positive.*got 0"),
    (dict(input_size=-3), ValueError, "input_size must be a positive.*got -3"),
    (dict(input_size=2.5), TypeError, "input_size must be an int.*2.5"),
    (dict(input_size="256"), TypeError, "input_size must be an int.*'256'"),
    (dict(mask_size=True), TypeError, "mask_size must be an int"),
    (dict(category="bottle"), FileNotFoundError, r"category 'bottle' not found.*found under .*\['cat'\]"),
])
def test_bad_arguments(tmp_path, kwargs, error, match):
    root = _tiny_layout(tmp_path)
    args = dict(root=root, category="cat", split="test") | kwargs
    with pytest.raises(error, match=match):
        MVTecDataset(**args)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root .*nowhere does not exist.*category folders"):
        MVTecDataset(tmp_path / "nowhere", "cat", "train")


def test_missing_split_folder(tmp_path):
    root = _tiny_layout(tmp_path)
    shutil.rmtree(root / "cat" / "test")
    with pytest.raises(FileNotFoundError, match="split folder .*test does not exist"):
        MVTecDataset(root, "cat", "test")


def test_empty_folders(tmp_path):
    root = _tiny_layout(tmp_path)
    for p in (root / "cat" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="good contains no images"):
        MVTecDataset(root, "cat", "train")
    shutil.rmtree(root / "cat" / "train" / "good")
    with pytest.raises(ValueError, match="train has no class subfolders"):
        MVTecDataset(root, "cat", "train")


def test_defect_image_without_mask(tmp_path):
    root = _tiny_layout(tmp_path)
    (root / "cat" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="001.png has no mask: .*ground_truth.crack.001_mask.png"):
        MVTecDataset(root, "cat", "test")


def test_mask_size_differs_from_image(tmp_path):
    root = _tiny_layout(tmp_path)
    _save(root / "cat" / "ground_truth" / "crack" / "000_mask.png", np.zeros((8, 16), np.uint8))
    ds = MVTecDataset(root, "cat", "test")  # checked lazily, per item
    with pytest.raises(ValueError, match="000_mask.png is 16x8 but its image .*000.png is 16x16"):
        ds[ds.defects.index("crack")]
    assert ds[ds.defects.index("crack") + 1]["mask"].sum() > 0  # the other item still reads


def test_corrupt_image_named_when_read(tmp_path):
    root = _tiny_layout(tmp_path)
    bad = root / "cat" / "train" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = MVTecDataset(root, "cat", "train")  # construction does not decode images
    assert ds[0]["image"].shape == (3, 256, 256)
    with pytest.raises(ValueError, match="cannot read image .*001.png.*corrupt"):
        ds[1]
    truncated = root / "cat" / "train" / "good" / "000.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match="cannot read image .*000.png"):
        load_image(truncated, 16)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="size must be a positive"):
        load_image(tmp_path / "missing.png", size=0)
