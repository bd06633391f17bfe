"""Training loop of every method: cached features, the method's loss and optimiser, resumable checkpoints.

What differs between U-Flow, MSFlow and SANFlow (stages, loss, learning-rate schedule, whether features can
be cached) comes from the method (:mod:`uflow_lib.methods`); the loop, seeding, checkpoints and stopping are shared.

``train(cfg)`` writes ``cfg.out/last.pt`` every ``checkpoint_every`` epochs (default: every epoch), also when
``checkpoint_minutes`` have passed since the last write, at the end, and when ``max_minutes`` stops the run cleanly
at an epoch boundary (and ``best_on_test.pt`` when ``eval_every`` > 0: the test set is opened before the
first epoch, so an unreadable one fails at once; its features are extracted once and replayed; the epoch is
selected on test pixel AUROC, or on image AUROC when the test set has no masks). Run it again with the same
``out`` and it resumes from the last write. The shuffling of epoch ``e`` is seeded by ``seed + e`` (SANFlow's
synthetic anomalies of batch ``b`` by ``(seed, e, b)``) and learning-rate schedules are functions of the step, so
a resumed run continues exactly as an uninterrupted one would (``tests/test_training.py`` checks this;
``tests/test_kill_resume.py`` after a ``kill -9``).

Before any work (backbone, data), ``train`` checks the settings, the device, the output and cache folders and,
when ``last.pt`` exists, that it is readable and was made by the same run: same architecture, pretrained flag and
weights file (its SHA-256 is stored in the checkpoint); another data root or category only warns
(:mod:`uflow_lib.validation`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import AnomalyDataset
from .evaluation import evaluate_model, open_test_set
from .feature_cache import ReplayExtractor, cached_features
from .layouts import open_dataset, resolve_layout
from .methods import FlowMethod, architecture, build_extractor_for, build_model, get_method, resolve
from .runtime import pick_device, seed_everything
from .validation import check_out_dir, check_same_run, check_train_settings, data_fingerprint, sha256_of

__all__ = ["train", "TrainResult"]


@dataclass
class TrainResult:
    checkpoint: Path
    epochs_done: int
    finished: bool
    history: list[dict] = field(default_factory=list)
    best_on_test: dict | None = None


@dataclass
class _Run:
    """Everything one training run holds: settings, modules, the training data, and where it stands."""

    cfg: TrainConfig
    method: FlowMethod
    device: torch.device
    extractor: torch.nn.Module
    model: torch.nn.Module
    dataset: AnomalyDataset
    #: cached prepared features (list of (N, C_s, h_s, w_s)), or None for methods that augment images
    features: list[torch.Tensor] | None
    #: decoded training images (N, 3, S, S) for methods that augment them, else None
    images: torch.Tensor | None
    optimizer: torch.optim.Optimizer | None = None
    #: the test split (opened before the first epoch when ``eval_every`` > 0, else None)
    test_set: AnomalyDataset | None = None
    #: the extractor as the test evaluations see it (features of the test set computed once, then replayed)
    test_extractor: ReplayExtractor | None = None
    start_epoch: int = 0
    #: epoch that ``last.pt`` holds for this run (None: not written yet)
    saved_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    #: seconds :meth:`~uflow_lib.methods.base.FlowMethod.fit` took (the whole training of a baseline)
    fit_seconds: float = 0.0
    #: :func:`~uflow_lib.validation.data_fingerprint` of the training images, stored in every checkpoint
    fingerprint: str = ""


def _batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into batches (the last may be smaller)."""
    g = torch.Generator().manual_seed(seed)
    return list(torch.randperm(n, generator=g).split(batch_size))


def _completed(last: Path, ckpt: dict | None, cfg: TrainConfig) -> TrainResult | None:
    """The result of a finished run of the same architecture (``ckpt``, read from ``last``), or None if there is
    work left."""
    if ckpt is None:
        return None
    if architecture(TrainConfig.from_dict(ckpt["config"])) != architecture(cfg) or ckpt["epoch"] < cfg.epochs:
        return None
    return TrainResult(last, ckpt["epoch"], True, ckpt["history"], ckpt.get("best_on_test"))


def _check_before_work(cfg: TrainConfig, last: Path) -> tuple[dict | None, str | None]:
    """Every check that needs no backbone: settings, device, output and cache folders, and, when ``last`` exists,
    that it is readable and belongs to this run. Returns ``(last.pt's dict or None, SHA-256 of the weights file
    or None)``."""
    check_train_settings(cfg)
    pick_device(cfg.device)
    check_out_dir(cfg.out, "--out")
    if cfg.cache_dir is not None:
        check_out_dir(cfg.cache_dir, "--cache-dir")
    sha = sha256_of(cfg.weights) if cfg.weights is not None else None
    if not last.exists():
        return None, sha
    ckpt = load_checkpoint(last, training=True)

    def fingerprint() -> str:  # of this run's training images, compared with the checkpoint's if the paths differ
        return data_fingerprint(open_dataset(cfg, "train", input_size=cfg.input_size).paths)

    for message in check_same_run(ckpt, cfg, sha, last, fingerprint):
        warnings.warn(message, stacklevel=3)
    return ckpt, sha


