"""Reproduce the paper's MVTec AD table: train every category, evaluate the last epoch, compare (chapter 6).

``reproduce(...)`` trains each category with the paper's settings (resuming from ``<out>/<category>/last.pt``
after a disconnect), evaluates the **last epoch** at 256×256, and writes ``<out>/results.csv`` and
``<out>/results.md``: one labelled row per setup (this run's backbone, epochs and NFA scales; the paper's MS-CaiT,
best-on-test checkpoint and NFA scales on rows of their own). When ``eval_every`` > 0, the best-on-test epoch
(selected on test pixel AUROC, as the authors did) is reported on its own labelled row — never mixed with the
last-epoch numbers. ``workers=N`` (``--workers N``) spreads the categories over N processes, one per GPU, and
merges their results into the same table. ``python -m uflow_lib reproduce --help`` is the same from the command
line.

Any layout of :mod:`uflow_lib.layouts` works (``layout``, folder options); a category without ground-truth masks
gets its pixel columns marked ``n/a`` (image AUROC only).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .config import FOLDER_OPTIONS, TrainConfig
from .data import MVTEC_CATEGORIES
from .evaluation import evaluate_checkpoint
from .layouts import open_dataset, resolve_layout
from .methods import resolve
from .methods.uflow import CATEGORY_SETTINGS
from .runtime import pick_device
from .training import train

__all__ = ["PAPER_RESULTS", "PAPER_SETUP", "WorkerError", "category_row", "deal_categories", "nfa_scales_label",
           "reproduce", "results_table", "worker_devices"]

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

COLUMNS = ["method", "category", "epochs", "backbone", "input_size", "nfa_scales", "pixel_auroc", "paper_pixel_auroc",
           "aupro", "paper_aupro", "miou_auto", "paper_miou_auto", "miou_oracle", "paper_miou_oracle", "image_auroc",
           "mean_z2_normal", "best_on_test_epoch", "best_on_test_pixel_auroc", "best_on_test_aupro",
           "best_on_test_image_auroc"]

#: The setup of the U-Flow paper's table (its rows in :func:`results_table`).
PAPER_SETUP = dict(backbone="MS-CaiT, 448 px", nfa_scales="all (28², 14²)",
                   checkpoint="best on test, per metric (early stopping on test pixel AUROC)")


def nfa_scales_label(backbone: str) -> str:
    """The scales the tree NFA of :func:`reproduce` uses for ``backbone``, in words: the rule of
    :func:`uflow_lib.evaluation.default_nfa_scales` (MS-CaiT: all, as the paper; a CNN: the one scale nearest 16²)."""
    return PAPER_SETUP["nfa_scales"] if backbone == "mcait" else "one: the scale nearest 16²"


def _pct(v: float | None) -> float | None:
    """A 0–1 metric in percent; None (not measured: no masks) stays None."""
    return None if v is None else 100 * v


def _row(category: str, metrics: dict, best: dict | None, config: dict | None = None) -> dict:
    method = metrics.get("method", "uflow")
    paper = PAPER_RESULTS.get(category) if method == "uflow" else None  # the U-Flow paper's numbers
    backbone = metrics.get("backbone") or (config or {}).get("backbone")
    row = dict(method=method, category=category, epochs=metrics["epoch"], backbone=backbone,
               input_size=(config or {}).get("input_size"),
               nfa_scales=nfa_scales_label(backbone) if backbone and "miou_auto" in metrics else None,
               pixel_auroc=_pct(metrics["pixel_auroc"]),
               aupro=_pct(metrics["aupro"]), miou_auto=metrics.get("miou_auto"), miou_oracle=metrics.get("miou_oracle"),
               image_auroc=100 * metrics["image_auroc"], mean_z2_normal=metrics.get("mean_z2_normal"))
    if paper:
        row.update(paper_pixel_auroc=paper[0], paper_aupro=paper[1], paper_miou_auto=paper[2],
                   paper_miou_oracle=paper[3])
    if best:
        row.update(best_on_test_epoch=best["epoch"], best_on_test_pixel_auroc=_pct(best.get("pixel_auroc")),
                   best_on_test_aupro=_pct(best.get("aupro")), best_on_test_image_auroc=100 * best["image_auroc"])
    return row


def _fmt(v, digits: int, missing: str = "—") -> str:
    return missing if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _got(v, digits: int) -> str:
    """A measured value: ``n/a`` where it could not be measured (no masks)."""
    return _fmt(v, digits, "n/a")


def _mean(rows: Sequence[dict], key: str) -> float | None:
    """Mean of ``key`` over ``rows``; None unless every row has it."""
    return sum(r[key] for r in rows) / len(rows) if all(r.get(key) is not None for r in rows) else None


def _backbone(r: dict) -> str:
    name = r.get("backbone") or "?"
    return f"{name}, {r['input_size']} px" if r.get("input_size") else name


def results_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`reproduce` rows: one labelled row per setup, never two setups in one cell.

    For each category: the row of this run (last epoch: the honest protocol), its best-on-test row when the run
    evaluated on the test set during training (``eval_every``; selected on test, labelled so), and the U-Flow
    paper's row (MS-CaiT at 448, best checkpoint on test, NFA on all scales; U-Flow rows only: MSFlow and
    SANFlow's papers report other protocols, chapter 7). Each row names its backbone, epochs and NFA scales.
    With several categories, mean rows follow (the paper's mean only when every category has the paper's
    numbers). A method column appears when a row is not U-Flow's.
    """
    show_method = any(r.get("method", "uflow") != "uflow" for r in rows)
    first = (lambda r: f"| {r.get('method', 'uflow')} ") if show_method else (lambda r: "")  # noqa: E731
    head = (("| method " if show_method else "") + "| category | epochs | setup | backbone | NFA scales "
            "| pixel AUROC | AUPRO | mIoU auto | mIoU oracle | image AUROC | mean z² normal |")
    lines = [head, "|" + "---|" * (11 + show_method)]

    def measured(r: dict, category: str, epochs: str, setup: str, backbone: str, nfa: str, unmeasured=()) -> str:
        """A row of this run; ``unmeasured``: metrics it did not compute ("—", not "n/a")."""
        v = lambda k, d: "—" if k in unmeasured else _got(r.get(k), d)  # noqa: E731
        return (f"{first(r)}| {category} | {epochs} | {setup} | {backbone} | {nfa} | {v('pixel_auroc', 2)} "
                f"| {v('aupro', 2)} | {v('miou_auto', 4)} | {v('miou_oracle', 4)} | {v('image_auroc', 2)} "
                f"| {v('mean_z2_normal', 3)} |")

    def paper(r: dict, category: str, epochs: str) -> str:
        return (f"{first(dict(r, method='uflow'))}| {category} | {epochs} | U-Flow paper: {PAPER_SETUP['checkpoint']} "
                f"| {PAPER_SETUP['backbone']} | {PAPER_SETUP['nfa_scales']} | {_fmt(r['paper_pixel_auroc'], 2)} "
                f"| {_fmt(r['paper_aupro'], 2)} | {_fmt(r['paper_miou_auto'], 4)} | {_fmt(r['paper_miou_oracle'], 4)} "
                f"| — | — |")

    for r in rows:
        lines.append(measured(r, r["category"], str(r["epochs"]), "this run: last epoch", _backbone(r),
                              _fmt(r.get("nfa_scales"), 0)))
        if r.get("best_on_test_epoch") is not None:
            best = dict(r, pixel_auroc=r["best_on_test_pixel_auroc"], aupro=r["best_on_test_aupro"],
                        image_auroc=r["best_on_test_image_auroc"])
            lines.append(measured(best, r["category"], str(r["best_on_test_epoch"]),
                                  "this run: best on test (selected on test)", _backbone(r), "— (no NFA)",
                                  unmeasured=("miou_auto", "miou_oracle", "mean_z2_normal")))
        if r.get("paper_pixel_auroc") is not None:
            lines.append(paper(r, r["category"], f"≤ {CATEGORY_SETTINGS[r['category']].epochs}"))
    if len(rows) > 1:
        means = {k: _mean(rows, k) for k in ("pixel_auroc", "aupro", "miou_auto", "miou_oracle", "image_auroc",
                                             "mean_z2_normal")}
        same = lambda text: text(rows[0]) if all(text(r) == text(rows[0]) for r in rows) else "mixed"  # noqa: E731
        means["method"] = same(lambda r: r.get("method", "uflow")) if show_method else ""
        lines.append(measured(means, "**mean**", "", "this run: last epoch", same(_backbone),
                              same(lambda r: _fmt(r.get("nfa_scales"), 0))))
        if all(r.get("paper_pixel_auroc") is not None for r in rows):
            paper_means = {k: _mean(rows, k) for k in ("paper_pixel_auroc", "paper_aupro", "paper_miou_auto",
                                                        "paper_miou_oracle")}
            lines.append(paper(dict(rows[0], **paper_means), "**mean**", ""))
    lines += ["", "Each row is one setup. \"this run: last epoch\" is the honest protocol. Best-on-test rows, when "
              "present, select the epoch on the test set's pixel AUROC as the authors did (no NFA at those "
              "evaluations): they are not comparable to a held-out result. The U-Flow paper's rows are its published "
              "numbers (another backbone, resolution, checkpoint rule and NFA scales): compare setups row by row, "
              "not cell by cell."]
    if any(r["pixel_auroc"] is None for r in rows):
        lines.append("n/a: the category's test set has no ground-truth masks, so there are no pixel metrics (image "
                     "AUROC only; best-on-test then selects on image AUROC).")
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
    workers: int = 1,
    cait_blocks: Sequence[int] | None = None,
    checkpoint_every: int = 1,
    checkpoint_minutes: float | None = None,
    layout: str = "auto",
    **folder,
) -> list[dict]:
    """Train and evaluate each category (resumable); returns the table rows and writes results.csv/.md to ``out``.

    A category whose training stopped early (``max_minutes``) is evaluated at the epoch it reached and marked by
    its ``epochs`` column; run again to continue it. ``method`` trains MSFlow or SANFlow instead (their own
    recipes, :mod:`uflow_lib.methods`; they need a CNN backbone). ``checkpoint_every`` / ``checkpoint_minutes``:
    how often ``last.pt`` is written (:class:`~uflow_lib.config.TrainConfig`); ``cait_blocks``: a shallower
    MS-CaiT (random weights, quick checks of the full path). ``layout`` and the folder options (``normal_dir``,
    ... :data:`uflow_lib.config.FOLDER_OPTIONS`) choose the data's layout (:mod:`uflow_lib.layouts`); in the folder
    layout ``data`` is None and ``categories`` is the run's one name.

    ``workers`` > 1 runs that many processes, one per GPU (worker ``i`` on ``cuda:i``; every worker on the CPU
    when ``device`` is the CPU), each on its own share of the categories (:func:`deal_categories`) and logging to
    ``<out>/worker<i>.log``; the parent then writes one table in the order of ``categories``. Every row is read
    from ``<out>/<category>/metrics.json`` (and the best-on-test record of ``last.pt``), so the table does not
    depend on ``workers``. A failed worker raises :class:`WorkerError` once the others are done; the categories
    that finished keep their results, and running again resumes the rest.
    """
    out = Path(out)
    categories = list(categories)
    if set(folder) - set(FOLDER_OPTIONS):
        raise TypeError(f"unknown options {sorted(set(folder) - set(FOLDER_OPTIONS))}; expected {FOLDER_OPTIONS}")
    if folder.get("normal_dir") is not None and len(categories) != 1:
        raise ValueError(f"the folder layout is one dataset, but {len(categories)} categories were given; pass one "
                         "name (--categories NAME) or none (the normal folder's name)")
    settings = dict(data=None if data is None else str(data), method=method, layout=layout, **folder,
                    backbone=backbone, weights=weights, pretrained=pretrained,
                    epochs=epochs, max_minutes=max_minutes, eval_every=eval_every, cache_dir=cache_dir,
                    cait_blocks=None if cait_blocks is None else list(cait_blocks), checkpoint_every=checkpoint_every,
                    checkpoint_minutes=checkpoint_minutes)
    devices = worker_devices(workers, len(categories), device)
    if len(devices) == 1:
        rows = []
        for category in categories:
            log(_run_category(out, category, settings, devices[0], progress, log))
            rows.append(category_row(out, category))
            _write(out, rows)
        return rows
    costs = [_cost(category, settings) for category in categories]
    shares = deal_categories(categories, costs, len(devices))
    finished, failures = _run_workers(out, shares, devices, settings, progress, log)
    rows = [category_row(out, c) for c in categories if c in finished]
    if rows:
        _write(out, rows)
    if failures:
        raise WorkerError(_failure_message(failures, categories))
    return rows


