"""Bad inputs and faults of the command line, shared by ``tests/test_faults.py`` and ``benchmarks/fault_table.py``.

:func:`build_world` writes, once, everything the cases point at (a tiny generated dataset, two trained runs,
weights files good and bad, damaged checkpoints, image folders); each :class:`Case` is an argv template over
its paths, the exit status the CLI must give and a fragment of the one line it must print on stderr.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: The tiny run every training case shares: random MobileNetV2 at 64 px, 4 training images, one flow step.
TRAIN = ("--category", "texture", "--backbone", "mobilenetv2", "--input-size", "64", "--epochs", "1",
         "--batch-size", "2", "--flow-steps", "1", "--no-progress")


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` with ``{name}`` placeholders for the world's paths (``{new}``: a path that does
    not exist yet, one per case), the expected exit status and a fragment of the stderr message: of its one
    ``error:`` line for status 2, of a ``warning:`` line for status 0 (faults the command survives). ``copy``:
    (source, destination) templates copied before the command runs, so that it changes only ``{new}``."""

    id: str
    what: str
    argv: tuple[str, ...]
    fragment: str
    code: int = 2
    copy: tuple[tuple[str, str], ...] = ()


def _train(*extra: str, out: str = "{new}", random: bool = True) -> tuple[str, ...]:
    """``train`` on the world's data with :data:`TRAIN`, each ``(option, value)`` pair of ``extra`` replacing the
    option's value there or added after it."""
    argv = ["train", "--data", "{data}", *TRAIN, *(("--random-weights",) if random else ()), "--out", out]
    for option, value in zip(extra[::2], extra[1::2]):
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return tuple(argv)


def _cuda_case() -> tuple[str, str]:
    """A CUDA device that does not exist here: ``cuda`` without a GPU, else one index past the last GPU."""
    if not torch.cuda.is_available():
        return "cuda", "no CUDA GPU is visible"
    return f"cuda:{torch.cuda.device_count()}", "CUDA GPU(s)"


CUDA, CUDA_MSG = _cuda_case()

