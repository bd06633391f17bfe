"""Shared fixtures: the generated dataset, paths of the real data/weights beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MVTEC_ROOT = SHARED / "data" / "mvtec_ad"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenetv2_100_imagenet_from_tflite.pth"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"offline MobileNetV2 weights not found at ../shared/weights ({MOBILENET_WEIGHTS.name}); "
                    f"this test needs the shared folder beside the repository")
    return MOBILENET_WEIGHTS


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    if not (MVTEC_ROOT / "bottle").is_dir():
        pytest.skip("real MVTec AD bottle not found at ../shared/data/mvtec_ad; this test needs the shared folder")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory) -> Path:
    from uflow_lib.synthetic import make_dataset

    root = tmp_path_factory.mktemp("generated")
    make_dataset(root, seed=0)
    return root
