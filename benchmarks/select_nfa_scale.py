"""The NFA's scale for CNN backbones, chosen on a validation set instead of the test set.

The validation set is made from bottle's training images alone (``python -m uflow_lib make-validation``: 20 % of
train/good held out, each held-out image also given one synthetic anomaly with its mask). Each flow is the run
benchmarks/select_recipes.py chose (trained on the other 80 % with the library's defaults; run that script
first), then the tree NFA (valid bound, ε = 1) runs on its validation latents at every candidate: each scale
alone and all scales (SANFlow: on z/σ). The candidate of highest automatic mIoU on validation is the choice; the
test set is not read.

Writes benchmarks/results/nfa_scale_validation.md and .json. Needs ../shared.

    python benchmarks/select_nfa_scale.py [--runs uflow msflow sanflow] [--recipes runs/select_recipes]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, machine_line

import torch  # noqa: E402

from bench_methods import NAMES, nfa_row  # noqa: E402
from select_recipes import FRACTION, SPLIT_SEED, run_folder  # noqa: E402
from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, default_nfa_scales, latent_sides, predict_maps  # noqa: E402


def select(run: str, recipes: Path) -> dict:
    chosen = json.loads((RESULTS / "recipe_validation.json").read_text())["chosen"][run]
    cfg, extractor, model, ckpt = load_trained(run_folder(recipes, run, chosen["tag"]) / "last.pt", "cpu")
    val_root = recipes / "validation"
    val = MVTecDataset(val_root, "bottle", "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
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
    ap.add_argument("--recipes", default=str(REPO / "runs" / "select_recipes"),
                    help="the --out of benchmarks/select_recipes.py")
    ap.add_argument("--runs", nargs="+", default=["uflow", "msflow", "sanflow"], choices=["uflow", "msflow", "sanflow"])
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    results = [select(run, Path(args.recipes)) for run in args.runs]
    (RESULTS / "nfa_scale_validation.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# The NFA scale chosen on validation (bottle's training images only)", "",
             "Command: `python benchmarks/select_nfa_scale.py` (from the repository root; 1 torch thread).", "",
             f"{machine_line()}. "
             f"Validation: `make-validation --fraction {FRACTION} --seed {SPLIT_SEED}` on bottle's train/good (each "
             "held-out image as a normal image and with one synthetic anomaly); each flow is the run "
             "`benchmarks/select_recipes.py` chose (trained on the rest with the library's defaults, last epoch). "
             "Tree NFA, valid bound, ε = 1 (SANFlow: on z/σ). The test set is not read.", "",
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
