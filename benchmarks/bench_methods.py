"""Every method of the library on real MVTec AD bottle, one protocol, three seeds (book chapter 7).

The flows (U-Flow, MSFlow, SANFlow) and the baselines (PatchCore, PaDiM) on the same features (the offline
ImageNet MobileNetV2 at 256; each method reads its own stages), the same metrics code, the LAST epoch. Each
training is ``python -m uflow_lib train --method M --backbone mobilenetv2 --seed S`` with NO other setting: the
library's CNN defaults, chosen on a validation set (benchmarks/select_recipes.py; about 10 CPU minutes of one
thread each). The script records the training time (from the checkpoint), the peak resident memory of the training
command, and evaluates in this process: image and pixel AUROC, AUPRO, and for the flows the NFA (tree, valid
bound, ε = 1) at the default scale and at every scale (SANFlow on z/σ, its own null hypothesis, and on the raw z,
whose variance is the predicted σ², to show what breaks). Seeds 0, 1, 2: mean ± standard deviation (ddof 1).

Writes one JSON per run and seed into --out (resumable; two processes can split the work with --runs), then
benchmarks/results/methods_bottle.md and .json from every JSON found. Needs ../shared (skips with a message
otherwise).

    python benchmarks/bench_methods.py [--runs uflow msflow sanflow patchcore padim] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, mean_std, run_cli, run_record, \
    runs_machine_line

import numpy as np  # noqa: E402
import torch  # noqa: E402

from uflow_lib import metrics as M  # noqa: E402
from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, compute_metrics, default_nfa_scales, latent_sides, predict_maps  # noqa: E402
from uflow_lib.methods import get_method  # noqa: E402
from uflow_lib.nfa import tree_nfa  # noqa: E402
from uflow_lib.scoring import mean_z2  # noqa: E402

RUNS = ["uflow", "msflow", "sanflow", "patchcore", "padim"]
NAMES = {"uflow": "U-Flow", "msflow": "MSFlow", "sanflow": "SANFlow", "patchcore": "PatchCore (10 % coreset)",
         "padim": "PaDiM (d = 100)"}
SEEDS = [0, 1, 2]


def train_command(run: str, seed: int, out: Path) -> tuple[Path, float, float]:
    """``python -m uflow_lib train`` with the library's defaults in a fresh 1-thread process → (checkpoint,
    wall seconds, peak resident memory in MB)."""
    folder = out / f"{run}_seed{seed}"
    rss = out / f"peak_rss_{run}_{seed}.txt"
    args = ["train", "--method", run, "--data", str(ROOT), "--category", "bottle", "--backbone", "mobilenetv2",
            "--weights", str(WEIGHTS), "--device", "cpu", "--seed", str(seed), "--no-progress", "--out", str(folder)]
    _, wall, peak = run_cli(args, rss)
    return folder / "last.pt", wall, peak


def nfa_row(latents: list[torch.Tensor], pred: dict, scales) -> dict:
    """mIoU (automatic and oracle) of the tree NFA at ``scales``, and how many images it marks."""
    nfa = tree_nfa(latents, EVAL_SIZE, bound="valid", scales=scales)[:, 0].numpy()
    good = pred["label"] == 0
    return dict(miou_auto=M.miou(nfa > 0, pred["mask"]), miou_oracle=M.oracle_miou(nfa, pred["mask"])[0],
                false_detections=int(((nfa > 0).reshape(len(nfa), -1).any(1) & good).sum()),
                detected_defective=int(((nfa > 0).reshape(len(nfa), -1).any(1) & ~good).sum()))


def evaluate(run: str, checkpoint: Path) -> dict:
    """Metrics of a trained run on bottle's test set; for the flows, the NFA at every scale too."""
    cfg, extractor, model, ckpt = load_trained(checkpoint, "cpu")
    test = MVTecDataset(ROOT, "bottle", "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
    flow = get_method(cfg.method).has_latents
    sides = latent_sides(model) if flow else []
    scales = default_nfa_scales("mobilenetv2", len(sides), sides) if flow else None
    t0 = time.process_time()
    pred = predict_maps(model, extractor, test, nfa="tree" if flow else None, nfa_scales=scales, progress=False,
                        keep_latents=flow)
    per_image = (time.process_time() - t0) / len(test)
    latents = pred.pop("latents", None)
    train_seconds = sum(h["seconds"] for h in ckpt["history"])
    row = dict(method=cfg.method, epochs=int(ckpt["epoch"]), batch_size=cfg.batch_size, lr=cfg.lr,
               parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
               train_seconds=train_seconds, test_cpu_seconds_per_image=per_image, latent_sides=sides,
               nfa_scales=scales, **compute_metrics(pred))
    if not flow:
        return row
    variants = {f"scale {i} ({s}²)": [i] for i, s in enumerate(sides)}
    variants["all scales"] = None
    row["nfa_variants"] = {name: nfa_row(latents, pred, sc) for name, sc in variants.items()}
    if cfg.method == "sanflow":  # the raw z: N(0, σ²) with the predicted σ², not N(0, 1)
        raw = [z * torch.from_numpy(pred[f"variance{i}"]).sqrt()[:, None] for i, z in enumerate(latents)]
        row["mean_z2_raw_normal"] = float(mean_z2(raw).numpy()[pred["label"] == 0].mean())
        for name, label in (("variance_normal_images", 0), ("variance_defective_images", 1)):
            row[name] = float(np.mean([pred[f"variance{i}"][pred["label"] == label].mean() for i in range(len(sides))]))
        row["nfa_variants"]["raw z, default scale"] = nfa_row(raw, pred, scales)
    return row


def _cell(group: list[dict], key: str) -> str:
    return mean_std(r[key] for r in group if r.get(key) is not None)


def summary(rows: list[dict]) -> str:
    """The comparison: mean ± std over seeds of each run."""
    lines = ["| method | seeds | image AUROC | pixel AUROC | AUPRO | mIoU auto (NFA) | train time | peak memory "
             "(train) | parameters or memory bank |", "|" + "---|" * 9]
    for run in (r for r in RUNS if any(x["run"] == r for x in rows)):
        g = [r for r in rows if r["run"] == run]
        minutes = [r["train_seconds"] / 60 for r in g]
        size = (f"{g[0]['parameters']:,} parameters" if g[0]["parameters"] else
                f"{g[0]['model_mb']:.0f} MB of {'memory bank' if run == 'patchcore' else 'statistics'}")
        lines.append(f"| {NAMES[run]} | {len(g)} | {_cell(g, 'image_auroc')} | {_cell(g, 'pixel_auroc')} | "
                     f"{_cell(g, 'aupro')} | {_cell(g, 'miou_auto') if run in ('uflow', 'msflow', 'sanflow') else 'does not apply'} | "
                     f"{np.mean(minutes):.1f} min | {np.max([r['train_peak_rss_mb'] for r in g]) / 1024:.1f} GiB | "
                     f"{size} |")
    return "\n".join(lines)


def details(rows: list[dict]) -> str:
    """Each run and seed."""
    lines = ["| method | seed | epochs | batch | lr | image AUROC | pixel AUROC | AUPRO | mIoU auto | train time "
             "| train command | peak memory |", "|" + "---|" * 12]
    for r in rows:
        aupro = f"{r['aupro']:.4f}" + (f" (sum map {r['aupro_pixel_map']:.4f})" if r.get("aupro_pixel_map") else "")
        miou = "—" if r.get("miou_auto") is None else f"{r['miou_auto']:.4f}"
        lines.append(f"| {NAMES[r['run']]} | {r['seed']} | {r['epochs']} | {r['batch_size']} | {r['lr']:.4g} | "
                     f"{r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {aupro} | {miou} | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['train_command_seconds'] / 60:.1f} min | "
                     f"{r['train_peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def nfa_table(rows: list[dict]) -> str:
    lines = ["| method | NFA input | mIoU auto | mIoU oracle | good images with a detection (of 20) | defective "
             "images with a detection (of 63) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["seed"] == 0 and "nfa_variants" in r:
            for name, v in r["nfa_variants"].items():
                lines.append(f"| {NAMES[r['run']]} | {name} | {v['miou_auto']:.4f} | {v['miou_oracle']:.4f} "
                             f"| {v['false_detections']} | {v['detected_defective']} |")
    return "\n".join(lines)


def report(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))]
    rows.sort(key=lambda r: (RUNS.index(r["run"]), r["seed"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "methods_bottle.json").write_text(json.dumps(rows, indent=1) + "\n")
    notes = [
        "# Every method on MVTec AD bottle (offline MobileNetV2, 256, last epoch, 3 seeds)", "",
        "Command: `python benchmarks/bench_methods.py` (from the repository root; each training a fresh process "
        "with 1 thread).", "",
        f"{runs_machine_line(rows)}. Each training is `python -m uflow_lib train --method M --backbone mobilenetv2 "
        "--seed S` with no other setting: the library's CNN defaults, chosen on a validation set "
        "(`benchmarks/results/recipe_validation.md`; the baselines have the papers' defaults and no training). "
        "Train time: the seconds of the training epochs (the baselines: of the fit), from the checkpoint, after the "
        "features (cached for U-Flow, MSFlow and the baselines; SANFlow recomputes them for every augmented batch); "
        "two to four processes shared the 2 cores, so times are 1.2–2× those of a run alone (SANFlow's 25 epochs: "
        "about 9.6 minutes alone, 23 s per epoch). Peak "
        "memory: the resident set of the training command's process.", "",
        "Pixel AUROC on each method's pixel map (MSFlow: the sum map), AUPRO on the map its paper uses (MSFlow: "
        "the product map; its sum map in the per-seed table). mIoU auto: the tree NFA (valid bound, ε = 1) at the "
        "default scale (the one nearest 16², `uflow_lib.evaluation.default_nfa_scales`); the NFA needs latents "
        "that are N(0, I) on normal data, so it does not apply to the baselines.", "",
        summary(rows), "", "Each run:", "", details(rows), "",
        "NFA (tree, valid bound, ε = 1) on each flow's latents, by scale (seed 0):", "", nfa_table(rows), "",
    ]
    for r in rows:
        if "variance_normal_images" in r and r["seed"] == 0:
            notes += [f"SANFlow, seed 0: predicted variance (mode of the inverse gamma) "
                      f"{r['variance_normal_images']:.3f} on good test images, {r['variance_defective_images']:.3f} "
                      f"on defective ones (prior mode 0.1); mean z² of the raw latents on good images "
                      f"{r['mean_z2_raw_normal']:.3f}, of z/σ {r['mean_z2_normal']:.3f}.", ""]
    text = "\n".join(notes)
    (RESULTS / "methods_bottle.md").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_methods"))
    ap.add_argument("--runs", nargs="+", default=RUNS, choices=RUNS)
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--report-only", action="store_true", help="only write the results files from --out")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for run in args.runs:
            for seed in args.seeds:
                path = out / f"result_{run}_seed{seed}.json"
                if path.is_file():
                    continue
                started = run_record()
                checkpoint, wall, rss = train_command(run, seed, out)
                ckpt = torch.load(checkpoint, weights_only=True, map_location="cpu")
                model_mb = sum(v.numel() * v.element_size() for v in ckpt["model"].values()
                               if torch.is_tensor(v)) / 1e6
                row = dict(run=run, seed=seed, train_command_seconds=wall, train_peak_rss_mb=rss, model_mb=model_mb,
                           **started, **evaluate(run, checkpoint))
                path.write_text(json.dumps(row, indent=1) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "nfa_variants"}), flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
