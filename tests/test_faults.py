"""Bad inputs and faults through the command line: one line on stderr, exit status 2, nothing written.

The cases are in ``tests/fault_cases.py`` (``benchmarks/fault_table.py`` prints the same cases as a table); the
world they point at (tiny generated data, two 1-epoch runs, bad files) is built once for the module. Further
tests check what the faults' fixes do when the input is fine after all: predict keeps clashing names, skips
unreadable and hidden files and writes maps at the input's size; a damaged feature cache is rebuilt; resuming on
other data warns; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fault_cases import CASES, build_world, check_output, make_read_only, prepare, snapshot, undo_read_only
from uflow_lib import feature_cache
from uflow_lib.cli import main
from uflow_lib.config import TrainConfig
from uflow_lib.methods import resolve
from uflow_lib.validation import sha256_of


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    paths = build_world(root / "world")
    ro = Path(paths["ro"])
    paths["_read_only_ok"] = make_read_only(ro)
    yield paths
    undo_read_only(ro)


def test_there_are_at_least_30_cases_with_distinct_ids():
    assert len([c for c in CASES if c.code == 2]) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_gives_one_line_and_writes_nothing(case, world, capsys):
    """Status 2: one ``error:`` line, and nothing anywhere in the world changed. Status 0 (a fault the command
    survives): a ``warning:`` line, and changes only in the case's own new folder."""
    if case.id == "out-read-only" and not world["_read_only_ok"]:
        pytest.skip("cannot make a read-only folder here (root without chattr)")
    root = Path(world["root"])
    new = str(root / "new" / case.id)
    before = snapshot(root)
    argv = prepare(case, world, new)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    check_output(case, code, err, world, new)
    mine = str(Path("new") / case.id)
    changed = {k for k, v in set(snapshot(root).items()) ^ set(before.items()) if k != "new" and not k.startswith(mine)}
    assert not changed, f"{case.id} changed {sorted(changed)[:4]}"
    if case.code == 0:
        assert Path(new).exists()


def test_debug_shows_the_traceback(world, capsys):
    code = main(["evaluate", "--checkpoint", f"{world['bad']}/text.pt", "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.strip().splitlines()[-1].startswith("error: cannot read checkpoint")


def test_resolve_keeps_zero_so_that_validation_sees_it():
    """0 is not replaced by the recipe's default (``is None``, never ``or``), so the check refuses it."""
    cfg = resolve(TrainConfig(data=".", category="texture", out=".", backbone="mobilenetv2", epochs=0, batch_size=0,
                              lr=0.0, input_size=0))
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.input_size) == (0, 0, 0.0, 0)


def test_checkpoint_stores_the_weights_hash(world):
    ckpt = torch.load(Path(world["run_w"]) / "last.pt", weights_only=True)
    assert ckpt["weights_sha256"] == sha256_of(world["w_a"]) != sha256_of(world["w_b"])
    assert torch.load(Path(world["run"]) / "last.pt", weights_only=True)["weights_sha256"] is None


def test_a_real_weights_file_passes_the_key_check(mobilenet_weights):
    from uflow_lib.features import build_extractor

    ext = build_extractor("mobilenetv2", weights=mobilenet_weights)
    assert ext.channels == [32, 96]


def _resume_on_copy(world, tmp_path, capsys, drop_one: bool) -> tuple[str, str, Path]:
    """Resume ``world``'s run on a copy of its data under another root and category name (one training image
    removed when ``drop_one``); the command's stdout, stderr and output folder."""
    out = tmp_path / "run"
    shutil.copytree(world["run"], out)
    data2 = tmp_path / "data2"
    shutil.copytree(Path(world["data"]) / "texture", data2 / "other")
    if drop_one:
        min(((data2 / "other" / "train" / "good").iterdir())).unlink()
    argv = ["train", "--data", str(data2), "--category", "other", "--backbone", "mobilenetv2", "--random-weights",
            "--input-size", "64", "--epochs", "2", "--batch-size", "2", "--flow-steps", "1", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    out_text, err = capsys.readouterr()
    return out_text, err, out


def test_resume_on_other_data_warns_and_continues(world, tmp_path, capsys):
    out_text, err, out = _resume_on_copy(world, tmp_path, capsys, drop_one=True)
    assert err.startswith("warning: ") and "was trained on --data" in err and "--category texture" in err
    assert "finished: 2 epochs" in out_text
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_on_the_same_images_moved_is_silent(world, tmp_path, capsys):
    out_text, err, out = _resume_on_copy(world, tmp_path, capsys, drop_one=False)
    assert "was trained on --data" not in err
    assert "finished: 2 epochs" in out_text
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["data_fingerprint"]) == 64


def test_damaged_feature_cache_is_rebuilt_with_a_warning(world, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    argv = ["train", "--data", world["data"], "--category", "texture", "--backbone", "mobilenetv2",
            "--random-weights", "--input-size", "64", "--epochs", "1", "--batch-size", "2", "--flow-steps", "1",
            "--no-progress", "--cache-dir", str(cache)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    (cached,) = cache.glob("features_*.pt")
    good = torch.load(cached, weights_only=True)
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(feature_cache.torch, "load", spy)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning: feature cache" in err and "truncated or damaged" in err and "computing the features again" in err
    assert calls and all(calls), calls  # every cache read is weights_only=True
    rebuilt = real_load(cached, weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(good, rebuilt))
    a = real_load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = real_load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_keeps_clashing_names_skips_bad_files_and_keeps_the_input_size(world, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    rng = torch.Generator().manual_seed(0)
    for name, (w, h) in (("x.png", (80, 48)), ("x.jpg", (40, 60)), (".hidden.png", (32, 32))):
        arr = (torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(images / name)
    (images / "broken.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "pred"
    argv = ["predict", "--checkpoint", f"{world['run']}/last.pt", "--input", str(images), "--out", str(out)]
    assert main(argv) == 0
    text, err = capsys.readouterr()
    assert "wrote 4 files" in text and "skipped 2 files" in text
    assert "warning: skipped" in err and ".hidden.png: hidden file" in err and "broken.png: not a readable image" in err
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"x_png_anomaly.png": (80, 48), "x_png_nfa_mask.png": (80, 48),
                     "x_jpg_anomaly.png": (40, 60), "x_jpg_nfa_mask.png": (40, 60)}
    masks = [set(Image.open(out / n).getdata()) for n in sizes if "mask" in n]
    assert all(m <= {0, 255} for m in masks)
    assert main([*argv, "--overwrite", "--out-size", "32x16"]) == 0
    assert {p.name: Image.open(p).size for p in out.iterdir()} == dict.fromkeys(sizes, (32, 16))