def _start(cfg: TrainConfig, progress: bool) -> _Run:
    """Build the extractor and the model, and load the training data once (features cached where possible)."""
    method, device = get_method(cfg.method), pick_device(cfg.device)
    extractor = build_extractor_for(cfg).to(device)
    dataset = open_dataset(cfg, "train", input_size=cfg.input_size)
    model = build_model(cfg, extractor).to(device)
    features = images = None
    if not method.cacheable:  # decode and resize every image once; the method augments them at every step
        images = torch.stack([dataset[i]["image"] for i in tqdm(range(len(dataset)), desc="load images",
                                                                disable=not progress, leave=False)])
    else:
        key = dict(backbone=cfg.backbone, weights=cfg.weights, pretrained=cfg.pretrained, size=cfg.input_size,
                   stages=method.stages(cfg), **({} if cfg.cait_blocks is None else
                                                                dict(cait_blocks=list(cfg.cait_blocks))))
        raw = cached_features(extractor, dataset, cfg.cache_dir, key, device=device, progress=progress,
                              desc="train features")
        features = method.prepare(raw)
    t_fit = time.monotonic()
    if features is not None:
        method.fit(model, features, progress=progress)
    run = _Run(cfg, method, device, extractor, model, dataset, features, images)
    run.fit_seconds = time.monotonic() - t_fit
    run.fingerprint = data_fingerprint(dataset.paths)  # once: the files do not change during the run
    run.optimizer = method.optimizer(cfg, model)
    return run


def _resume(run: _Run, last: Path, ckpt: dict | None, log) -> None:
    """Continue from ``ckpt`` (read from ``last`` and checked to be this run's by :func:`_check_before_work`)."""
    if ckpt is None:
        return
    run.model.load_state_dict(ckpt["model"])
    if run.optimizer is not None:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    run.start_epoch, run.history, run.best = ckpt["epoch"], ckpt["history"], ckpt.get("best_on_test")
    run.saved_epoch = run.start_epoch
    log(f"resuming from {last} after epoch {run.start_epoch}")


def _batch(run: _Run, idx: torch.Tensor, epoch: int, b: int) -> dict:
    """The method's input for the training images ``idx`` (batch ``b`` of ``epoch``)."""
    if run.features is None:
        return dict(images=run.images[idx].to(run.device), rng=np.random.default_rng([run.cfg.seed, epoch, b]))
    if run.cfg.recompute_features:
        images = torch.stack([run.dataset[int(i)]["image"] for i in idx]).to(run.device)
        return dict(features=run.method.prepare(run.extractor(images)))
    return dict(features=[f[idx].to(run.device, non_blocking=True) for f in run.features])


