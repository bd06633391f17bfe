"""PatchCore and PaDiM: each piece against scikit-learn, scipy or a value derived by hand, then through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis
from sklearn.neighbors import NearestNeighbors

from uflow_lib.checkpoint import load_checkpoint, load_trained
from uflow_lib.cli import main
from uflow_lib.config import TrainConfig
from uflow_lib.methods import BASELINES, FLOWS, METHODS, get_method
from uflow_lib.methods.padim import PaDiM, channel_subset, embedding
from uflow_lib.methods.patchcore import (N_NEIGHBOURS, PatchCore, greedy_coreset, nearest, patch_features,
                                         smooth_maps)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tiny_baselines")
    make_dataset(root, seed=4, image_size=128, n_train=6, n_test_good=2, n_test_defect=2)
    return root


def _train_argv(root, out, method, *extra) -> list[str]:
    return ["train", "--method", method, "--data", str(root), "--category", "texture", "--backbone", "mobilenetv2",
            "--random-weights", "--input-size", "128", "--no-progress", "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------------- the pieces


def test_registry_splits_flows_and_baselines():
    assert FLOWS == ("uflow", "msflow", "sanflow") and BASELINES == ("patchcore", "padim")
    assert set(METHODS) == set(FLOWS) | set(BASELINES)
    for name in BASELINES:
        assert not get_method(name).trainable and not get_method(name).has_latents


def test_patch_features_average_3x3_and_upsample_to_the_finest_grid():
    g = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    p = patch_features([fine, coarse])
    assert p.shape == (2, 8, 8, 8)
    # an interior position: the plain mean of its 3×3 neighbourhood
    torch.testing.assert_close(p[:, :3, 4, 5], fine[:, :, 3:6, 4:7].mean((2, 3)))
    # a corner: the mean over the 2×2 pixels inside the image (padding not counted)
    torch.testing.assert_close(p[:, :3, 0, 0], fine[:, :, :2, :2].mean((2, 3)))
    pooled = torch.nn.functional.avg_pool2d(coarse, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(p[:, 3:], torch.nn.functional.interpolate(pooled, size=(8, 8), mode="bilinear"))


def test_nearest_agrees_with_scikit_learn_in_chunks():
    g = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(300, 16, generator=g), torch.randn(257, 16, generator=g)
    dist, idx = nearest(queries, bank, k=4, chunk=50)
    ref_d, ref_i = NearestNeighbors(n_neighbors=4).fit(bank.numpy()).kneighbors(queries.numpy())
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idx.numpy(), ref_i)


def _greedy_reference(x: np.ndarray, n: int, first: int) -> list[int]:
    chosen = [first]
    d = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < n:
        chosen.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(x - x[chosen[-1]], axis=1))
    return chosen


def test_greedy_coreset_is_the_farthest_point_rule():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    idx = greedy_coreset(x, 40, seed=3)
    assert idx.shape == (40,) and len(set(idx.tolist())) == 40
    assert idx.tolist() == _greedy_reference(x.numpy(), 40, int(idx[0]))
    # the covering radius shrinks as the coreset grows, and the chosen rows cover x better than random rows do
    radius = lambda rows: torch.cdist(x, x[rows]).min(1).values.max().item()  # noqa: E731
    assert radius(idx) < radius(greedy_coreset(x, 10, seed=3))
    assert radius(idx) < radius(torch.randperm(500, generator=torch.Generator().manual_seed(0))[:40])


def test_greedy_coreset_projects_wide_features():
    x = torch.randn(200, 300, generator=torch.Generator().manual_seed(4))
    idx = greedy_coreset(x, 20, seed=0)
    assert idx.shape == (20,) and len(set(idx.tolist())) == 20 and int(idx.max()) < 200


def test_patchcore_image_score_is_the_papers_reweighted_maximum():
    """One test image with a single 1×1 map of 2 channels, against a bank of 10 points: s* and the weight by hand."""
    model = PatchCore([2], [1], coreset_ratio=1.0)
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [2.0, 2.0], [3.0, 0.0], [0.0, 4.0], [5.0, 5.0],
                         [-1.0, -1.0], [-2.0, 0.5], [6.0, -6.0]])
    model.fit([bank[:, :, None, None]])
    assert model.memory.shape == (10, 2)
    m = torch.tensor([[3.0, 3.5]])  # the test feature (a 1×1 map: the 3×3 average is itself)
    dist, score = model([m[:, :, None, None]])
    d_all = torch.linalg.vector_norm(bank - m, dim=1)
    s_star, n_star = d_all.min(), bank[d_all.argmin()]
    around = torch.linalg.vector_norm(bank - n_star, dim=1).argsort()[:N_NEIGHBOURS]
    d_around = torch.linalg.vector_norm(bank[around] - m, dim=1)
    weight = 1 - math.exp(s_star) / torch.exp(d_around).sum()
    assert dist.shape == (1, 1, 1) and dist.item() == pytest.approx(s_star.item(), rel=1e-6)
    assert score.item() == pytest.approx(weight.item() * s_star.item(), rel=1e-5)


def test_smoothing_is_scipys_gaussian():
    maps = np.random.default_rng(0).random((2, 32, 32))
    np.testing.assert_allclose(smooth_maps(maps), np.stack([gaussian_filter(m, 4.0) for m in maps]), rtol=1e-5)


def test_padim_distance_is_scipys_mahalanobis():
    g = torch.Generator().manual_seed(5)
    train = [torch.randn(12, 3, 4, 4, generator=g), torch.randn(12, 2, 2, 2, generator=g)]
    model = PaDiM([3, 2], [4, 2], d=4, seed=1, epsilon=0.01)
    model.fit(train)
    test = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 2, 2, 2, generator=g)]
    dist = model(test)
    assert dist.shape == (2, 4, 4)
    idx = channel_subset(5, 4, 1).numpy()
    x_train, x_test = embedding(train).numpy()[:, idx], embedding(test).numpy()[:, idx]
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        cov = np.cov(x_train[:, :, i, j], rowvar=False) + 0.01 * np.eye(4)
        mu = x_train[:, :, i, j].mean(0)
        for b in range(2):
            want = mahalanobis(x_test[b, :, i, j], mu, np.linalg.inv(cov))
            assert dist[b, i, j].item() == pytest.approx(want, rel=1e-4)


def test_padim_channel_subset_is_seeded_and_bounded():
    a, b = channel_subset(152, 100, 0), channel_subset(152, 100, 0)
    assert torch.equal(a, b) and len(a) == 100 and torch.all(a[1:] > a[:-1]) and int(a.max()) < 152
    assert not torch.equal(a, channel_subset(152, 100, 1))
    assert len(channel_subset(40, 100, 0)) == 40
    with pytest.raises(ValueError, match="at least 2 training images"):
        PaDiM([3], [4], d=2).fit([torch.randn(1, 3, 4, 4)])


# --------------------------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("method", BASELINES)
def test_cli_fits_evaluates_and_predicts_without_nfa(method, tiny_root, tmp_path, capsys):
    out = tmp_path / method
    assert main(_train_argv(tiny_root, out, method)) == 0
    assert "fitted" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "last.pt", training=True)
    assert ckpt["epoch"] == 1 and ckpt["history"][0]["loss"] is None and ckpt["history"][0]["seconds"] >= 0
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["method"] == method and 0 <= res["pixel_auroc"] <= 1 and 0 <= res["aupro"] <= 1
    assert not {"miou_auto", "miou_oracle", "mean_z2_normal"} & set(res)
    assert "the NFA does not apply" in captured.err
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--nfa-scales", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the NFA does not apply" in err
    images = tiny_root / "texture" / "test" / "good"
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--input", str(images), "--out",
                 str(tmp_path / "pred")]) == 0
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert len(written) == len(list(images.iterdir())) and all(n.endswith("_anomaly.png") for n in written)


@pytest.mark.parametrize("option", [("--epochs", "5"), ("--lr", "1e-3"), ("--eval-every", "1")])
def test_cli_refuses_training_options_for_a_baseline(option, tiny_root, tmp_path, capsys):
    assert main(_train_argv(tiny_root, tmp_path / "run", "patchcore", *option)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{option[0]} {float(option[1]):g}" in err and "does not apply to patchcore" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_cli_refuses_a_coreset_ratio_outside_0_1(value, tiny_root, tmp_path, capsys):
    assert main(_train_argv(tiny_root, tmp_path / "run", "patchcore", "--coreset-ratio", value)) == 2
    assert "--coreset-ratio must be a fraction in (0, 1]" in capsys.readouterr().err


def test_memory_bank_size_and_round_trip(tiny_root, tmp_path):
    """Full bank: every training patch (6 images × 16² positions at 128 px); 10 %: its coreset. The checkpoint
    restores the bank and the scores exactly."""
    from uflow_lib.training import train

    base = dict(data=str(tiny_root), category="texture", method="patchcore", backbone="mobilenetv2",
                pretrained=False, input_size=128)
    full = train(TrainConfig(out=str(tmp_path / "full"), coreset_ratio=1.0, **base), progress=False)
    part = train(TrainConfig(out=str(tmp_path / "part"), **base), progress=False)
    _, ext, m_full, _ = load_trained(full.checkpoint)
    _, _, m_part, _ = load_trained(part.checkpoint)
    assert m_full.memory.shape == (6 * 16 * 16, 128)
    assert m_part.memory.shape == (round(0.1 * 6 * 16 * 16), 128)
    # the coreset's rows are rows of the full bank
    assert (m_part.memory[:, None] == m_full.memory[None]).all(2).any(1).all()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = ext(images)
    d1, s1 = m_part(feats)
    fresh = PatchCore(m_part.channels, [w for _, w in m_part.sizes])
    fresh.load_state_dict(torch.load(part.checkpoint, weights_only=True)["model"])
    d2, s2 = fresh(feats)
    assert torch.equal(d1, d2) and torch.equal(s1, s2)