CASES: list[Case] = [
    # ------------------------------------------------------------------ settings (before anything loads)
    Case("epochs-0", "--epochs 0", _train("--epochs", "0"), "--epochs must be a whole number >= 1, got 0"),
    Case("epochs-negative", "negative epochs", _train("--epochs", "-3"), "--epochs must be a whole number >= 1"),
    Case("batch-size-0", "--batch-size 0", _train("--batch-size", "0"),
         "--batch-size must be a whole number >= 1, got 0"),
    Case("batch-size-negative", "--batch-size -4", _train("--batch-size", "-4"), "got -4"),
    Case("lr-0", "--lr 0", _train("--lr", "0"), "--lr must be a positive finite learning rate, got 0.0"),
    Case("lr-negative", "negative learning rate", _train("--lr", "-0.001"), "--lr must be a positive"),
    Case("lr-nan", "--lr nan", _train("--lr", "nan"), "--lr must be a positive finite"),
    Case("input-size-0", "--input-size 0", _train("--input-size", "0"), "--input-size 0 does not work"),
    Case("input-size-17", "--input-size 17", _train("--input-size", "17"),
         "multiple of 16 (the stride of the coarsest backbone stage used); sizes near it that work: 16, 32"),
    Case("input-size-sanflow", "SANFlow reads stride 32", _train("--method", "sanflow", "--input-size", "48"),
         "multiple of 32"),
    Case("input-size-mcait", "MS-CaiT at 256", _train("--backbone", "mcait", "--input-size", "256"), "fixed at 448"),
    Case("flow-steps-0", "--flow-steps 0", _train("--flow-steps", "0"), "--flow-steps must be a whole number >= 1"),
    Case("max-minutes-negative", "--max-minutes -1", _train("--max-minutes", "-1"), "--max-minutes must be >= 0"),
    Case("seed-negative", "--seed -1", _train("--seed", "-1"), "--seed must be a whole number >= 0"),
    Case("checkpoint-every-0", "--checkpoint-every 0", _train("--checkpoint-every", "0"),
         "checkpoint_every must be an integer >= 1"),
    Case("device-missing-cuda", "CUDA without a GPU", _train("--device", CUDA), CUDA_MSG),
    Case("device-bogus", "--device gpu0", _train("--device", "gpu0"), "is not a device name"),
    # ------------------------------------------------------------------------------- output folders
    Case("out-is-file", "--out is a file", _train(out="{file}"), "is a file, not a folder"),
    Case("out-read-only", "read-only --out", _train(out="{ro}/run"), "is not writable"),
    Case("out-under-file", "--out inside a file", _train(out="{file}/run"), "cannot be created"),
    Case("cache-dir-is-file", "--cache-dir is a file", _train("--cache-dir", "{file}"), "--cache-dir {file} is a file"),
    # ---------------------------------------------------------------------------------- weights files
    Case("weights-and-random", "--weights with --random-weights", _train("--weights", "{w_a}"),
         "contradict each other"),
    Case("weights-missing", "a weights file that does not exist", _train("--weights", "{new}.pth", random=False),
         "not found"),
    Case("weights-folder", "--weights names a folder", _train("--weights", "{data}", random=False), "is a folder"),
    Case("weights-dict", 'torch.save({"hello": [1, 2, 3]})',
         _train("--weights", "{bad}/hello.pth", random=False), "306 tensors mobilenetv2_100 needs are missing"),
    Case("weights-tensor", "a bare tensor",
         _train("--weights", "{bad}/tensor.pth", random=False), "holds a Tensor, not a state dict"),
    Case("weights-text", "a text file", _train("--weights", "{bad}/text.pth", random=False),
         "it is not a PyTorch file (a text file)"),
    Case("weights-other-architecture", "resnet18's weights for mobilenetv2",
         _train("--weights", "{bad}/resnet18.pth", random=False), "unexpected keys: conv1.weight"),
    Case("weights-other-variant", "mobilenetv2_050's weights: same keys, other shapes",
         _train("--weights", "{bad}/mobilenetv2_050.pth", random=False), "tensors have other shapes"),
    Case("weights-truncated", "a truncated weights file", _train("--weights", "{bad}/truncated.pth", random=False),
         "truncated or damaged"),
    # ----------------------------------------------------------------------------------- data, divergence
    Case("data-missing", "--data that does not exist", _train("--data", "{new}"), "does not exist"),
    Case("category-missing", "a category that is not there", _train("--category", "nope"), "category 'nope' not found"),
    Case("lr-diverges", "--lr 1e6",
         _train("--lr", "1e6", "--epochs", "2"), "no checkpoint was written before it diverged"),
    # ------------------------------------------------------------------------------------------ resume
    Case("resume-random-with-weights", "resume a --random-weights run with a weights file",
         _train("--weights", "{w_a}", "--epochs", "2", out="{run}", random=False), "was trained with --random-weights"),
    Case("resume-pretrained-with-random", "resume a pretrained run with --random-weights",
         _train("--epochs", "2", out="{run_w}"), "pretrained backbone weights, this run asks for --random-weights"),
    Case("resume-other-weights", "resume with another weights file (compared by SHA-256)",
         _train("--weights", "{w_b}", "--epochs", "2", out="{run_w}", random=False), "sha256"),
    Case("resume-other-backbone", "resume with another backbone",
         _train("--backbone", "resnet18", "--epochs", "2", out="{run}"), "backbone='mobilenetv2' (now 'resnet18')"),
    Case("resume-other-flow", "resume with another number of flow steps",
         _train("--flow-steps", "2", "--epochs", "2", out="{run}"), "flow_steps=1 (now 2)"),
    Case("resume-truncated", "last.pt truncated (copy interrupted)", _train(out="{bad}/run_truncated"),
         "cannot read checkpoint"),
    Case("resume-not-training", "last.pt without optimizer state (a best_on_test.pt copied)",
         _train(out="{bad}/run_no_optimizer"), "not a uflow_lib training checkpoint"),
    # -------------------------------------------------------------------------------------- checkpoints
    Case("checkpoint-missing", "evaluate a checkpoint that does not exist", ("evaluate", "--checkpoint", "{new}.pt"),
         "not found"),
    Case("checkpoint-folder", "a checkpoint path that is a folder",
         ("evaluate", "--checkpoint", "{run}"), "is a folder, not a checkpoint file; pass {run}/last.pt"),
    Case("checkpoint-truncated", "a truncated checkpoint",
         ("evaluate", "--checkpoint", "{bad}/truncated.pt"), "truncated or damaged"),
    Case("checkpoint-text", "a text file as checkpoint",
         ("evaluate", "--checkpoint", "{bad}/text.pt"), "not a PyTorch file (a text file)"),
    Case("checkpoint-empty", "an empty checkpoint file", ("evaluate", "--checkpoint", "{bad}/empty.pt"),
         "the file is empty"),
    Case("checkpoint-no-config", "a checkpoint without config",
         ("evaluate", "--checkpoint", "{bad}/noconfig.pt"), "has no config"),
    Case("checkpoint-tensor", "a bare tensor as checkpoint", ("evaluate", "--checkpoint", "{bad}/tensor.pth"),
         "it holds a Tensor"),
    Case("checkpoint-pickle", "a pickled object that safe loading refuses",
         ("evaluate", "--checkpoint", "{bad}/pickle.pt"), "weights_only=True"),
    Case("checkpoint-mismatched", "config and saved weights that do not fit each other",
         ("evaluate", "--checkpoint", "{bad}/mismatched.pt"), "do not fit the model its config describes"),
    Case("evaluate-bad-weights", "evaluate with a weights file of other keys",
         ("evaluate", "--checkpoint", "{run_w}/last.pt", "--weights", "{bad}/hello.pth"), "unexpected keys: hello"),
    Case("evaluate-device", "evaluate on a missing CUDA device",
         ("evaluate", "--checkpoint", "{run}/last.pt", "--device", CUDA), CUDA_MSG),
    Case("evaluate-method", "evaluate --method msflow on a U-Flow checkpoint",
         ("evaluate", "--checkpoint", "{run}/last.pt", "--method", "msflow"), "holds a uflow model, not msflow"),
    Case("evaluate-data-missing", "evaluate on a --data that does not exist",
         ("evaluate", "--checkpoint", "{run}/last.pt", "--data", "{new}", "--no-progress"), "does not exist"),
    # ------------------------------------------------------------------------------------------ predict
    Case("predict-input-missing", "predict on a path that does not exist",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{new}", "--out", "{new}"),
         "neither an image file nor a folder"),
    Case("predict-no-images", "predict on a folder without images",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{bad}", "--out", "{new}"), "no images"),
    Case("predict-only-unreadable", "predict on a folder whose only image is unreadable",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images_broken}", "--out", "{new}"),
         "none of the 1 images"),
    Case("predict-would-overwrite", "predict into a folder that holds earlier outputs",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images}", "--out", "{predicted}"),
         "pass --overwrite to replace them"),
    Case("predict-name-clash", "inputs x.png, x.jpg and x_png.png: no way to keep all names apart",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images_clash}", "--out", "{new}"),
         "would write the same output files"),
    Case("predict-out-is-file", "predict --out is a file",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images}", "--out", "{file}"),
         "is a file, not a folder"),
    Case("predict-out-size", "--out-size 0", ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images}",
                                             "--out", "{new}", "--out-size", "0"), "is not a size"),
    Case("predict-device", "predict on a missing CUDA device",
         ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images}", "--out", "{new}", "--device", CUDA),
         CUDA_MSG),
    # ------------------------------------------------------------------------------------- other commands
    Case("reproduce-epochs-0", "reproduce --epochs 0",
         ("reproduce", "--data", "{data}", "--categories", "texture", "--backbone", "mobilenetv2", "--random-weights",
          "--epochs", "0", "--out", "{new}", "--no-progress"), "--epochs must be a whole number >= 1"),
    Case("make-dataset-out-is-file", "make-dataset --out is a file", ("make-dataset", "--out", "{file}"),
         "Not a directory"),
    # ------------------------------------------------------------- faults the command survives (status 0)
    Case("resume-other-category", "resume a run on another category: continues, with a warning",
         _train("--category", "tiles", "--epochs", "2"), "was trained on --data", code=0,
         copy=(("{run}", "{new}"),)),
    Case("feature-cache-damaged", "a truncated feature-cache file: rebuilt, with a warning",
         _train("--cache-dir", "{new}/cache", out="{new}/run"), "computing the features again", code=0,
         copy=(("{cache_bad}", "{new}/cache"),)),
    Case("predict-skips-and-clashes", "predict on x.png, x.jpg, .hidden.png and a broken PNG: x_png_* and x_jpg_* "
         "written, two files skipped", ("predict", "--checkpoint", "{run}/last.pt", "--input", "{images_mixed}",
                                        "--out", "{new}"), "skipped", code=0),
]


