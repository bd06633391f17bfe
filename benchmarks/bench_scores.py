"""U-Flow's score maps compared on real MVTec AD bottle, on the trained runs of bench_methods.py (book chapter 4).

NEEDS benchmarks/bench_methods.py's U-Flow runs: ``runs/bench_methods/uflow_seed{0,1,2}/last.pt`` (MobileNetV2 at
256, the library's defaults, last epoch; ``python benchmarks/bench_methods.py --runs uflow`` makes them). Nothing is
trained here: each checkpoint is evaluated once on bottle's test set (1 torch thread) and its latents scored in
several ways, with the library's metrics code:

- the paper's map A = 1 − mean_s up(p_s) in float32 against the library's S = −log mean_s up(p_s) (a strictly
  increasing function of A, computed in the log domain): how many images and pixels tie at A = 1, and what the
  float32 ties change in image AUROC (max of the map), pixel AUROC and AUPRO;
- the product of per-scale geometric means S× = −Σ_s up(log p_s) against the joint Gaussian score
  S_joint = −Σ_s C_s·up(log p_s) (:func:`uflow_lib.scoring.joint_score_map`);
- S blurred per image with a Gaussian (σ = 2, 4, 8 px at 256²);
- mIoU: the oracle threshold on S (pixel-wise, chosen on the test masks) against the tree NFA (valid bound, ε = 1,
  the default scale): its automatic mIoU and the oracle threshold on −log10 NFA.

Writes benchmarks/results/scores_bottle.md and .json. Needs ../shared (skips with a message otherwise).

    python benchmarks/bench_scores.py [--runs-dir runs/bench_methods] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import MVTEC_ROOT as ROOT, REPO, RESULTS, have_bottle, machine_line, mean_std

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from uflow_lib import metrics as M  # noqa: E402
from uflow_lib.checkpoint import load_trained  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import EVAL_SIZE, default_nfa_scales, latent_sides, predict_maps  # noqa: E402
from uflow_lib.methods import uflow  # noqa: E402
from uflow_lib.nfa import nfa_segmentation, tree_nfa  # noqa: E402
from uflow_lib.scoring import image_scores, joint_score_map  # noqa: E402

SEEDS = [0, 1, 2]
SIGMAS = [2, 4, 8]


def batched(fn, latents: list[torch.Tensor], size: int = 8) -> np.ndarray:
    """``fn`` (latents → ``(B, 1, H, W)``) over the test set in batches → ``(N, H, W)`` numpy, dtype kept."""
    n = len(latents[0])
    return np.concatenate([fn([z[i:i + size] for z in latents])[:, 0].numpy() for i in range(0, n, size)])


def ranking(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC (max of the map), pixel AUROC and AUPRO of ``maps`` (N, H, W)."""
    img = image_scores(torch.from_numpy(maps[:, None])).numpy()
    return dict(image_auroc=M.image_auroc(img, labels), pixel_auroc=M.pixel_auroc(maps, masks),
                aupro=M.aupro(maps, masks))


def evaluate(seed: int, checkpoint: Path) -> dict:
    cfg, extractor, model, ckpt = load_trained(checkpoint, "cpu")
    if cfg.method != "uflow":
        raise SystemExit(f"{checkpoint} is a {cfg.method} run; this benchmark scores U-Flow's latents")
    test = MVTecDataset(ROOT, "bottle", "test", input_size=cfg.input_size, mask_size=EVAL_SIZE)
    pred = predict_maps(model, extractor, test, nfa=None, progress=False, keep_latents=True)
    z, masks, labels = pred["latents"], pred["mask"], pred["label"]
    a = batched(uflow.anomaly_map, z)                                  # float32, the paper's map
    s = batched(uflow.anomaly_score_map, z)                            # float64
    maps = {"A (float32)": a, "S": s,
            "product of geometric means": batched(lambda x: uflow.anomaly_score_map(x, combine="product"), z),
            "joint (C_s-weighted)": batched(joint_score_map, z)}
    maps.update({f"S blurred, σ = {sg}": np.stack([ndimage.gaussian_filter(m, sg) for m in s]) for sg in SIGMAS})
    row = dict(seed=seed, epochs=int(ckpt["epoch"]), latent_shapes=[list(x.shape[1:]) for x in z],
               scores={name: ranking(m, masks, labels) for name, m in maps.items()})
    tied = a.reshape(len(a), -1).max(axis=1) == 1.0
    row.update(saturated_images=int(tied.sum()), saturated_defective=int((tied & (labels == 1)).sum()),
               test_images=len(labels), defective_images=int(labels.sum()),
               a_one_defect_pixels=int(((a == 1.0) & (masks > 0)).sum()),
               a_one_normal_pixels=int(((a == 1.0) & (masks == 0)).sum()))
    scales = default_nfa_scales(cfg.backbone, len(z), latent_sides(model))
    nfa = tree_nfa(z, EVAL_SIZE, bound="valid", scales=scales)[:, 0].numpy()
    row.update(nfa_scales=scales, miou_oracle_on_s=M.oracle_miou(s, masks)[0],
               miou_nfa_auto=M.miou(nfa_segmentation(nfa), masks), miou_oracle_on_nfa=M.oracle_miou(nfa, masks)[0])
    return row