def _batch_loss(run: _Run, idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
    """Scalar training loss of the method on the training images ``idx`` (batch ``b`` of ``epoch``), on the device."""
    return run.method.loss(run.model, run.extractor, _batch(run, idx, epoch, b))


def _train_epoch(run: _Run, epoch: int, last: Path) -> dict:
    """One pass over the training set; returns the epoch's record (mean loss, per dimension, seconds)."""
    cfg, method, model, optimizer = run.cfg, run.method, run.model, run.optimizer
    n = len(run.dataset)
    n_batches = math.ceil(n / cfg.batch_size)
    model.train()
    t_epoch, total, count = time.monotonic(), 0.0, 0
    for b, idx in enumerate(_batches(n, cfg.batch_size, cfg.seed + epoch)):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * method.lr_factor(epoch + b / n_batches, cfg.epochs)
        loss = _batch_loss(run, idx, epoch, b)
        if not torch.isfinite(loss):
            kept = ("no checkpoint was written before it diverged" if run.saved_epoch is None
                    else f"the last good checkpoint is {last} (it holds epoch {run.saved_epoch})")
            raise FloatingPointError(
                f"the loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}: training diverged. "
                f"Try a smaller learning rate (--lr, now {cfg.lr:g}); {kept}.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return dict(epoch=epoch + 1, loss=total / count, loss_per_dim=total / count / method.dims(model),
                seconds=time.monotonic() - t_epoch)


def _save_fitted(run: _Run, last: Path, weights_sha256: str | None) -> TrainResult:
    """Write ``last.pt`` of a fitted baseline (one "epoch": the fit, no loss, no optimizer state)."""
    record = dict(epoch=1, loss=None, loss_per_dim=None, seconds=run.fit_seconds)
    save_checkpoint(last, config=run.cfg.to_dict(), model=run.model.state_dict(), optimizer={}, epoch=1,
                    history=[record], best_on_test=None, weights_sha256=weights_sha256,
                    data_fingerprint=run.fingerprint)
    return TrainResult(last, 1, True, [record], None)


def _track_best_on_test(run: _Run, record: dict, out: Path, log) -> None:
    """Evaluate on the test set, add the metrics to ``record``, keep ``best_on_test.pt`` (labelled as such).

    The epoch is selected on test pixel AUROC, or on image AUROC when the test set has no masks (``log`` hears
    that once, at the first evaluation).
    """
    first = run.test_extractor is None
    if first:
        run.test_extractor = ReplayExtractor(run.extractor)
    metrics = evaluate_model(run.model, run.test_extractor.rewind(), run.cfg, device=run.device, progress=False,
                             nfa=False, log=log if first else None, dataset=run.test_set)
    scores = {k: v for k, v in metrics.items() if v is None or isinstance(v, float)}
    record.update({f"test_{k}": v for k, v in scores.items()})
    key = "pixel_auroc" if metrics["pixel_auroc"] is not None else "image_auroc"
    if run.best is None or metrics[key] > run.best[key]:
        run.best = dict(epoch=record["epoch"], **scores)
        save_checkpoint(out / "best_on_test.pt", config=run.cfg.to_dict(), model=run.model.state_dict(),
                        epoch=record["epoch"], selected_on=f"test {key.replace('_auroc', ' AUROC')} "
                                                           "(NOT the paper's protocol)")


def _checkpoint_due(cfg: TrainConfig, epochs_done: int, seconds_since_save: float) -> bool:
    """Whether ``last.pt`` is written after epoch ``epochs_done``: every ``checkpoint_every`` epochs, the last
    epoch, or ``checkpoint_minutes`` after the previous write."""
    return (epochs_done % cfg.checkpoint_every == 0 or epochs_done >= cfg.epochs
            or (cfg.checkpoint_minutes is not None and seconds_since_save >= 60 * cfg.checkpoint_minutes))


def train(cfg: TrainConfig, progress: bool = True, log=print) -> TrainResult:
    """Train (or resume) ``cfg.method`` as ``cfg`` says. See module docstring."""
    cfg = resolve(resolve_layout(cfg))
    out = Path(cfg.out)
    last = out / "last.pt"
    ckpt, weights_sha256 = _check_before_work(cfg, last)
    done = _completed(last, ckpt, cfg)
    if done is not None:  # nothing left to train: no backbone, no features
        return done
    # a test set that cannot be read (missing folder or mask, a mask for only some defect types) fails now, not
    # after the first epoch's training
    test_set = open_test_set(cfg) if cfg.eval_every else None
    seed_everything(cfg.seed)
    if pick_device(cfg.device).type == "cpu" and cfg.backbone == "mcait":
        log("note: MS-CaiT on a CPU takes ~10 s per image; use a GPU (Colab) or --backbone mobilenetv2")
    run = _start(cfg, progress)
    if not run.method.trainable:  # a baseline: fitting was the training
        return _save_fitted(run, last, weights_sha256)
    run.test_set = test_set
    _resume(run, last, ckpt, log)
    del ckpt
    t0 = t_saved = time.monotonic()
    bar = tqdm(range(run.start_epoch, cfg.epochs), desc=f"train {cfg.category}", disable=not progress,
               initial=run.start_epoch, total=cfg.epochs)
    for epoch in bar:
        record = _train_epoch(run, epoch, last)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            _track_best_on_test(run, record, out, log)
        run.history.append(record)
        bar.set_postfix(loss=f"{record['loss_per_dim']:.4f}/dim")
        stop = (cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes
                and epoch + 1 < cfg.epochs)
        if _checkpoint_due(cfg, epoch + 1, time.monotonic() - t_saved) or stop:
            save_checkpoint(last, config=cfg.to_dict(), model=run.model.state_dict(),
                            optimizer=run.optimizer.state_dict(), epoch=epoch + 1, history=run.history,
                            best_on_test=run.best, weights_sha256=weights_sha256,
                            data_fingerprint=run.fingerprint)
            t_saved, run.saved_epoch = time.monotonic(), epoch + 1
        if stop:
            log(f"stopped after epoch {epoch + 1}/{cfg.epochs}: --max-minutes {cfg.max_minutes:g} reached; "
                f"run the same command again to resume")
            return TrainResult(last, epoch + 1, False, run.history, run.best)
    bar.close()
    done_epochs = run.history[-1]["epoch"] if run.history else run.start_epoch
    return TrainResult(last, done_epochs, done_epochs >= cfg.epochs, run.history, run.best)