class WorkerError(RuntimeError):
    """A category failed in a worker process of :func:`reproduce`; the message is one line."""


def worker_devices(workers: int, n_categories: int, device: str = "auto") -> list[str]:
    """The device of each worker :func:`reproduce` starts: one entry per worker, ``workers`` clamped to the
    number of categories. Raises ``ValueError`` (one line) for ``workers`` < 1, more workers than visible GPUs,
    or a ``device`` naming a single GPU with several workers."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {workers}); pass --workers 1 for one process")
    n = max(1, min(workers, n_categories))
    if n == 1:
        return [device]
    if pick_device(device).type == "cpu":
        return ["cpu"] * n
    if device not in ("auto", "cuda"):
        raise ValueError(f"--device {device} names one device, but --workers {n} puts worker i on cuda:i; "
                         f"pass --device cuda (or auto), or --workers 1")
    gpus = torch.cuda.device_count()
    if n > gpus:
        raise ValueError(f"--workers {n} asks for more processes than the {gpus} visible GPU(s) (one process per "
                         f"GPU); pass --workers {gpus} or fewer, or --device cpu")
    return [f"cuda:{i}" for i in range(n)]


def deal_categories(categories: Sequence[str], costs: Sequence[float], workers: int) -> list[list[str]]:
    """Deal ``categories`` to ``workers`` lists, balanced by cost; returns one list per worker, each in the
    order of ``categories``.

    Greedy longest-first: the costliest category goes to the worker with the least work so far (ties: the
    lower worker index, then the earlier category). The cost :func:`reproduce` passes is training images ×
    epochs, since MVTec AD categories differ by up to 6× in training images and the paper's epochs differ per
    category too: dealing round-robin could give one GPU several of the longest categories while another idles.
    """
    order = sorted(range(len(categories)), key=lambda k: (-costs[k], k))
    load = [0.0] * workers
    picked: list[list[int]] = [[] for _ in range(workers)]
    for k in order:
        w = min(range(workers), key=lambda i: (load[i], i))
        load[w] += costs[k]
        picked[w].append(k)
    return [[categories[k] for k in sorted(ks)] for ks in picked]


def category_row(out: str | Path, category: str) -> dict:
    """The table row of a category :func:`reproduce` finished: from ``<out>/<category>/metrics.json`` and the
    best-on-test record of ``<out>/<category>/last.pt``."""
    folder = Path(out) / category
    metrics = json.loads((folder / "metrics.json").read_text())
    ckpt = load_checkpoint(folder / "last.pt")
    return _row(category, metrics, ckpt.get("best_on_test"), ckpt.get("config"))


def _config(out: Path, category: str, settings: dict, device: str) -> TrainConfig:
    return TrainConfig(category=category, out=str(out / category), device=device, **settings)


def _run_category(out: Path, category: str, settings: dict, device: str, progress: bool, log) -> str:
    """Train (resume) and evaluate one category, writing its metrics.json; returns the summary line."""
    res = train(_config(out, category, settings, device), progress=progress, log=log)
    done = out / category / "metrics.json"
    metrics = json.loads(done.read_text()) if done.is_file() else None
    if metrics is None or metrics["epoch"] != res.epochs_done:
        metrics = evaluate_checkpoint(str(res.checkpoint), device=device, progress=progress, log=log)
        done.write_text(json.dumps(metrics))
    return (f"{category}: epoch {metrics['epoch']}, pixel AUROC {_got(_pct(metrics['pixel_auroc']), 2)}, "
            f"AUPRO {_got(_pct(metrics['aupro']), 2)}, mIoU auto {_got(metrics.get('miou_auto', float('nan')), 4)}, "
            f"image AUROC {100 * metrics['image_auroc']:.2f}")


def _cost(category: str, settings: dict) -> float:
    """Training images × epochs of a category (its images only count when its data is readable)."""
    cfg = _config(Path("."), category, settings, "cpu")
    try:
        images = len(open_dataset(resolve_layout(cfg), "train", input_size=8))
    except (FileNotFoundError, ValueError):
        images = 0
    epochs = resolve(cfg).epochs or 1
    return float(images * epochs)


def _worker(index: int, categories: list[str], out: str, settings: dict, device: str, progress: bool,
            log_path: str, messages, threads: int) -> None:
    """One worker process: its categories in turn, output to ``log_path``; reports to the parent through
    ``messages`` as ``(kind, worker, category, text)`` with kind ``start``, ``done`` or ``error``. It uses the
    parent's number of torch threads (reduction order, hence the last bits of every number, depends on it)."""
    torch.set_num_threads(threads)
    with open(log_path, "a", buffering=1) as f:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(f.fileno(), 1)  # C-level output (warnings of native libraries) goes to the log as well
        os.dup2(f.fileno(), 2)
        log = lambda text: print(text, flush=True)  # noqa: E731
        log(f"worker {index} on {device}: {', '.join(categories)}")
        for category in categories:
            messages.put(("start", index, category, ""))
            try:
                line = _run_category(Path(out), category, settings, device, progress, log)
            except BaseException as e:  # noqa: BLE001 - reported to the parent, traceback in the log
                traceback.print_exc()
                sys.stderr.flush()
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                messages.put(("error", index, category, f"{type(e).__name__}: {first}" if first else type(e).__name__))
                return
            log(line)
            messages.put(("done", index, category, line))