def report(rows: list[dict], load: float) -> str:
    names = list(rows[0]["scores"])
    lines = ["# U-Flow's score maps on MVTec AD bottle (MobileNetV2, 256, last epoch)", "",
             "Command: `python benchmarks/bench_scores.py` (from the repository root; 1 torch thread; needs the U-Flow "
             "runs of `benchmarks/bench_methods.py`).", "",
             f"{machine_line(load)}. Seeds {', '.join(str(r['seed']) for r in rows)} of `benchmarks/bench_methods.py` "
             f"(its checkpoints `runs/bench_methods/uflow_seed*/last.pt`, {rows[0]['epochs']} epochs), evaluated on "
             f"bottle's test set ({rows[0]['test_images']} images, {rows[0]['defective_images']} defective) at 256². "
             f"Latents {rows[0]['latent_shapes']} (C, h, w), fine → coarse. A = 1 − mean_s up(p_s) in float32 (the "
             "paper's map); S = −log mean_s up(p_s) in float64 (the library's; same order as A in exact arithmetic); "
             "product of geometric means = −Σ_s up(log p_s); joint = −Σ_s C_s·up(log p_s) "
             "(`uflow_lib.scoring.joint_score_map`); image score = max of the map. Δ = A − S, unrounded: A in "
             "float32 ties pixels that S orders (at A = 1 and wherever float32 rounds A), a tied (defect, normal) pair counts "
             "half, so a tie lowers a metric where S ranks that pair right and raises it where S ranks it wrong.", "",
             "Mean ± standard deviation over the seeds (ddof 1):", "",
             "| map | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|"]
    for n in names:
        cells = [mean_std([r["scores"][n][k] for r in rows]) for k in ("image_auroc", "pixel_auroc", "aupro")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Each seed: float32 saturation of A, and A against S.", "",
              "| seed | images with max A = 1 (defective of them) | defect pixels at A = 1 | normal pixels at A = 1 | "
              "image AUROC A | image AUROC S | Δ image | pixel AUROC A | pixel AUROC S | Δ pixel | AUPRO A | AUPRO S "
              "| Δ AUPRO |", "|" + "---|" * 13]
    for r in rows:
        sa, ss = r["scores"]["A (float32)"], r["scores"]["S"]
        cells = []
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            cells += [f"{sa[k]:.4f}", f"{ss[k]:.4f}", f"{sa[k] - ss[k]:+.1e}"]
        lines.append(f"| {r['seed']} | {r['saturated_images']} ({r['saturated_defective']}) | "
                     f"{r['a_one_defect_pixels']} | {r['a_one_normal_pixels']} | " + " | ".join(cells) + " |")
    lines += ["", "Each seed: product of geometric means against the joint score.", "",
              "| seed | map | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for r in rows:
        for n in ("S", "product of geometric means", "joint (C_s-weighted)"):
            v = r["scores"][n]
            lines.append(f"| {r['seed']} | {n} | {v['image_auroc']:.4f} | {v['pixel_auroc']:.4f} | {v['aupro']:.4f} |")
    lines += ["", "Each seed: mIoU of a threshold on S against the tree NFA (valid bound, ε = 1, default scale "
              f"{rows[0]['nfa_scales']}). Both oracles are chosen on the test masks (a reference, not a method).", "",
              "| seed | mIoU oracle on S (pixel threshold) | mIoU NFA automatic | mIoU oracle on −log10 NFA |",
              "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['miou_oracle_on_s']:.4f} | {r['miou_nfa_auto']:.4f} | "
                     f"{r['miou_oracle_on_nfa']:.4f} |")
    lines.append("| mean ± std | " + " | ".join(mean_std([r[k] for r in rows]) for k in
                                                ("miou_oracle_on_s", "miou_nfa_auto", "miou_oracle_on_nfa")) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "bench_methods"))
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    args = ap.parse_args()
    if not have_bottle():
        return 0
    checkpoints = {s: Path(args.runs_dir) / f"uflow_seed{s}" / "last.pt" for s in args.seeds}
    missing = [str(p) for p in checkpoints.values() if not p.is_file()]
    if missing:
        print(f"skipped: no U-Flow runs of benchmarks/bench_methods.py at {missing}; run "
              f"`python benchmarks/bench_methods.py --runs uflow` first")
        return 0
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = []
    for seed, path in checkpoints.items():
        rows.append(evaluate(seed, path))
        print(f"seed {seed} done", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scores_bottle.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = report(rows, load)
    (RESULTS / "scores_bottle.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
