"""PatchCore and PaDiM on real MVTec AD bottle, through the command line (book chapter 7).

The same features as the flows (the offline ImageNet MobileNetV2 at 256; PatchCore reads U-Flow's stages 8/16,
PaDiM the stages 4/8/16), the same metrics code. Each run is ``python -m uflow_lib train --method M`` then
``evaluate --json``, as a user would type them; the script records the metrics, the fit time (from the
checkpoint), the wall time and the peak resident memory of each command.

Runs: PatchCore with the default 10 % coreset and with the full memory bank; PaDiM with its default d = 100; seeds
0, 1, 2 (the coreset's first feature, PaDiM's channel subset; the full bank does not depend on the seed), with
the mean ± standard deviation over seeds.
No setting is tuned: every value is the paper's default.

Writes benchmarks/results/baselines_bottle.md and .json. Needs ../shared (skips with a message otherwise).

    python benchmarks/bench_baselines.py [--out runs/bench_baselines] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, machine_line, mean_std, run_cli

import torch  # noqa: E402

#: Runs whose result does not depend on the seed (measured once).
UNSEEDED = {"patchcore_full"}
#: run name → (method, extra train options)
RUNS = {
    "patchcore": ("patchcore", []),
    "patchcore_full": ("patchcore", ["--coreset-ratio", "1"]),
    "padim": ("padim", []),
}
NAMES = {"patchcore": "PatchCore, 10 % coreset", "patchcore_full": "PatchCore, full memory bank",
         "padim": "PaDiM, d = 100"}


def bench(run: str, seed: int, out: Path) -> dict:
    method, extra = RUNS[run]
    folder = out / f"{run}_seed{seed}"
    train_args = ["train", "--method", method, "--data", str(ROOT), "--category", "bottle", "--backbone",
                  "mobilenetv2", "--weights", str(WEIGHTS), "--device", "cpu", "--seed", str(seed), "--no-progress",
                  "--out", str(folder), *extra]
    rss = out / "peak_rss.txt"
    _, fit_wall, fit_rss = run_cli(train_args, rss)
    text, eval_wall, eval_rss = run_cli(["evaluate", "--checkpoint", str(folder / "last.pt"), "--json",
                                          "--no-progress", "--device", "cpu"], rss)
    metrics = json.loads(text)
    ckpt = torch.load(folder / "last.pt", weights_only=True, map_location="cpu")
    bank = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    size_mb = sum(v.numel() * v.element_size() for v in ckpt["model"].values()) / 1e6
    return dict(run=run, method=method, seed=seed, fit_seconds=ckpt["history"][0]["seconds"],
                train_command_seconds=fit_wall, evaluate_command_seconds=eval_wall, train_peak_rss_mb=fit_rss,
                evaluate_peak_rss_mb=eval_rss, model_buffers=bank, model_mb=size_mb,
                **{k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")})


def table(rows: list[dict]) -> str:
    lines = ["| method | seed | image AUROC | pixel AUROC | AUPRO | fit | train command | evaluate command "
             "| model size | peak memory (train / evaluate) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {NAMES[r['run']]} | {r['seed']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} "
                     f"| {r['aupro']:.4f} | {r['fit_seconds']:.0f} s | {r['train_command_seconds']:.0f} s "
                     f"| {r['evaluate_command_seconds']:.0f} s | {r['model_mb']:.0f} MB "
                     f"| {r['train_peak_rss_mb']:.0f} / {r['evaluate_peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Mean ± standard deviation (ddof 1) over the seeds of each run."""
    lines = ["| method | seeds | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for run in dict.fromkeys(r["run"] for r in rows):
        group = [r for r in rows if r["run"] == run]
        cell = lambda k: mean_std(r[k] for r in group)  # noqa: E731
        lines.append(f"| {NAMES[run]} | {len(group)} | {cell('image_auroc')} | {cell('pixel_auroc')} "
                     f"| {cell('aupro')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_baselines"))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    if not have_bottle():
        return 0
    load = os.getloadavg()[0]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        for seed in args.seeds[:1] if run in UNSEEDED else args.seeds:
            rows.append(bench(run, seed, Path(args.out)))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baselines_bottle.json").write_text(json.dumps(rows, indent=1) + "\n")
    notes = [
        "# PatchCore and PaDiM on MVTec AD bottle (offline MobileNetV2, 256), through the command line", "",
        "Command: `python benchmarks/bench_baselines.py` (from the repository root; each command in a fresh process "
        "with 1 thread).", "",
        f"{machine_line(load)}. \"fit\": the "
        "seconds of the memory bank or statistics, from the checkpoint (after the features); the commands' times "
        "include starting Python, the backbone and the features. Peak memory: the resident set of the command's "
        "process. No setting was tuned: the papers' defaults (3×3 aggregation, 10 % coreset, b = 9, σ = 4; d = 100, "
        "ε = 0.01). The NFA does not apply to these methods (no latents), so there is no automatic mIoU.", "",
        summary(rows), "", "Each run:", "", table(rows), "",
    ]
    (RESULTS / "baselines_bottle.md").write_text("\n".join(notes))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