def _run_workers(out: Path, shares: list[list[str]], devices: list[str], settings: dict, progress: bool,
                 log) -> tuple[set[str], list[tuple[str, int, str, Path]]]:
    """Start one spawned process per share and wait for all; returns the finished categories and the failures
    as ``(category, worker, one-line reason, log file)``."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    messages = ctx.Queue()
    out.mkdir(parents=True, exist_ok=True)
    logs = [out / f"worker{i}.log" for i in range(len(shares))]
    procs = []
    for i, (share, dev) in enumerate(zip(shares, devices)):
        log(f"worker {i} on {dev}: {', '.join(share)} (log: {logs[i]})")
        procs.append(ctx.Process(target=_worker, name=f"reproduce-worker{i}", daemon=True,
                                 args=(i, share, str(out), settings, dev, progress, str(logs[i]), messages,
                                       torch.get_num_threads())))
    current: dict[int, str] = {}
    finished: set[str] = set()
    failures: list[tuple[str, int, str, Path]] = []

    def handle(message: tuple) -> None:
        kind, i, category, text = message
        if kind == "start":
            current[i] = category
            return
        current.pop(i, None)
        if kind == "done":
            finished.add(category)
            log(text)
        else:
            failures.append((category, i, text, logs[i]))

    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            try:
                handle(messages.get(timeout=1.0))
            except queue.Empty:
                pass
        while True:  # what the workers sent just before they exited
            try:
                handle(messages.get(timeout=0.2))
            except queue.Empty:
                break
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            if p.is_alive():
                p.terminate()
            p.join()
    reported = {f[1] for f in failures}
    for i, p in enumerate(procs):  # killed or crashed without a word (e.g. out of memory)
        if p.pid is not None and p.exitcode != 0 and i not in reported:
            category = current.get(i) or next(c for c in shares[i] if c not in finished)
            failures.append((category, i, f"the process exited with code {p.exitcode}", logs[i]))
    return finished, failures


def _failure_message(failures: list[tuple[str, int, str, Path]], categories: Sequence[str]) -> str:
    """One line: the first failed category (in the caller's order), its worker, reason and log file."""
    failures = sorted(failures, key=lambda f: categories.index(f[0]))
    category, i, reason, log_file = failures[0]
    message = f"category {category!r} failed in worker {i} ({reason}); see {log_file}"
    if len(failures) > 1:
        others = ", ".join(f"{c!r} (worker{w}.log)" for c, w, _, _ in failures[1:])
        message += f"; also failed: {others}"
    return message + "; finished categories are kept, run again to resume"


def _write(out: Path, rows: Sequence[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    (out / "results.md").write_text(results_table(rows) + "\n")
