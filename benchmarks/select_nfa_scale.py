"""The NFA's scale for CNN backbones, chosen on a validation set instead of the test set.

The validation set is made from bottle's training images alone (``python -m uflow_lib make-validation``: 20 % of
train/good held out, each held-out image also given one synthetic anomaly with its mask). Each flow trains on the
other 80 % with the same settings as benchmarks/bench_methods.py, then the tree NFA (valid bound, ε = 1) runs on
its validation latents at every candidate: each scale alone and all scales. The candidate of highest automatic
mIoU on validation is the choice; the test set is not read.

Writes benchmarks/results/nfa_scale_validation.md and .json. Needs ../shared.

    python benchmarks/select_nfa_scale.py [--runs uflow msflow] [--out runs/select_nfa_scale]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, machine_line

import torch  # noqa: E402

from bench_methods import NAMES, RUNS, VARIANCE_SIZE, nfa_row  # noqa: E402
from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, default_nfa_scales, latent_sides, predict_maps  # noqa: E402
from uflow_lib.training import train  # noqa: E402
from uflow_lib.validation_split import make_validation_set  # noqa: E402

FRACTION, SPLIT_SEED = 0.2, 0


def select(run: str, val_root: Path, out: Path) -> dict:
    method, overrides = RUNS[run]
    cfg = TrainConfig(data=str(val_root), category="bottle", out=str(out / run), method=method,
                      backbone="mobilenetv2", weights=str(WEIGHTS), device="cpu", variance_size=VARIANCE_SIZE,
                      **overrides)
    res = train(cfg, progress=False)
    _, extractor, model, ckpt = load_trained(res.checkpoint, "cpu")
    val = MVTecDataset(val_root, "bottle", "test", input_size=cfg.input_size or 256, mask_size=EVAL_SIZE)
    pred = predict_maps(model, extractor, val, nfa=None, progress=False, keep_latents=True)
    latents = pred.pop("latents")
    sides = latent_sides(model)
    candidates = {f"scale {i} ({s}²)": [i] for i, s in enumerate(sides)}
    candidates["all scales"] = None
    rows = {name: nfa_row(latents, pred, sc) for name, sc in candidates.items()}
    chosen = max(rows, key=lambda k: rows[k]["miou_auto"])
    rule = default_nfa_scales("mobilenetv2", len(sides), sides)
    rule_name = "all scales" if rule is None else f"scale {rule[0]} ({sides[rule[0]]}²)"
    return dict(run=run, epochs=int(ckpt["epoch"]), validation_images=len(val), candidates=rows, chosen=chosen,
                rule=rule_name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "select_nfa_scale"))
    ap.add_argument("--runs", nargs="+", default=["uflow", "msflow"], choices=["uflow", "msflow", "sanflow"])
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    val_root = out / "validation"
    if not (val_root / "bottle").is_dir():
        make_validation_set(ROOT, "bottle", val_root, fraction=FRACTION, seed=SPLIT_SEED)
    results = [select(run, val_root, out) for run in args.runs]
    (RESULTS / "nfa_scale_validation.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# The NFA scale chosen on validation (bottle's training images only)", "",
             "Command: `python benchmarks/select_nfa_scale.py` (from the repository root; 1 torch thread).", "",
             f"{machine_line()}. "
             f"Validation: `make-validation --fraction {FRACTION} --seed {SPLIT_SEED}` on bottle's train/good (each "
             "held-out image as a normal image and with one synthetic anomaly); training on the rest, the settings of "
             "benchmarks/bench_methods.py, last epoch. Tree NFA, valid bound, ε = 1. The test set is not read.", "",
             "| method | NFA input | mIoU auto | mIoU oracle | normal images with a detection | anomalous images with "
             "a detection |", "|---|---|---|---|---|---|"]
    for r in results:
        n = r["validation_images"] // 2
        for name, v in r["candidates"].items():
            mark = " **(chosen)**" if name == r["chosen"] else ""
            lines.append(f"| {NAMES[r['run']]} | {name}{mark} | {v['miou_auto']:.4f} | {v['miou_oracle']:.4f} "
                         f"| {v['false_detections']} of {n} | {v['detected_defective']} of {n} |")
    lines += [""] + [f"{NAMES[r['run']]}: chosen on validation: {r['chosen']}; the library's rule "
                     f"(`default_nfa_scales`: the scale nearest 16²) gives {r['rule']}." for r in results] + [""]
    (RESULTS / "nfa_scale_validation.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
