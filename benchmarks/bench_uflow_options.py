"""U-Flow's options for weak CPU features, beside the paper's flow: chosen on validation, reported on test too.

Variants (each a ``train`` option; the paper's flow stays the default):

- the paper: subnets Conv3×3/Conv1×1 alternating, strides 8/16 (MobileNetV2);
- ``--subnet-kernels 1 1 1 1``: every subnet 1×1, so a defect's high score does not spread to its neighbours
  through the subnets' 3×3 context;
- ``--strides 4 8 16``: a third, finer scale (64² latents).

Every variant trains with U-Flow's validated defaults (benchmarks/select_recipes.py; MobileNetV2 at 256, seed 0,
last epoch) twice: on the validation split's training images, evaluated on the validation set (held-out normal
images and synthetic anomalies), and on bottle's whole training set, evaluated on the test set. The choice reads
validation only: an option is recommended where it beats the paper on the mean of validation pixel AUROC and
AUPRO; the test columns are reported, never used. The paper's runs are shared with select_recipes.py (validation)
and bench_methods.py (test, seed 0) when they exist.

Writes benchmarks/results/uflow_options.md and .json. Needs ../shared; run select_recipes.py first.

    python benchmarks/bench_uflow_options.py [--variants paper kernels1x1 strides4816]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, machine_line

import torch  # noqa: E402

from select_recipes import FRACTION, SPLIT_SEED, run_folder, validation_root  # noqa: E402
from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, compute_metrics, default_nfa_scales, latent_sides, predict_maps  # noqa: E402
from uflow_lib.training import train  # noqa: E402

#: variant → (label, options)
VARIANTS = {
    "paper": ("the paper (3×3/1×1 subnets, strides 8/16)", {}),
    "kernels1x1": ("1×1 subnets (`--subnet-kernels 1 1 1 1`)", dict(subnet_kernels=[1, 1, 1, 1])),
    "strides4816": ("strides 4/8/16 (`--strides 4 8 16`)", dict(strides=[4, 8, 16])),
}


def folder(split: str, variant: str, recipes: Path, methods: Path, out: Path) -> Path:
    """The run's folder; the paper's runs are those of select_recipes.py and bench_methods.py."""
    if variant == "paper" and split == "validation":
        chosen = json.loads((RESULTS / "recipe_validation.json").read_text())["chosen"]["uflow"]
        return run_folder(recipes, "uflow", chosen["tag"])
    if variant == "paper":
        return methods / "uflow_seed0"
    return out / f"{split}_{variant}"


def run(split: str, variant: str, recipes: Path, methods: Path, out: Path) -> dict:
    """Train (or find) one variant on one split and evaluate it there."""
    val_root = validation_root(recipes)
    data = val_root if split == "validation" else ROOT
    target = folder(split, variant, recipes, methods, out)
    if variant != "paper" or not (target / "last.pt").is_file():
        cfg = TrainConfig(data=str(data), category="bottle", out=str(target), method="uflow", backbone="mobilenetv2",
                          weights=str(WEIGHTS), device="cpu", cache_dir=str(out / f"cache_{split}"),
                          **VARIANTS[variant][1])
        train(cfg, progress=False)
    cfg, extractor, model, ckpt = load_trained(target / "last.pt", "cpu")
    dataset = MVTecDataset(data, "bottle", "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
    sides = latent_sides(model)
    scales = default_nfa_scales("mobilenetv2", len(sides), sides)
    pred = predict_maps(model, extractor, dataset, nfa="tree", nfa_scales=scales, progress=False)
    return dict(split=split, variant=variant, epochs=int(ckpt["epoch"]), lr=cfg.lr, batch_size=cfg.batch_size,
                train_seconds=sum(h["seconds"] for h in ckpt["history"]),
                parameters=sum(p.numel() for p in model.parameters() if p.requires_grad), latent_sides=sides,
                **{k: v for k, v in compute_metrics(pred).items() if isinstance(v, float) or v is None})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "uflow_options"))
    ap.add_argument("--recipes", default=str(REPO / "runs" / "select_recipes"))
    ap.add_argument("--methods", default=str(REPO / "runs" / "bench_methods"), help="bench_methods.py's --out")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in args.splits:
        for variant in args.variants:
            path = out / f"result_{split}_{variant}.json"
            if not path.is_file():
                path.write_text(json.dumps(run(split, variant, Path(args.recipes), Path(args.methods), out),
                                           indent=1) + "\n")
            print(path.read_text(), flush=True)
    rows = {(r["split"], r["variant"]): r for r in map(lambda p: json.loads(p.read_text()),
                                                         sorted(out.glob("result_*.json")))}
    (RESULTS / "uflow_options.json").write_text(json.dumps(list(rows.values()), indent=1) + "\n")
    score = lambda r: 0.5 * (r["pixel_auroc"] + r["aupro"])  # noqa: E731
    paper_val = rows.get(("validation", "paper"))
    lines = ["# U-Flow's options for CPU features: validation (chooses) and test (reported)", "",
             "Command: `python benchmarks/bench_uflow_options.py` (from the repository root; 1 torch thread).", "",
             f"{machine_line()}. U-Flow's validated defaults (MobileNetV2 at 256, seed 0, last epoch) with each option. "
             f"Validation: `make-validation --fraction {FRACTION} --seed {SPLIT_SEED}` on bottle's train/good, training "
             "on the rest; test: bottle's whole training set and test set. An option is recommended where it beats the "
             "paper on the mean of validation pixel AUROC and AUPRO; the test columns play no part in that. mIoU: tree "
             "NFA, valid bound, ε = 1, at the default scale.", "",
             "| variant | parameters | train time | val. pixel AUROC | val. AUPRO | val. mIoU auto | test image AUROC "
             "| test pixel AUROC | test AUPRO | test mIoU auto | recommended (on validation) |", "|" + "---|" * 11]
    for variant, (label, _) in VARIANTS.items():
        v, t = rows.get(("validation", variant)), rows.get(("test", variant))
        if v is None and t is None:
            continue
        any_row = v or t
        f = lambda r, k: "—" if r is None or r.get(k) is None else f"{r[k]:.4f}"  # noqa: E731
        verdict = ("the default" if variant == "paper" else
                   "—" if v is None or paper_val is None else "yes" if score(v) > score(paper_val) else "no")
        lines.append(f"| {label} | {any_row['parameters']:,} | {any_row['train_seconds'] / 60:.1f} min | "
                     f"{f(v, 'pixel_auroc')} | {f(v, 'aupro')} | {f(v, 'miou_auto')} | {f(t, 'image_auroc')} | "
                     f"{f(t, 'pixel_auroc')} | {f(t, 'aupro')} | {f(t, 'miou_auto')} | {verdict} |")
    lines.append("")
    (RESULTS / "uflow_options.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
