"""Each flow's learning rate and epochs on CNN features, chosen on a validation set instead of the test set.

The validation set is made from bottle's training images alone (``python -m uflow_lib make-validation``: 20 % of
train/good held out, each held-out image also given one synthetic anomaly with its mask; the same set as
benchmarks/select_nfa_scale.py). Every flow gets the same tries, the same budget and the same rule:

- tries: the method's own learning rate, and 4× it (a CPU budget is far shorter than the papers' schedules);
  the method's own batch size;
- budget: the epochs that fit about 10 minutes of one CPU thread on bottle's full training set (measured alone on
  this machine: U-Flow 2.6 s, MSFlow 6.3 s, SANFlow 23 s per epoch), each method's schedule stretched to them;
- the run trains on the other 80 % and is evaluated on validation at each quarter of its epochs and at the last;
- rule: the try with the highest mean of validation pixel AUROC and AUPRO at the LAST epoch (the quarters are
  reported to show whether the budget's epochs are enough; a stretched schedule makes an earlier quarter a
  different run, so they are not candidates). The test set is not read.

Writes one JSON per try into --out (resumable; two processes can split the tries with --methods), then
benchmarks/results/recipe_validation.md and .json from every JSON found.

    python benchmarks/select_recipes.py [--methods uflow msflow sanflow] [--out runs/select_recipes]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, WEIGHTS, have_bottle, run_record, runs_machine_line

import torch  # noqa: E402

from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, compute_metrics, predict_maps  # noqa: E402
from uflow_lib.methods import get_method  # noqa: E402
from uflow_lib.training import train  # noqa: E402
from uflow_lib.validation_split import make_validation_set  # noqa: E402

FRACTION, SPLIT_SEED = 0.2, 0
#: epochs that fit about 10 minutes of one CPU thread on bottle's 209 training images
BUDGET_EPOCHS = {"uflow": 200, "msflow": 90, "sanflow": 25}
#: the tries, the same for every method: factor of the method's own learning rate
LR_FACTORS = {"own lr": 1.0, "4× lr": 4.0}
VARIANCE_SIZE = 64  # SANFlow's variance network input side (CPU budget), as in bench_methods.py
NAMES = {"uflow": "U-Flow", "msflow": "MSFlow", "sanflow": "SANFlow"}


def validation_root(out: Path) -> Path:
    """The validation set's root (made once; ``make-validation --fraction 0.2 --seed 0``)."""
    root = out / "validation"
    if not (root / "bottle").is_dir():
        make_validation_set(ROOT, "bottle", root, fraction=FRACTION, seed=SPLIT_SEED)
    return root


def score(row: dict) -> float:
    """The selection rule's number: mean of validation pixel AUROC and AUPRO."""
    return 0.5 * (row["pixel_auroc"] + row["aupro"])


def run_folder(out: Path, method: str, tag: str) -> Path:
    """Where a try trains (its last.pt)."""
    return out / f"{method}_{tag.replace(' ', '_')}"


