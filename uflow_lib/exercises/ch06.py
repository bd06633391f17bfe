"""Checks for the exercises of chapter 6 (reproducing MVTec AD on a GPU)."""

from __future__ import annotations

from collections.abc import Sequence

from . import passed, require

__all__ = ["check_paper_mean", "check_feature_memory", "check_last_vs_best"]


def check_paper_mean(mean_pixel_auroc) -> None:
    """Exercise 6.1: mean pixel AUROC of the paper's table over the 15 categories (percent)."""
    from ..reproduce import PAPER_RESULTS

    require(mean_pixel_auroc is not None, "no answer: `mean_pixel_auroc` is None",
            "average PAPER_RESULTS[c][0] over the categories c")
    expected = sum(v[0] for v in PAPER_RESULTS.values()) / len(PAPER_RESULTS)
    value = float(mean_pixel_auroc)
    require(not (0 < value <= 1.0), f"got {value:.4f}: that looks like a fraction",
            "the table is in percent (98.65 for bottle); keep percent")
    require(abs(value - expected) < 1e-2, f"got {value:.3f}, expected about {expected:.2f}",
            "use all 15 categories and the first column (pixel AUROC); the paper reports 98.74")
    passed("Exercise 6.1", f"mean pixel AUROC {value:.2f} %")


def check_feature_memory(n_images, megabytes) -> None:
    """Exercise 6.2: memory of cached MS-CaiT features (float32) for ``n_images`` images, in MB (10^6 bytes)."""
    require(megabytes is not None, "no answer: `megabytes` is None",
            "count the floats per image: 768·28·28 + 384·14·14, times 4 bytes")
    expected = int(n_images) * (768 * 28 * 28 + 384 * 14 * 14) * 4 / 1e6
    value = float(megabytes)
    require(abs(value - expected / 4) > 1e-6 or expected == 0, f"got {value:.1f} MB, which is the number of floats "
            "in millions, not megabytes", "a float32 takes 4 bytes")
    require(abs(value - expected * 1e6 / 2**20) > 1e-3 or abs(value - expected) < 0.5,
            f"got {value:.1f}: that is MiB (2^20 bytes)", "divide the bytes by 10^6, not 2^20")
    require(abs(value - expected) < 0.5, f"got {value:.1f} MB, expected {expected:.1f} MB",
            "both scales count: 768 channels at 28×28 and 384 channels at 14×14, 4 bytes each")
    passed("Exercise 6.2", f"{value:.0f} MB for {int(n_images)} images")


def check_last_vs_best(history: Sequence[dict], last, best_epoch) -> None:
    """Exercise 6.3: from a training history with test metrics, the last-epoch value and the best-on-test epoch."""
    require(last is not None and best_epoch is not None, "no answer: `last` or `best_epoch` is None",
            "last = history[-1]['test_pixel_auroc']; best_epoch = the epoch with the largest test_pixel_auroc")
    want_last = history[-1]["test_pixel_auroc"]
    want_best = max(history, key=lambda h: h["test_pixel_auroc"])["epoch"]
    require(abs(float(last) - want_last) < 1e-12, f"`last` is {last}, the last epoch's value is {want_last}",
            "the honest number is the one of the final epoch, whatever came before")
    require(int(best_epoch) == want_best, f"`best_epoch` is {best_epoch}, expected {want_best}",
            "epochs count from 1 in the history (h['epoch']); pick the epoch with the largest test pixel AUROC")
    passed("Exercise 6.3", f"last {float(last):.4f}, best-on-test at epoch {int(best_epoch)}")
