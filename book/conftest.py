"""pytest --nbval on the chapters: skip them, with the reason, where ../shared is absent.

The committed outputs come from a clean run in CI mode with the shared offline MobileNetV2 weights and the real
MVTec AD bottle category beside the repository (``../shared``); without them the numbers differ by design
(random weights, generated data only), so an exact comparison would only report that difference.

The printed numbers of a trained flow move in their last digits with the CPU's kernels (AVX-512 and AVX2 kernels
round differently, and training amplifies it), so the kernels that run the chapters are pinned to the AVX2 code
paths of ATen, oneDNN and MKL (:data:`CPU_PINS`); ``.ci/execute_chapters.py`` executes the chapters under the same
pins. The pins do not make every CPU agree (an AVX-512/AMX Xeon prints other digits than the CPUs that made the
outputs in about 25 cells of chapters 2, 3, 4, 5 and 7), so each notebook records the CPU its outputs were made
on, and on another CPU nbval compares its numbers within a tolerance and says so (``cpu_outputs.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("UFLOW_BOOK_MODE", "ci")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Environment of the kernels that execute the chapters (read by torch, oneDNN and MKL when they load).
CPU_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "PYTHONHASHSEED": "0"}
for _name, _value in CPU_PINS.items():
    os.environ.setdefault(_name, _value)

import cpu_outputs  # noqa: E402  (after the pins: it imports torch)

cpu_outputs.install()


def pytest_terminal_summary(terminalreporter):
    lines = cpu_outputs.summary_lines()
    if lines:
        terminalreporter.section("chapter outputs on another CPU", sep="!", yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    needed = [SHARED / "weights" / "mobilenetv2_100_imagenet_from_tflite.pth", SHARED / "data" / "mvtec_ad" / "bottle"]
    missing = [str(p.relative_to(SHARED.parent)) for p in needed if not p.exists()]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"chapter outputs were made with ../shared; missing here: {', '.join(missing)}")
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(skip)