def run_try(method: str, tag: str, val_root: Path, out: Path) -> dict:
    """Train one try on the validation split's training images; its validation curve (one row per quarter)."""
    own = get_method(method).recipe("bottle")
    epochs = BUDGET_EPOCHS[method]
    cfg = TrainConfig(data=str(val_root), category="bottle", out=str(run_folder(out, method, tag)),
                      method=method, backbone="mobilenetv2", weights=str(WEIGHTS), device="cpu",
                      epochs=epochs, batch_size=own.batch_size, lr=own.lr * LR_FACTORS[tag],
                      eval_every=max(epochs // 4, 1), variance_size=VARIANCE_SIZE)
    res = train(cfg, progress=False)
    curve = [dict(epoch=h["epoch"], pixel_auroc=h["test_pixel_auroc"], image_auroc=h["test_image_auroc"],
                  aupro=h["test_aupro"]) for h in res.history if "test_pixel_auroc" in h]
    if not curve or curve[-1]["epoch"] != epochs:  # the quarters need not end on the last epoch: evaluate it
        cfg_r, extractor, model, _ = load_trained(res.checkpoint, "cpu")
        val = MVTecDataset(val_root, "bottle", "test", input_size=cfg_r.input_size, mask_size=EVAL_SIZE)
        m = compute_metrics(predict_maps(model, extractor, val, nfa=None, progress=False))
        curve.append(dict(epoch=epochs, pixel_auroc=m["pixel_auroc"], image_auroc=m["image_auroc"], aupro=m["aupro"]))
    return dict(method=method, tag=tag, lr=cfg.lr, batch_size=cfg.batch_size, epochs=epochs,
                train_seconds=sum(h["seconds"] for h in res.history), curve=curve, last=curve[-1])


def report(out: Path) -> str:
    """recipe_validation.md and .json from every try's JSON in ``out``."""
    tries = [json.loads(p.read_text()) for p in out.glob("try_*.json")]
    tries.sort(key=lambda t: (list(NAMES).index(t["method"]), list(LR_FACTORS).index(t["tag"])))
    by_method: dict[str, list[dict]] = {}
    for t in tries:
        by_method.setdefault(t["method"], []).append(t)
    chosen = {m: max(ts, key=lambda t: (score(t["last"]), t["tag"] == "own lr")) for m, ts in by_method.items()}
    (RESULTS / "recipe_validation.json").write_text(json.dumps(dict(
        tries=tries, chosen={m: dict(tag=c["tag"], lr=c["lr"], batch_size=c["batch_size"], epochs=c["epochs"])
                             for m, c in chosen.items()}), indent=1) + "\n")
    lines = ["# Learning rate and epochs chosen on validation (bottle's training images only)", "",
             "Command: `python benchmarks/select_recipes.py` (from the repository root; 1 torch thread).", "",
             f"{runs_machine_line(tries)}. Validation: `make-validation --fraction {FRACTION} --seed {SPLIT_SEED}` "
             "on bottle's "
             "train/good (each held-out image as a normal image and with one synthetic anomaly); training on the "
             "rest, MobileNetV2 at 256, seed 0. Every method: its own lr and 4× it, its own batch, the epochs of "
             "about 10 CPU minutes, its schedule stretched to them. Rule: highest mean of validation pixel AUROC "
             "and AUPRO at the last epoch. The test set is not read.", "",
             "| method | try | lr | batch | epoch | val. pixel AUROC | val. image AUROC | val. AUPRO | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in (m for m in NAMES if m in by_method):
        for t in by_method[m]:
            for i, c in enumerate(t["curve"]):
                last = i == len(t["curve"]) - 1
                mark = " **(chosen)**" if last and t is chosen[m] else ""
                lines.append(f"| {NAMES[m]} | {t['tag']}{mark} | {t['lr']:.4g} | {t['batch_size']} | {c['epoch']}"
                             f"{'' if last else ' (curve)'} | {c['pixel_auroc']:.4f} | {c['image_auroc']:.4f} | "
                             f"{c['aupro']:.4f} | {t['train_seconds'] / 60 if last else 0:.1f} min |"
                             .replace("| 0.0 min |", "| |"))
    lines += [""] + [f"{NAMES[m]}: chosen {c['tag']} (lr {c['lr']:.4g}, batch {c['batch_size']}, {c['epochs']} "
                     f"epochs)." for m, c in chosen.items() if m in NAMES] + [""]
    text = "\n".join(lines)
    (RESULTS / "recipe_validation.md").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "select_recipes"))
    ap.add_argument("--methods", nargs="+", default=list(NAMES), choices=list(NAMES))
    ap.add_argument("--report-only", action="store_true", help="only write the results files from --out")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        val_root = validation_root(out)
        for method in args.methods:
            for tag in LR_FACTORS:
                path = out / f"try_{method}_{tag.replace(' ', '_').replace('×', 'x')}.json"
                if not path.is_file():
                    started = run_record()
                    row = {**run_try(method, tag, val_root, out), **started}
                    path.write_text(json.dumps(row, indent=1) + "\n")
                print(json.dumps(json.loads(path.read_text())["last"]), method, tag, flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
