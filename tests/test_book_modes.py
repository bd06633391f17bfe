"""The chapters' setup: modes (full, smoke, ci), the smoke data, where data and runs live, weights fallback."""

from __future__ import annotations

import pytest
import torch

from uflow_lib import notebook
from uflow_lib.data import MVTecDataset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "CACHE", tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # setup() sets one thread in CPU modes; later tests keep the default


def test_an_unknown_mode_is_refused_with_the_choices(monkeypatch, cache):
    monkeypatch.setenv("UFLOW_BOOK_MODE", "fast")
    with pytest.raises(ValueError, match="full, smoke, ci"):
        notebook.setup(verbose=False)


def test_smoke_mode_takes_the_paper_scale_branches_on_mvtec_named_categories(monkeypatch, cache):
    monkeypatch.setenv("UFLOW_BOOK_MODE", "smoke")
    ctx = notebook.setup(verbose=False)
    assert ctx.paper_scale and not ctx.is_ci and not ctx.mcait_pretrained
    assert ctx.cait_blocks == notebook.SMOKE_CAIT_BLOCKS
    assert sorted(p.name for p in ctx.mvtec_root.iterdir() if p.is_dir()) == ["bottle", "carpet"]
    for category in notebook.SMOKE_CATEGORIES:
        test = MVTecDataset(ctx.mvtec_root, category, "test")
        assert len(MVTecDataset(ctx.mvtec_root, category, "train")) == 8
        assert sum(label == 0 for label in test.labels) == 2 and len(set(test.defects)) > 1


def test_ci_and_full_modes(monkeypatch, cache):
    monkeypatch.setenv("UFLOW_BOOK_MODE", "ci")
    ci = notebook.setup(verbose=False)
    assert not ci.paper_scale and ci.cait_blocks is None
    monkeypatch.setenv("UFLOW_BOOK_MODE", "full")
    full = notebook.setup(verbose=False)
    assert full.paper_scale and full.mcait_pretrained and full.cait_blocks is None and full.pretrained


def test_colab_cpu_takes_the_hub_weights_and_random_only_as_a_last_resort(monkeypatch, cache, capsys):
    monkeypatch.setenv("UFLOW_BOOK_MODE", "ci")
    monkeypatch.setattr(notebook, "default_weights_file", lambda backbone: None)  # no offline file (Colab)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr("uflow_lib.features.build_extractor", lambda *a, **k: calls.append(k))
    ctx = notebook.setup()
    assert calls == [dict(pretrained=True)] and ctx.hub_weights and ctx.pretrained
    assert ctx.extractor_kwargs() == dict(pretrained=True, weights=None)
    assert "ImageNet, from the hub" in capsys.readouterr().out

    def unreachable(*a, **k):
        raise OSError("no route to huggingface.co")

    monkeypatch.setattr("uflow_lib.features.build_extractor", unreachable)
    ctx = notebook.setup()
    assert not ctx.pretrained and "RANDOM" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the hub is not even asked
    monkeypatch.setattr("uflow_lib.features.build_extractor", lambda *a, **k: pytest.fail("asked the hub"))
    assert not notebook.setup(verbose=False).pretrained


def test_runs_and_archive_go_to_drive_when_it_is_mounted(monkeypatch, cache, tmp_path):
    monkeypatch.setattr(notebook, "DRIVE", tmp_path / "MyDrive")
    assert notebook.runs_dir() == cache / "runs" and notebook.drive_archive() is None
    (tmp_path / "MyDrive").mkdir()
    assert notebook.runs_dir() == tmp_path / "MyDrive" / "uflow_runs"
    assert notebook.drive_archive() == tmp_path / "MyDrive" / "mvtec_anomaly_detection.tar.xz"


def test_chapters_6_and_7_find_mvtec_in_the_same_place(monkeypatch, cache, tmp_path):
    monkeypatch.setenv("UFLOW_MVTEC_ROOT", str(tmp_path / "mvtec"))
    assert notebook.mvtec_dir() == tmp_path / "mvtec"
    (tmp_path / "mvtec" / "bottle" / "train").mkdir(parents=True)
    assert notebook.find_mvtec_root() == tmp_path / "mvtec"
