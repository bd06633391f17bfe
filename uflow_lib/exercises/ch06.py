r"""Checks for the exercises of chapter 6 (reproducing MVTec AD on a GPU).

Each exercise is a function, checked on inputs the check makes up itself (seeded, never printed), so a number
read off the book or typed in does not pass:

* 6.1, the mean pixel AUROC of a results table: tables of random categories and values (and the paper's own);
* 6.2, the memory of cached float32 features: random numbers of images and feature-map shapes, counted in bytes;
* 6.3, the last-epoch value and the best-on-test epoch of a training history: random histories, compared with the
  check's own copy (a function that sorts or edits the history it is given is caught).

A wrong, missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from . import (ExerciseFailed, apart, as_finite_number, as_integer, call_student, counts_attempts, passed,
               require, require_function, tiered)

__all__ = ["check_paper_mean", "check_feature_memory", "check_last_vs_best"]


def _number(value: Any, call: str) -> float:
    return as_finite_number(value, call, "return a plain number (check for a division by zero).")


# ---------------------------------------------------------------------------------------------------- 6.1
def _results_tables() -> list[dict[str, tuple[float, ...]]]:
    """Tables like ``PAPER_RESULTS`` (category → (pixel AUROC, other metrics...), percent): made up, then the paper's."""
    from ..reproduce import PAPER_RESULTS

    rng = random.Random(61)
    tables = []
    for n in (4, 15, 1, 9):
        tables.append({f"category_{k}": tuple(round(rng.uniform(70, 99.9), 2) for _ in range(4)) for k in range(n)})
    return tables + [dict(PAPER_RESULTS)]


@counts_attempts("Exercise 6.1")
def check_paper_mean(fn: Callable[[dict], float]) -> None:
    """Exercise 6.1: ``fn(results)`` → the mean of the first entry (pixel AUROC, percent) over all categories."""
    require_function(fn, "mean_pixel_auroc", "(results)")
    for table in _results_tables():
        mine = copy.deepcopy(table)
        call = f"mean_pixel_auroc(a table of {len(table)} categor{'y' if len(table) == 1 else 'ies'})"
        got = _number(call_student(fn, "mean_pixel_auroc", mine), call)
        want = sum(v[0] for v in table.values()) / len(table)
        require(mine == table, f"{call} changed the table it was given",
                "read the table without editing it (no pop, del or assignment into it).")
        if math.isclose(got, want, rel_tol=1e-6):  # float32 welcome
            continue
        if math.isclose(got, want / 100, rel_tol=1e-9):
            hint = "the table is in percent; keep percent (do not divide by 100)."
        elif any(math.isclose(got, sum(v[j] for v in table.values()) / len(table), rel_tol=1e-9)
                 for j in range(1, 4)):
            hint = "the pixel AUROC is the FIRST entry of each category's tuple."
        elif len(table) > 1 and math.isclose(got, sum(v[0] for v in list(table.values())[:-1]) / (len(table) - 1),
                                             rel_tol=1e-9):
            hint = "every category counts: your mean leaves one out."
        else:
            hint = tiered("a mean over the categories: add one value per category and divide by how many there are.",
                          "sum(v[0] for v in results.values()) / len(results)")
        g, w = apart(got, want)
        raise ExerciseFailed(f"{call} = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 6.1", f"your mean agrees on {len(_results_tables())} tables, the paper's among them")


# ---------------------------------------------------------------------------------------------------- 6.2
def _memory_cases() -> list[tuple[int, list[tuple[int, int]]]]:
    """(n_images, [(channels, side), ...]) cases: made up, of 1 to 3 square feature maps."""
    rng = random.Random(62)
    cases = [(1, [(5, 3)]), (7, [(16, 8), (32, 4)])]
    for _ in range(4):
        scales = [(rng.choice((64, 96, 128, 192, 256, 512, 768)), rng.choice((7, 14, 16, 28, 32, 56)))
                  for _ in range(rng.randint(1, 3))]
        cases.append((rng.randint(2, 2000), scales))
    return cases


