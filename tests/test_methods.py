"""The common method interface: U-Flow, MSFlow and SANFlow through the same train/evaluate/predict/CLI code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uflow_lib import methods, training
from uflow_lib.checkpoint import load_trained
from uflow_lib.cli import main
from uflow_lib.config import TrainConfig
from uflow_lib.data import MVTecDataset
from uflow_lib.evaluation import default_nfa_scales, evaluate_checkpoint, latent_sides, predict_maps
from uflow_lib.methods import FLOWS, METHODS, build_extractor_for, build_model, ci_config, resolve, sanflow
from uflow_lib.methods.msflow import msflow_lr_lambda
from uflow_lib.scoring import mean_z2


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tiny_methods")
    make_dataset(root, seed=4, image_size=128, n_train=6, n_test_good=2, n_test_defect=2)
    return root


def _cfg(root, out, method, **kw) -> TrainConfig:
    base = dict(data=str(root), category="texture", out=str(out), method=method, backbone="mobilenetv2",
                pretrained=False, input_size=128, epochs=2, batch_size=4, lr=1e-3, flow_steps=2, variance_size=32)
    base.update(kw)
    return TrainConfig(**base)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_each_method_reads_its_own_stages_and_has_the_documented_size():
    """Stages and parameter counts at 256 with MobileNetV2 (counts derived by hand in msflow.py / sanflow.py)."""
    want = {"uflow": ([32, 96], [32, 16]), "msflow": ([24, 32, 96], [64, 32, 16]), "sanflow": ([32, 96, 320], [32, 16, 8]),
            "patchcore": ([32, 96], [32, 16]), "padim": ([24, 32, 96], [64, 32, 16])}
    for method in METHODS:
        cfg = resolve(TrainConfig(data=".", category="texture", out=".", method=method, backbone="mobilenetv2",
                          pretrained=False))
        extractor = build_extractor_for(cfg)
        assert (extractor.channels, extractor.feature_sizes(256)) == want[method]
        model = build_model(cfg, extractor)
        assert latent_sides(model) == {"uflow": [32, 16], "msflow": [32, 16, 8], "sanflow": [32, 16, 8],
                                       "patchcore": [], "padim": []}[method]
    msflow = build_model(ci_config(".", ".", method="msflow"), build_extractor_for(ci_config(".", ".", method="msflow")))
    assert _trainable(msflow) == 2_374_482
    san_cfg = ci_config(".", ".", method="sanflow")
    sanflow = build_model(san_cfg, build_extractor_for(san_cfg))
    assert _trainable(sanflow) == 3_993_600 + 114_114


def test_method_settings_fill_defaults():
    ms = resolve(TrainConfig(data=".", category="bottle", out=".", method="msflow", backbone="resnet18"))
    assert (ms.epochs, ms.batch_size, ms.lr) == (100, 8, 1e-4)  # MSFlow's recipe, not U-Flow's bottle row
    san = resolve(TrainConfig(data=".", category="bottle", out=".", method="sanflow", backbone="resnet18"))
    assert (san.epochs, san.batch_size, san.lr) == (200, 8, 5e-4)
    # with MobileNetV2, the settings chosen on validation (benchmarks/results/recipe_validation.md)
    ms = resolve(TrainConfig(data=".", category="bottle", out=".", method="msflow", backbone="mobilenetv2"))
    assert (ms.epochs, ms.batch_size, ms.lr) == (90, 8, 1e-4)
    san = resolve(TrainConfig(data=".", category="bottle", out=".", method="sanflow", backbone="mobilenetv2"))
    assert (san.epochs, san.batch_size, san.lr, san.variance_size) == (25, 8, 2e-3, 64)
    with pytest.raises(ValueError, match="unknown method 'cflow'; choose one of uflow, msflow, sanflow"):
        resolve(TrainConfig(data=".", category="bottle", out=".", method="cflow"))


def test_msflow_and_sanflow_refuse_mcait():
    for method in ("msflow", "sanflow"):
        with pytest.raises(ValueError, match="CNN stages"):
            build_extractor_for(TrainConfig(data=".", category="x", out=".", method=method, backbone="mcait"))


def test_learning_rate_schedules():
    ms = methods.get_method("msflow")
    for epoch in (0.0, 6.0, 69.9, 70.0, 95.0):  # at 100 epochs: exactly the authors' schedule
        assert ms.lr_factor(epoch, 100) == pytest.approx(msflow_lr_lambda(epoch))
    assert ms.lr_factor(35.0, 50) == pytest.approx(0.33)  # stretched: milestone 70 % of the run
    san = methods.get_method("sanflow")
    assert san.lr_factor(0.0, 20) == pytest.approx(0.1) and san.lr_factor(2.0, 20) == pytest.approx(1.0)
    assert san.lr_factor(11.0, 20) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)  # cosine half-way
    assert san.lr_factor(20.0, 20) == pytest.approx(1e-3)
    assert methods.get_method("uflow").lr_factor(123.4, 200) == 1.0


@pytest.mark.parametrize("method", ["msflow", "sanflow"])
def test_resume_continues_exactly(tiny_root, tmp_path, method):
    """Schedules are functions of the step and SANFlow's synthetic anomalies are seeded per batch."""
    full = training.train(_cfg(tiny_root, tmp_path / "full", method), progress=False)
    assert full.finished and full.epochs_done == 2
    part = training.train(_cfg(tiny_root, tmp_path / "part", method, max_minutes=0.0), progress=False,
                          log=lambda *_: None)  # stops after epoch 1 of the same 2-epoch schedule
    assert part.epochs_done == 1
    training.train(_cfg(tiny_root, tmp_path / "part", method), progress=False, log=lambda *_: None)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)


