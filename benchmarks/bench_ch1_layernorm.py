"""Chapter 1, section 1.8: U-Flow on real MVTec AD bottle with three feature normalisations (CPU, MobileNetV2).

Trains U-Flow with the library's MobileNetV2 defaults (200 epochs, batch 23, lr 1.129e-4; strides 8/16 at 256,
seed 0) with the authors' trainable LayerNorm (``norm="layernorm"``). The library's fixed per-channel
standardisation (``standardize``) with the same settings is the run of ``bench_bottle.py``, whose row is taken
from benchmarks/results/bottle_mobilenetv2.json unless ``--norms`` also trains it here (``--norms layernorm
layernorm_noaffine standardize``: all three, ``layernorm_noaffine`` being a LayerNorm without affine parameters).
Evaluates the LAST epoch of each (no selection on the test set): image and pixel AUROC, AUPRO, mean z² of the
held-out normal test latents, and for the trainable LayerNorm the mean of its weight γ (1 at the start) per
scale. Writes benchmarks/results/ch1_layernorm.md and .json. Needs ../shared (skips with a message otherwise).

    OMP_NUM_THREADS=1 python benchmarks/bench_ch1_layernorm.py [--norms layernorm ...] [--report-only]

Each run's numbers are kept in ``--out/NORM.json``, so runs can be split over processes (``--norms``) and the
results files assembled afterwards (``--report-only``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, run_record, runs_machine_line

import torch  # noqa: E402

from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, compute_metrics, predict_maps  # noqa: E402
from uflow_lib.training import train  # noqa: E402

NORMS = ("layernorm", "layernorm_noaffine", "standardize")
LABELS = {"layernorm": "trainable LayerNorm (authors)", "layernorm_noaffine": "LayerNorm without affine",
          "standardize": "fixed per-channel standardisation (uflow_lib)"}


def run_one(norm: str, out: str, epochs: int | None = None) -> dict:
    """Train with ``norm``, evaluate the last epoch on the bottle test set; returns a row of numbers."""
    torch.set_num_threads(1)
    cfg = TrainConfig(data=str(ROOT), category="bottle", out=os.path.join(out, norm), backbone="mobilenetv2",
                      weights=str(WEIGHTS), norm=norm, seed=0, device="cpu", epochs=epochs)
    res = train(cfg, progress=False)
    cfg_r, extractor, model, ckpt = load_trained(res.checkpoint, "cpu")
    test = MVTecDataset(ROOT, "bottle", "test", input_size=cfg_r.input_size, mask_size=EVAL_SIZE)
    m = compute_metrics(predict_maps(model, extractor, test, nfa=None, progress=False))
    gamma = [float(n.weight.detach().mean()) for n in model.norms if getattr(n, "weight", None) is not None]
    return dict(norm=norm, epochs=int(ckpt["epoch"]), batch_size=cfg_r.batch_size, lr=cfg_r.lr,
                train_seconds=round(sum(h["seconds"] for h in res.history), 1),
                image_auroc=m["image_auroc"], pixel_auroc=m["pixel_auroc"], aupro=m["aupro"],
                mean_z2_normal=m["mean_z2_normal"], gamma_mean_per_scale=gamma)


def report(out: str, command: str) -> None:
    rows = [json.loads(open(os.path.join(out, f"{n}.json")).read()) for n in NORMS
            if os.path.exists(os.path.join(out, f"{n}.json"))]
    borrowed = ""
    if "standardize" not in {r["norm"] for r in rows} and (RESULTS / "bottle_mobilenetv2.json").is_file():
        # the same training (library defaults, seed 0, norm "standardize") was run by bench_bottle.py
        b = json.loads((RESULTS / "bottle_mobilenetv2.json").read_text())
        m = b["metrics_valid_bound"]
        rows.append(dict(norm="standardize", epochs=b["epochs"], train_seconds=b["train_seconds"],
                         image_auroc=m["image_auroc"], pixel_auroc=m["pixel_auroc"], aupro=m["aupro"],
                         mean_z2_normal=m["mean_z2_normal"], gamma_mean_per_scale=[], source="bottle_mobilenetv2.json"))
        borrowed = (" The fixed-standardisation row is the run of `python benchmarks/bench_bottle.py` "
                    f"(benchmarks/results/bottle_mobilenetv2.json, {b['date']}): the same training, not repeated here.")
    # where the runs ran, as each recorded it (a --report-only run may be on another machine)
    result = dict(command=command, machine=runs_machine_line(rows), date=time.strftime("%Y-%m-%d"), runs=rows)
    (RESULTS / "ch1_layernorm.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Chapter 1, section 1.8: the feature normalisation before U-Flow, on MVTec AD bottle",
        "",
        f"Command: `{command}` (from the repository root, 1 torch thread).",
        "",
        f"{result['machine']}; {result['date']}.",
        "",
        "U-Flow, offline MobileNetV2 at 256 (strides 8 and 16), the library's defaults for it, seed 0; only `norm` "
        "changes. Metrics of the LAST epoch (no selection on the test set); mean z² over the held-out normal (good) "
        "test images' latents. γ: the mean of the trainable LayerNorm's weight at the end (it starts at 1), per "
        "scale (fine, coarse). Train time: the seconds of the training epochs; the machine is shared with other "
        "jobs, so times of different runs are not comparable." + borrowed,
        "",
        "| normalisation | epochs | image AUROC | pixel AUROC | AUPRO | mean z² (normal test) | final mean γ | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gamma = ", ".join(f"{g:.2f}" for g in r["gamma_mean_per_scale"]) or "—"
        md.append(f"| {LABELS[r['norm']]} | {r['epochs']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                  f"{r['aupro']:.3f} | {r['mean_z2_normal']:.3f} | {gamma} | {r['train_seconds'] / 60:.1f} min |")
    md.append("")
    (RESULTS / "ch1_layernorm.md").write_text("\n".join(md))
    print("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_ch1_layernorm"))
    ap.add_argument("--norms", nargs="+", choices=NORMS, default=["layernorm"])
    ap.add_argument("--epochs", type=int, default=None, help="default: the library's (200); fewer only to test")
    ap.add_argument("--report-only", action="store_true", help="only assemble the results files from --out")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        for norm in args.norms:
            started = run_record()
            row = {**run_one(norm, args.out, args.epochs), **started}
            print(row, flush=True)
            with open(os.path.join(args.out, f"{norm}.json"), "w") as f:
                json.dump(row, f, indent=2)
    report(args.out, "OMP_NUM_THREADS=1 python benchmarks/bench_ch1_layernorm.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
