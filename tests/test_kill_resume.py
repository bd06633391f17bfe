"""Resume after ``kill -9`` is bit-identical to an uninterrupted run.

``train`` runs in a subprocess with a checkpoint every epoch; it is killed with SIGKILL as soon as the first
checkpoint exists (mid-run: the kill may even land while the next one is being written), then the same command
runs again and resumes. Its final ``last.pt`` must equal, tensor for tensor and bit for bit, that of the same
command run without interruption (``torch.equal``, not a tolerance): model, optimizer state and loss history.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 12


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "uflow_lib", "train", "--data", str(data), "--category", "texture",
            "--backbone", "mobilenetv2", "--random-weights", "--input-size", "64", "--epochs", str(EPOCHS),
            "--batch-size", "2", "--flow-steps", "1", "--checkpoint-every", "1", "--device", "cpu", "--no-progress",
            "--out", str(out)]


def _env() -> dict[str, str]:
    # the same number of threads in every run: the reduction order (hence the last bits) depends on it
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _tensors(obj, prefix: str = ""):
    """Every tensor in a nested dict/list, with its path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("kill")
    make_dataset(root, seed=3, image_size=64, n_train=4, n_test_good=1, n_test_defect=1)
    return root


def test_resume_after_sigkill_is_bit_identical(data, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_command(data, full), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(data, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    at_kill = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert 1 <= at_kill < EPOCHS, f"killed after epoch {at_kill} of {EPOCHS}: not mid-run"
    print(f"SIGKILL after epoch {at_kill} of {EPOCHS}")

    resumed = subprocess.run(_command(data, killed), env=_env(), check=True, capture_output=True, text=True,
                             timeout=300)
    assert f"resuming from {killed / 'last.pt'} after epoch" in resumed.stdout

    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS
    ta, tb = dict(_tensors({"model": a["model"], "optimizer": a["optimizer"]})), \
        dict(_tensors({"model": b["model"], "optimizer": b["optimizer"]}))
    assert ta.keys() == tb.keys() and len(ta) > 20
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]  # exact floats