def test_sanflow_sees_different_synthetic_anomalies_every_batch(monkeypatch, tiny_root, tmp_path):
    seen = []
    original = sanflow.synthesize_anomalies

    def spy(images, rng):
        out, masks = original(images, rng)
        seen.append(masks.sum().item())
        return out, masks

    monkeypatch.setattr(sanflow, "synthesize_anomalies", spy)
    training.train(_cfg(tiny_root, tmp_path, "sanflow", epochs=2), progress=False)
    assert len(seen) == 4 and len(set(seen)) > 1  # 2 epochs × 2 batches, not the same masks each time


def test_sanflow_nfa_latents_are_standardised_by_the_predicted_variance(tiny_root, tmp_path):
    res = training.train(_cfg(tiny_root, tmp_path, "sanflow", epochs=1), progress=False)
    cfg, extractor, model, _ = load_trained(res.checkpoint)
    images = torch.stack([MVTecDataset(tiny_root, "texture", "test", input_size=128)[i]["image"] for i in range(2)])
    latents, parts = methods.get_method("sanflow").infer(model, extractor, images, 64)
    feats, _ = model.features_and_statistics(extractor, images)  # the backbone as SANFlow runs it
    z0, _ = model.flow_layer(0, feats[0])
    np.testing.assert_allclose(latents[0].numpy(), (z0 / parts["variance0"][:, None].sqrt()).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert parts["log_prob0"].shape == (2, 16, 16) and parts["variance2"].shape == (2, 4, 4)


@pytest.mark.parametrize("method", FLOWS)
def test_evaluate_any_method(tiny_root, tmp_path, method):
    res = training.train(_cfg(tiny_root, tmp_path, method), progress=False)
    m = evaluate_checkpoint(str(res.checkpoint), progress=False)
    assert m["method"] == method and m["epoch"] == 2
    for k in ("pixel_auroc", "image_auroc", "aupro", "miou_auto", "miou_oracle"):
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert ("aupro_pixel_map" in m) == (method == "msflow")  # MSFlow: AUPRO on the product map, both reported
    cfg, extractor, model, _ = load_trained(res.checkpoint)
    test = MVTecDataset(tiny_root, "texture", "test", input_size=128, mask_size=64)
    pred = predict_maps(model, extractor, test, nfa=None, out_size=64, progress=False, keep_latents=True)
    assert pred["score"].shape == (len(test), 64, 64) and pred["image_score"].shape == (len(test),)
    assert [z.shape[-1] for z in pred["latents"]] == latent_sides(model) and len(pred["latents"][0]) == len(test)
    np.testing.assert_allclose(mean_z2(pred["latents"]).numpy(), pred["mean_z2"], rtol=1e-6)
    assert np.isfinite(pred["score"]).all() and np.isfinite(pred["image_score"]).all()


def test_default_nfa_scales_pick_the_scale_nearest_16():
    assert default_nfa_scales("mobilenetv2", 2) == [1]  # U-Flow, the coarsest (16²)
    assert default_nfa_scales("mobilenetv2", 2, [32, 16]) == [1]
    assert default_nfa_scales("mobilenetv2", 3, [32, 16, 8]) == [1]  # MSFlow / SANFlow at 256
    assert default_nfa_scales("resnet18", 3, [64, 32, 16]) == [2]
    assert default_nfa_scales("mobilenetv2", 3, [16, 8, 4]) == [0]
    assert default_nfa_scales("mcait", 2, [28, 14]) is None


def test_cli_method_round_trip(tiny_root, tmp_path, capsys):
    out = tmp_path / "ms"
    assert main(["train", "--method", "msflow", "--data", str(tiny_root), "--category", "texture", "--backbone",
                 "mobilenetv2", "--random-weights", "--input-size", "128", "--epochs", "1", "--batch-size", "4",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--method", "msflow", "--json",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "msflow"
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--method", "sanflow"]) == 2
    assert "holds a msflow model" in capsys.readouterr().err
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--input",
                 str(tiny_root / "texture" / "test" / "good"), "--out", str(pred)]) == 0
    assert len(list(pred.iterdir())) == 4
    assert main(["train", "--method", "sanflow", "--backbone", "mcait", "--data", str(tiny_root), "--category",
                 "texture", "--random-weights", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "CNN stages" in capsys.readouterr().err


def test_reproduce_table_for_another_method(tiny_root, tmp_path):
    out = tmp_path / "repro"
    assert main(["reproduce", "--method", "msflow", "--data", str(tiny_root), "--categories", "texture", "--backbone",
                 "mobilenetv2", "--random-weights", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    md = (out / "results.md").read_text()
    assert "| msflow | texture | 1 |" in md
    import csv

    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["method"] == "msflow" and row["paper_pixel_auroc"] == ""  # the U-Flow paper's numbers are not MSFlow's


def test_results_table_shows_a_method_column_only_when_needed():
    from uflow_lib.reproduce import results_table

    row = dict(category="bottle", epochs=2, pixel_auroc=95.0, aupro=85.0, miou_auto=0.4, miou_oracle=0.5,
               image_auroc=99.0, mean_z2_normal=1.0)
    uflow_only = results_table([dict(row, method="uflow"), dict(row, category="cable")])
    assert uflow_only.startswith("| category |")  # chapter 6's table, as in the paper
    mixed = results_table([dict(row, method="uflow"), dict(row, method="msflow")]).splitlines()
    assert mixed[0].startswith("| method | category |") and mixed[3].startswith("| msflow | bottle |")
    cells = {line.count("|") for line in mixed[:5]}  # header, rule, two rows and the mean: same columns
    assert cells == {13}, mixed[:5]