@counts_attempts("Exercise 6.2")
def check_feature_memory(fn: Callable[[int, Sequence[tuple[int, int]]], float]) -> None:
    """Exercise 6.2: ``fn(n_images, scales)`` → megabytes (10^6 bytes) of float32 feature maps ``(c, side, side)``."""
    require_function(fn, "feature_megabytes", "(n_images, scales)")
    for n, scales in _memory_cases():
        call = f"feature_megabytes({n}, {scales})"
        got = _number(call_student(fn, "feature_megabytes", n, [tuple(s) for s in scales]), call)
        floats = n * sum(c * side * side for c, side in scales)
        want = floats * 4 / 1e6
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if math.isclose(got, floats / 1e6, rel_tol=1e-9):
            hint = "that is the number of floats in millions: a float32 takes 4 bytes."
        elif math.isclose(got, floats * 4 / 2**20, rel_tol=1e-9):
            hint = "that is MiB (2^20 bytes); the exercise asks for MB, 10^6 bytes."
        elif len(scales) > 1 and math.isclose(got, n * scales[0][0] * scales[0][1] ** 2 * 4 / 1e6, rel_tol=1e-9):
            hint = "every scale counts, not only the first one: add the maps of all scales."
        elif math.isclose(got, n * sum(c * side for c, side in scales) * 4 / 1e6, rel_tol=1e-9):
            hint = "a feature map of side s has s × s positions per channel."
        else:
            hint = tiered("count the numbers stored per image (channels × positions, all scales), then bytes.",
                          "n_images · Σ c·side² · 4 / 10^6")
        g, w = apart(got, want)
        raise ExerciseFailed(f"{call} = {g}, expected {w}\nHint: {hint}")
    passed("Exercise 6.2", "your count agrees on every made-up set of images and feature maps")


# ---------------------------------------------------------------------------------------------------- 6.3
def _histories() -> list[list[dict]]:
    """Training histories with a test metric per evaluation: noisy rises, peaks before the end, gaps in epochs."""
    rng = random.Random(63)
    out = []
    for n, every in ((12, 1), (30, 1), (20, 5), (9, 2)):
        peak = rng.uniform(0.3, 0.7) * n
        out.append([dict(epoch=every * (e + 1), loss=rng.uniform(-3, 0),
                         test_pixel_auroc=round(0.9 + 0.05 * math.exp(-((e - peak) / (0.3 * n)) ** 2)
                                               + rng.uniform(-0.004, 0.004), 6)) for e in range(n)])
    return out


@counts_attempts("Exercise 6.3")
def check_last_vs_best(fn: Callable[[list], tuple[float, int]]) -> None:
    """Exercise 6.3: ``fn(history)`` → ``(last, best_epoch)``: the final epoch's test pixel AUROC, and the epoch
    number with the largest one. The reference comes from the check's own copy of each history."""
    require_function(fn, "last_and_best", "(history)")
    for history in _histories():
        given = copy.deepcopy(history)
        call = f"last_and_best(a history of {len(history)} evaluations)"
        got = call_student(fn, "last_and_best", given)
        require(isinstance(got, (tuple, list)) and len(got) == 2, f"{call} returned {got!r}",
                "return two values: `return last, best_epoch`.")
        require(given == history, f"{call} changed the history it was given (sorted or edited it)",
                "the order of the history is the order of training: read it, do not sort it in place "
                "(`sorted(...)` or `max(..., key=...)` leave it alone).")
        last = _number(got[0], f"{call}[0] (last)")
        best = as_integer(got[1])
        require(best is not None, f"{call}[1] (best_epoch) is {got[1]!r}, expected an epoch number (int)",
                "return the value of h['epoch'] of the best evaluation.")
        want_last = history[-1]["test_pixel_auroc"]
        ranked = max(history, key=lambda h: h["test_pixel_auroc"])
        if not math.isclose(last, want_last, rel_tol=1e-12):
            hint = ("the honest number is the one of the final epoch, whatever came before."
                    if math.isclose(last, ranked["test_pixel_auroc"], rel_tol=1e-12) else
                    tiered("`last` is the test pixel AUROC of the final entry of the history.",
                           "history[-1]['test_pixel_auroc']"))
            g, w = apart(last, want_last)
            raise ExerciseFailed(f"{call}: last = {g}, expected {w}\nHint: {hint}")
        if best != ranked["epoch"]:
            index = history.index(ranked)
            hint = ("that is a position in the list; return the epoch stored in the entry (h['epoch']): "
                    "evaluations need not happen every epoch, nor start at 0."
                    if best in (index, index + 1) else
                    tiered("best_epoch is the epoch of the evaluation with the largest test pixel AUROC.",
                           "max(history, key=lambda h: h['test_pixel_auroc'])['epoch']"))
            raise ExerciseFailed(f"{call}: best_epoch = {best}, expected {ranked['epoch']}\nHint: {hint}")
    passed("Exercise 6.3", "right on every made-up history, which your function left as it was")
