"""Protocol checks on real MVTec AD bottle, from the runs of ``benchmarks/bench_methods.py`` (book chapter 6).

Needs the runs that ``python benchmarks/bench_methods.py`` writes into ``runs/bench_methods``: the U-Flow
checkpoints ``uflow_seed{0,1,2}/last.pt`` (MobileNetV2 at 256, the library's defaults, last epoch) and the
per-run ``result_<method>_seed<s>.json``. It trains nothing. It measures, for chapter 6's section "When your
numbers differ from the paper":

1. **mean z² of normal images**, per seed: on bottle's held-out ``test/good`` images (≈ 1 when the flow maps
   normal data to N(0, I)) and, for comparison, on the ``train/good`` images the flow was fitted on;
2. **best of 3 seeds vs the mean of 3 seeds**, per flow and metric, from the result files: how much reporting the
   luckiest seed flatters a table (selection over seeds, like best-on-test is selection over epochs).

Writes ``benchmarks/results/protocol_bottle.md`` and ``.json``. Run from the repository root (1 torch thread):

    python benchmarks/bench_protocol.py [--runs-dir runs/bench_methods]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, machine_line

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.methods import method_of  # noqa: E402
from uflow_lib.scoring import mean_z2  # noqa: E402

SEEDS = [0, 1, 2]
FLOWS = {"uflow": "U-Flow", "msflow": "MSFlow", "sanflow": "SANFlow"}
METRICS = {"pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "miou_auto": "mIoU auto (NFA)"}


@torch.no_grad()
def mean_z2_of(checkpoint: Path, split: str) -> np.ndarray:
    """Per-image mean z² of the good images of bottle's ``split`` under the checkpoint's flow, ``(N,)``."""
    cfg, extractor, model, _ = load_trained(checkpoint, "cpu", str(WEIGHTS))
    data = MVTecDataset(ROOT, "bottle", split, input_size=cfg.input_size)
    flow = method_of(model)
    out = []
    for batch in DataLoader(data, batch_size=8, shuffle=False):
        z, _ = flow.infer(model, extractor, batch["image"], 256)
        keep = torch.as_tensor(np.asarray(batch["label"]) == 0)
        out.append(mean_z2(z)[keep].numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "bench_methods"))
    args = parser.parse_args()
    if not have_bottle():
        return
    torch.set_num_threads(1)
    runs = Path(args.runs_dir)
    missing = [p for s in SEEDS for p in [runs / f"uflow_seed{s}" / "last.pt"] if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: run `python benchmarks/bench_methods.py --runs uflow` first")
    load = os.getloadavg()[0]
    t0 = time.monotonic()

    z2 = []
    for s in SEEDS:
        ckpt = runs / f"uflow_seed{s}" / "last.pt"
        epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
        test, train = mean_z2_of(ckpt, "test"), mean_z2_of(ckpt, "train")
        z2.append(dict(seed=s, epoch=epoch, test_good=float(test.mean()), test_good_min=float(test.min()),
                       test_good_max=float(test.max()), n_test_good=len(test), train_good=float(train.mean()),
                       n_train_good=len(train)))
        print(f"seed {s}: mean z² test/good {test.mean():.3f}, train/good {train.mean():.3f}", flush=True)

    best = []
    for run, name in FLOWS.items():
        results = [json.loads((runs / f"result_{run}_seed{s}.json").read_text()) for s in SEEDS]
        for key, label in METRICS.items():
            v = np.array([r[key] for r in results], dtype=float)
            best.append(dict(method=name, metric=label, values=v.tolist(), mean=float(v.mean()),
                             std=float(v.std(ddof=1)), best=float(v.max()), best_minus_mean=float(v.max() - v.mean())))

    minutes = (time.monotonic() - t0) / 60
    lines = [
        "# Protocol checks on MVTec AD bottle: mean z² of normal images, best seed vs mean of seeds",
        "",
        "Command: `python benchmarks/bench_protocol.py` (from the repository root; 1 torch thread). It trains nothing: "
        "it reads the runs of `python benchmarks/bench_methods.py` in `runs/bench_methods` (offline MobileNetV2 at "
        "256, the library's defaults, last epoch, seeds 0, 1, 2).",
        "",
        f"{machine_line(load)}; {minutes:.1f} min.",
        "",
        "## Mean z² of normal images (U-Flow)",
        "",
        "Per image, the mean of z² over every latent entry of both scales; a flow that maps normal data to N(0, I) "
        "gives about 1 on held-out normal images. test/good: bottle's normal test images (never trained on); "
        "train/good: the images the flow was fitted on.",
        "",
        "| seed | epoch | test/good images | mean z² test/good (min – max over images) | train/good images "
        "| mean z² train/good |",
        "|---|---|---|---|---|---|",
    ]
    for r in z2:
        lines.append(f"| {r['seed']} | {r['epoch']} | {r['n_test_good']} | {r['test_good']:.3f} "
                     f"({r['test_good_min']:.3f} – {r['test_good_max']:.3f}) | {r['n_train_good']} | "
                     f"{r['train_good']:.3f} |")
    lines += [
        "",
        "## Best of 3 seeds vs the mean of 3 seeds (last epoch)",
        "",
        "From `runs/bench_methods/result_<method>_seed<s>.json` (the numbers of "
        "`benchmarks/results/methods_bottle.md`). best − mean: how much a table that reports the luckiest of 3 seeds "
        "flatters the method.",
        "",
        "| method | metric | seeds 0, 1, 2 | mean ± std (ddof 1) | best | best − mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in best:
        lines.append(f"| {r['method']} | {r['metric']} | {', '.join(f'{v:.4f}' for v in r['values'])} | "
                     f"{r['mean']:.4f} ± {r['std']:.4f} | {r['best']:.4f} | {r['best_minus_mean']:+.4f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "protocol_bottle.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "protocol_bottle.json").write_text(json.dumps(dict(mean_z2=z2, best_of_seeds=best), indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
