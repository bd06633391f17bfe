"""The default CPU configuration on the generated dataset: time to train, and the metrics (last epoch).

    python benchmarks/bench_generated.py        # writes benchmarks/results/generated.md
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from common import REPO

import torch  # noqa: E402

from uflow_lib.evaluation import evaluate_checkpoint  # noqa: E402
from uflow_lib.features import default_weights_file  # noqa: E402
from uflow_lib.methods import ci_config  # noqa: E402
from uflow_lib.synthetic import make_dataset  # noqa: E402
from uflow_lib.training import train  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    weights = default_weights_file("mobilenetv2", REPO)
    t0 = time.monotonic()
    root = make_dataset(tmp / "generated", seed=0)
    t_data = time.monotonic() - t0
    t1 = time.monotonic()
    res = train(ci_config(root, tmp / "run", weights), progress=False)
    t_train = time.monotonic() - t1
    t2 = time.monotonic()
    m = evaluate_checkpoint(str(res.checkpoint), progress=False)
    t_eval = time.monotonic() - t2
    text = "\n".join([
        "# Generated dataset, default CPU configuration (uflow_lib.methods.ci_config)",
        "",
        f"Produced by `python benchmarks/bench_generated.py` ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, CPU, {time.strftime('%Y-%m-%d')}). Backbone: MobileNetV2 "
        f"({'offline ImageNet weights' if weights else 'RANDOM weights: ../shared/weights not found'}), 256 px, "
        f"{res.epochs_done} epochs, last epoch.",
        "",
        f"| generate data | train (incl. feature extraction) | evaluate (incl. NFA) |",
        "|---|---|---|",
        f"| {t_data:.1f} s | {t_train:.1f} s | {t_eval:.1f} s |",
        "",
        "| pixel AUROC | image AUROC | AUPRO | mIoU auto (NFA) | mIoU oracle | mean z² normal | false detections on good |",
        "|---|---|---|---|---|---|---|",
        f"| {m['pixel_auroc']:.4f} | {m['image_auroc']:.4f} | {m['aupro']:.4f} | {m['miou_auto']:.4f} | "
        f"{m['miou_oracle']:.4f} | {m['mean_z2_normal']:.3f} | {m['false_detections_normal']:.0f} |",
        "",
    ])
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "generated.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
