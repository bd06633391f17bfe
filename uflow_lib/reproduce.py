"""Reproduce the paper's MVTec AD table: train every category, evaluate the last epoch, compare (chapter 6).

``reproduce(...)`` trains each category with the paper's settings (resuming from ``<out>/<category>/last.pt``
after a disconnect), evaluates the **last epoch** at 256×256, and writes ``<out>/results.csv`` and
``<out>/results.md`` with the paper's numbers beside. When ``eval_every`` > 0, the best-on-test epoch (selected
on test pixel AUROC, as the authors did) is reported in separate, labelled columns — never mixed with the
last-epoch numbers. ``python -m uflow_lib reproduce --help`` is the same from the command line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import MVTEC_CATEGORIES
from .evaluation import evaluate_checkpoint
from .training import train

__all__ = ["PAPER_RESULTS", "reproduce", "results_table"]

#: The paper's final MVTec AD results (%, mIoU as fractions): pixel AUROC, AUPRO, mIoU automatic (NFA), oracle.
PAPER_RESULTS: dict[str, tuple[float, float, float, float]] = {
    "carpet": (99.42, 98.49, 0.5663, 0.5664),
    "grid": (98.49, 95.46, 0.4307, 0.4316),
    "leather": (99.59, 98.40, 0.4183, 0.4242),
    "tile": (97.54, 93.01, 0.6188, 0.6229),
    "wood": (97.49, 95.80, 0.5427, 0.5523),
    "bottle": (98.65, 95.64, 0.6564, 0.6617),
    "cable": (98.61, 93.73, 0.6491, 0.6514),
    "capsule": (99.02, 95.02, 0.4124, 0.4182),
    "hazelnut": (99.30, 97.35, 0.6511, 0.6546),
    "metal_nut": (98.82, 94.32, 0.6267, 0.6307),
    "pill": (99.35, 97.18, 0.4803, 0.4815),
    "screw": (99.49, 97.33, 0.3726, 0.3811),
    "toothbrush": (98.79, 88.80, 0.4121, 0.4188),
    "transistor": (97.87, 91.88, 0.7354, 0.7381),
    "zipper": (98.60, 95.47, 0.5395, 0.5460),
}

COLUMNS = ["method", "category", "epochs", "pixel_auroc", "paper_pixel_auroc", "aupro", "paper_aupro", "miou_auto",
           "paper_miou_auto", "miou_oracle", "paper_miou_oracle", "image_auroc", "mean_z2_normal",
           "best_on_test_epoch", "best_on_test_pixel_auroc", "best_on_test_aupro", "best_on_test_image_auroc"]


def _row(category: str, metrics: dict, best: dict | None) -> dict:
    method = metrics.get("method", "uflow")
    paper = PAPER_RESULTS.get(category) if method == "uflow" else None  # the U-Flow paper's numbers
    row = dict(method=method, category=category, epochs=metrics["epoch"], pixel_auroc=100 * metrics["pixel_auroc"],
               aupro=100 * metrics["aupro"], miou_auto=metrics.get("miou_auto"), miou_oracle=metrics.get("miou_oracle"),
               image_auroc=100 * metrics["image_auroc"], mean_z2_normal=metrics["mean_z2_normal"])
    if paper:
        row.update(paper_pixel_auroc=paper[0], paper_aupro=paper[1], paper_miou_auto=paper[2],
                   paper_miou_oracle=paper[3])
    if best:
        row.update(best_on_test_epoch=best["epoch"], best_on_test_pixel_auroc=100 * best["pixel_auroc"],
                   best_on_test_aupro=100 * best["aupro"], best_on_test_image_auroc=100 * best["image_auroc"])
    return row


def _fmt(v, digits: int) -> str:
    return "—" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def results_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`reproduce` rows, with the mean over categories and the paper's numbers beside
    (U-Flow rows only: "—" for MSFlow and SANFlow, whose papers report other protocols, see chapter 7). A method
    column appears when a row is not U-Flow's."""
    show_method = any(r.get("method", "uflow") != "uflow" for r in rows)
    first = (lambda r: f"| {r.get('method', 'uflow')} ") if show_method else (lambda r: "")  # noqa: E731
    head = (("| method " if show_method else "") + "| category | epochs | pixel AUROC (paper) | AUPRO (paper) "
            "| mIoU auto (paper) | mIoU oracle (paper) | image AUROC | mean z² normal "
            "| best-on-test: epoch / pixel AUROC / AUPRO |")
    lines = [head, "|" + "---|" * (9 + show_method)]
    for r in rows:
        best = ("—" if r.get("best_on_test_epoch") is None else
                f"{r['best_on_test_epoch']} / {r['best_on_test_pixel_auroc']:.2f} / {r['best_on_test_aupro']:.2f}")
        lines.append(
            f"{first(r)}| {r['category']} | {r['epochs']} | {_fmt(r['pixel_auroc'], 2)} ({_fmt(r.get('paper_pixel_auroc'), 2)}) "
            f"| {_fmt(r['aupro'], 2)} ({_fmt(r.get('paper_aupro'), 2)}) "
            f"| {_fmt(r.get('miou_auto'), 4)} ({_fmt(r.get('paper_miou_auto'), 4)}) "
            f"| {_fmt(r.get('miou_oracle'), 4)} ({_fmt(r.get('paper_miou_oracle'), 4)}) "
            f"| {_fmt(r['image_auroc'], 2)} | {_fmt(r['mean_z2_normal'], 3)} | {best} |")
    if len(rows) > 1:
        mean = lambda k: sum(r[k] for r in rows) / len(rows) if all(r.get(k) is not None for r in rows) else None  # noqa: E731
        lines.append(f"{'| ' if show_method else ''}| **mean** | | {_fmt(mean('pixel_auroc'), 2)} ({_fmt(mean('paper_pixel_auroc'), 2)}) "
                     f"| {_fmt(mean('aupro'), 2)} ({_fmt(mean('paper_aupro'), 2)}) "
                     f"| {_fmt(mean('miou_auto'), 4)} ({_fmt(mean('paper_miou_auto'), 4)}) "
                     f"| {_fmt(mean('miou_oracle'), 4)} ({_fmt(mean('paper_miou_oracle'), 4)}) "
                     f"| {_fmt(mean('image_auroc'), 2)} | | |")
    lines += ["", "Last epoch (the honest protocol). Best-on-test columns, when present, select the epoch on the "
              "test set's pixel AUROC as the authors did: they are not comparable to a held-out result."]
    return "\n".join(lines)


