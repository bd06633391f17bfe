"""Time one training epoch with cached features against recomputing the features at every step.

Both runs go through ``uflow_lib.training.train`` (one epoch, same seed); the epoch time is the one the
training loop records, so the ratio measures exactly what caching saves. Shapes: the MS-CaiT graph (full-depth
CaiT-M48/S24 with random weights: same cost as the pretrained ones, no download) on 8 generated images at 448,
and MobileNetV2 at 256 on the real bottle train set (offline weights) when ../shared is present, else on the
generated dataset.

    python benchmarks/bench_feature_cache.py            # writes benchmarks/results/feature_cache.md
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from common import MVTEC_ROOT, REPO, WEIGHTS

import torch  # noqa: E402

from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.synthetic import make_dataset  # noqa: E402
from uflow_lib.training import train  # noqa: E402



def one_epoch(cfg: TrainConfig) -> tuple[float, float]:
    """(seconds of the epoch, seconds of the whole call incl. the one-off feature extraction)."""
    with tempfile.TemporaryDirectory() as out:
        cfg.out = out
        t0 = time.monotonic()
        res = train(cfg, progress=False, log=lambda *_: None)
        return res.history[-1]["seconds"], time.monotonic() - t0


def compare(name: str, cfg: TrainConfig) -> str:
    cached, cached_total = one_epoch(cfg)
    cfg.recompute_features = True
    recomputed, _ = one_epoch(cfg)
    line = (f"| {name} | {cached:.2f} s | {recomputed:.2f} s | {recomputed / cached:.1f}× | "
            f"{cached_total - cached:.1f} s |")
    print(line, flush=True)
    return line


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    rows = []
    gen448 = make_dataset(tmp / "g448", seed=0, image_size=448, n_train=8, n_test_good=1, n_test_defect=1)
    rows.append(compare("MS-CaiT graph (768@28² + 384@14², 12.2 M flow params), 8 images at 448, batch 4",
                        TrainConfig(data=str(gen448), category="texture", out="", backbone="mcait",
                                    pretrained=False, epochs=1, batch_size=4, lr=1e-4, device="cpu")))
    if WEIGHTS.is_file() and (MVTEC_ROOT / "bottle").is_dir():
        rows.append(compare("MobileNetV2 (32@32² + 96@16², 0.17 M flow params), bottle train (209) at 256, batch 23",
                            TrainConfig(data=str(MVTEC_ROOT), category="bottle", out="",
                                        backbone="mobilenetv2", weights=str(WEIGHTS), epochs=1, device="cpu")))
    else:
        gen = make_dataset(tmp / "g256", seed=0)
        rows.append(compare("MobileNetV2 (random weights), generated train (60) at 256, batch 8",
                            TrainConfig(data=str(gen), category="texture", out="", backbone="mobilenetv2",
                                        pretrained=False, epochs=1, device="cpu")))
    text = "\n".join([
        "# One training epoch: cached features vs features recomputed at every step",
        "",
        "Produced by `python benchmarks/bench_feature_cache.py` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. CPU only.",
        "",
        "| shapes | epoch, cached | epoch, recomputed | ratio | one-off extraction (cached run) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "feature_cache.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