# ---------------------------------------------------------------------------------------------------- world
def _image(path: Path, w: int, h: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _state_dict(name: str, seed: int, **kwargs) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


def build_world(root: Path) -> dict[str, str]:
    """Write the dataset, runs and bad files under ``root``; returns the placeholder → path mapping."""
    from uflow_lib import training
    from uflow_lib.config import TrainConfig
    from uflow_lib.synthetic import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    data, bad = root / "data", root / "bad"
    make_dataset(data, seed=3, image_size=64, n_train=4, n_test_good=2, n_test_defect=1)
    make_dataset(data, seed=4, category="tiles", image_size=64, n_train=4, n_test_good=2, n_test_defect=1)
    bad.mkdir()
    w_a, w_b = root / "weights_a.pth", root / "weights_b.pth"
    torch.save(_state_dict("mobilenetv2_100", 1, pad_type="same"), w_a)  # stand-ins for real weights files
    torch.save(_state_dict("mobilenetv2_100", 2, pad_type="same"), w_b)
    torch.save(_state_dict("resnet18", 0), bad / "resnet18.pth")
    torch.save(_state_dict("mobilenetv2_050", 0, pad_type="same"), bad / "mobilenetv2_050.pth")
    torch.save({"hello": [1, 2, 3]}, bad / "hello.pth")
    torch.save(torch.zeros(3), bad / "tensor.pth")
    (bad / "text.pth").write_text("these are not weights\n")
    blob = w_a.read_bytes()
    (bad / "truncated.pth").write_bytes(blob[: len(blob) // 2])

    base = dict(data=str(data), category="texture", backbone="mobilenetv2", input_size=64, epochs=1, batch_size=2,
                flow_steps=1, device="cpu")
    run, run_w = root / "runs" / "random", root / "runs" / "weights_a"
    cache_bad = root / "cache_bad"
    training.train(TrainConfig(out=str(run), pretrained=False, cache_dir=str(cache_bad), **base), progress=False,
                   log=lambda *_: None)
    for cached in cache_bad.glob("features_*.pt"):
        cached.write_bytes(cached.read_bytes()[:200])
    training.train(TrainConfig(out=str(run_w), weights=str(w_a), **base), progress=False, log=lambda *_: None)

    ckpt = torch.load(run / "last.pt", weights_only=True)
    blob = (run / "last.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(blob[: len(blob) // 3])
    (bad / "text.pt").write_text("hello")
    (bad / "empty.pt").write_bytes(b"")
    torch.save({"model": ckpt["model"]}, bad / "noconfig.pt")
    torch.save({**ckpt, "config": {**ckpt["config"], "flow_steps": 3}}, bad / "mismatched.pt")
    with open(bad / "pickle.pt", "wb") as f:  # a plain pickle of an object: refused by weights_only loading
        pickle.dump({"config": argparse.Namespace(epochs=1)}, f)
    for name, content in (("run_truncated", blob[: len(blob) // 2]), ("run_no_optimizer", None)):
        (bad / name).mkdir()
        if content is None:
            torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, bad / name / "last.pt")
        else:
            (bad / name / "last.pt").write_bytes(content)

    images, broken, clash, mixed = (root / n for n in ("images", "images_broken", "images_clash", "images_mixed"))
    for d in (images, broken, clash, mixed):
        d.mkdir()
    for i, (name, w, h) in enumerate((("x.png", 80, 48), ("x.jpg", 40, 60), (".hidden.png", 32, 32))):
        _image(mixed / name, w, h, 10 + i)
    (mixed / "broken.png").write_bytes(b"\x89PNG cut short")
    _image(images / "a.png", 80, 48, 0)
    (broken / "broken.png").write_bytes(b"\x89PNG not really")
    for i, name in enumerate(("x.png", "x.jpg", "x_png.png")):
        _image(clash / name, 40, 40, i)
    predicted = root / "predicted"
    predicted.mkdir()
    (predicted / "a_anomaly.png").write_bytes(b"an earlier output")
    (root / "file.txt").write_text("a plain file\n")
    ro = root / "read_only"
    ro.mkdir()
    return dict(data=str(data), bad=str(bad), w_a=str(w_a), w_b=str(w_b), run=str(run), run_w=str(run_w),
                images=str(images), images_broken=str(broken), images_clash=str(clash), images_mixed=str(mixed),
                predicted=str(predicted), cache_bad=str(cache_bad), file=str(root / "file.txt"), ro=str(ro),
                root=str(root))


def prepare(case: Case, paths: dict[str, str], new: str) -> list[str]:
    """Do the case's copies; returns its argv with the placeholders replaced."""
    for src, dst in case.copy:
        shutil.copytree(src.format(new=new, **paths), dst.format(new=new, **paths))
    return fill(case.argv, paths, new)


def check_output(case: Case, code: int, err: str, paths: dict[str, str], new: str) -> str:
    """The line of stderr the case is about, after checking the exit status and the lines (AssertionError)."""
    assert code == case.code, f"exit status {code}, expected {case.code}: {err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), err
    errors = [line for line in lines if line.startswith("error: ")]
    fragment = case.fragment.format(new=new, **paths)
    if case.code == 2:
        assert len(errors) == 1, err
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
        return errors[0]
    assert not errors, err
    hits = [line for line in lines if line.startswith("warning: ") and fragment in line]
    assert hits, f"no warning with {fragment!r} in {err!r}"
    return hits[0]


def make_read_only(folder: Path) -> bool:
    """Make ``folder`` unwritable, also for root (``chattr +i`` where chmod is not enough); False if impossible."""
    folder.chmod(0o555)
    if _writable(folder):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    return not _writable(folder)


def undo_read_only(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


def fill(argv: Sequence[str], paths: dict[str, str], new: str) -> list[str]:
    """The argv of a case with its placeholders replaced (``{new}``: ``new``)."""
    return [a.format(new=new, **paths) for a in argv]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` → (size, mtime in ns): what a refused command must leave unchanged."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()  # a folder's mtime is left out: the writability probe touches it
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return out