def reproduce(
    data: str | Path,
    out: str | Path,
    categories: Sequence[str] = MVTEC_CATEGORIES,
    backbone: str = "mcait",
    method: str = "uflow",
    weights: str | None = None,
    pretrained: bool = True,
    epochs: int | None = None,
    max_minutes: float | None = None,
    eval_every: int = 0,
    cache_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
    log=print,
) -> list[dict]:
    """Train and evaluate each category (resumable); returns the table rows and writes results.csv/.md to ``out``.

    A category whose training stopped early (``max_minutes``) is evaluated at the epoch it reached and marked by
    its ``epochs`` column; run again to continue it. ``method`` trains MSFlow or SANFlow instead (their own
    recipes, :mod:`uflow_lib.methods`; they need a CNN backbone).
    """
    out = Path(out)
    rows = []
    for category in categories:
        cfg = TrainConfig(data=str(data), category=category, out=str(out / category), method=method, backbone=backbone,
                          weights=weights, pretrained=pretrained, epochs=epochs, max_minutes=max_minutes,
                          eval_every=eval_every, cache_dir=cache_dir, device=device)
        res = train(cfg, progress=progress, log=log)
        done = out / category / "metrics.json"
        cached = json.loads(done.read_text()) if done.is_file() else None
        if cached is None or cached["epoch"] != res.epochs_done:
            metrics = evaluate_checkpoint(str(res.checkpoint), device=device, progress=progress)
            done.write_text(json.dumps(metrics))
        else:
            metrics = cached
        best = load_checkpoint(res.checkpoint).get("best_on_test")
        rows.append(_row(category, metrics, best))
        log(f"{category}: epoch {metrics['epoch']}, pixel AUROC {100 * metrics['pixel_auroc']:.2f}, "
            f"AUPRO {100 * metrics['aupro']:.2f}, mIoU auto {metrics.get('miou_auto', float('nan')):.4f}")
        _write(out, rows)
    return rows


def _write(out: Path, rows: Sequence[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    (out / "results.md").write_text(results_table(rows) + "\n")
