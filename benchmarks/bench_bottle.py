"""U-Flow on the real MVTec AD bottle category with the offline MobileNetV2 (CPU, ≤ 10 minutes of training).

Trains with the paper's bottle row (200 epochs, batch 23, lr 1.129e-4; strides 8/16 at 256, fixed per-channel
standardisation, seed 0), evaluates the LAST epoch at 256×256 and writes benchmarks/results/bottle_mobilenetv2.md
and .json. Needs ../shared (skips with a message otherwise).

    python benchmarks/bench_bottle.py [--out runs/bench_bottle] [--max-minutes 10] [--nfa-scales 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from common import MVTEC_ROOT as ROOT, REPO, WEIGHTS, have_bottle

import torch  # noqa: E402

from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, compute_metrics, default_nfa_scales, predict_maps  # noqa: E402
from uflow_lib.training import train  # noqa: E402



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_bottle"))
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the paper's bottle row (200)")
    ap.add_argument("--nfa-scales", type=int, nargs="+", default=None, help="scales used by the tree NFA")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    cfg = TrainConfig(data=str(ROOT), category="bottle", out=args.out, backbone="mobilenetv2", weights=str(WEIGHTS),
                      epochs=args.epochs, max_minutes=args.max_minutes, device="cpu")
    t0 = time.monotonic()
    res = train(cfg, progress=False)
    train_s = sum(h["seconds"] for h in res.history)
    cfg_r, extractor, model, ckpt = load_trained(res.checkpoint, "cpu")
    test = MVTecDataset(ROOT, "bottle", "test", input_size=cfg_r.input_size, mask_size=EVAL_SIZE)
    rows = {}
    scales = args.nfa_scales if args.nfa_scales is not None else default_nfa_scales("mobilenetv2", 2)
    runs = [(f"tree, scales {s}, {b} bound", "tree", b, s) for s in ([1], [0, 1], [0]) for b in ("valid", "paper")]
    runs.append(("block (paper v1), both scales", "block", "valid", None))
    for name, kind, bound, sc in runs:
        if sc != scales and args.nfa_scales is not None:
            continue
        pred = predict_maps(model, extractor, test, nfa=kind, nfa_bound=bound, nfa_scales=sc, progress=False)
        rows[name] = compute_metrics(pred)
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    rows["valid"] = rows[f"tree, scales {scales}, valid bound"]
    rows["paper"] = rows[f"tree, scales {scales}, paper bound"]
    m = rows["valid"]
    result = dict(
        command="python benchmarks/bench_bottle.py " + " ".join(sys.argv[1:]),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU",
        date=time.strftime("%Y-%m-%d"), epochs=ckpt["epoch"], train_seconds=round(train_s, 1),
        wall_seconds=round(time.monotonic() - t0, 1), n_train=len(MVTecDataset(ROOT, "bottle", "train")),
        n_test=len(test), nfa_scales=args.nfa_scales, metrics_valid_bound=rows["valid"],
        metrics_paper_bound=rows["paper"],
    )
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "bottle_mobilenetv2.json").write_text(json.dumps(result, indent=2))
    md = [
        "# U-Flow on real MVTec AD bottle, offline MobileNetV2, CPU",
        "",
        f"Produced by `{result['command']}` ({result['machine']}, {result['date']}).",
        f"Training: {result['epochs']} epochs (paper's bottle row: 200 epochs, batch 23, lr 1.129e-4), "
        f"{result['train_seconds']} s of training, {result['n_train']} train / {result['n_test']} test images. "
        "Last epoch (no selection on the test set).",
        "",
        "| metric | this run | issue target | paper (MS-CaiT, GPU) |",
        "|---|---|---|---|",
        f"| pixel AUROC | {m['pixel_auroc']:.4f} | ≥ 0.980 | 0.9865 |",
        f"| image AUROC | {m['image_auroc']:.4f} | 1.000 | — |",
        f"| AUPRO (FPR ≤ 0.3) | {m['aupro']:.4f} | ≥ 0.90 | 0.9564 |",
        f"| mean z² of held-out normal test latents | {m['mean_z2_normal']:.3f} | ≈ 1 | — |",
        f"| mIoU, automatic NFA threshold (valid bound) | {m['miou_auto']:.4f} | — | 0.6564 |",
        f"| mIoU, oracle threshold on −log10 NFA | {m['miou_oracle']:.4f} | — | 0.6617 |",
        f"| mIoU, oracle threshold on the likelihood map | {m['miou_oracle_likelihood']:.4f} | — | — |",
        f"| good test images with a false detection (of 20), valid bound | {m['false_detections_normal']:.0f} | — | — |",
        f"| mIoU automatic / good images with a false detection, paper bound | "
        f"{rows['paper']['miou_auto']:.4f} / {rows['paper']['false_detections_normal']:.0f} | — | — |",
        "",
        f"Default NFA scales for this backbone: {scales} (0 = finest; uflow_lib.evaluation.default_nfa_scales).",
        "",
        "## The a contrario segmentation: scales, bounds, tree vs block",
        "",
        "| NFA | mIoU automatic | mIoU oracle (−log10 NFA) | good images with a false detection (of 20) |",
        "|---|---|---|---|",
        *[f"| {k} | {v['miou_auto']:.4f} | {v['miou_oracle']:.4f} | {v['false_detections_normal']:.0f} |"
          for k, v in rows.items() if k not in ("valid", "paper")],
        "",
    ]
    (out / "bottle_mobilenetv2.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
