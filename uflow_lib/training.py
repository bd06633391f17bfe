"""Training loop of every method: cached features, the method's loss and optimiser, a resumable checkpoint every epoch.

What differs between U-Flow, MSFlow and SANFlow (stages, loss, learning-rate schedule, whether features can
be cached) comes from :mod:`uflow_lib.methods`; the loop, seeding, checkpoints and stopping are shared.

``train(cfg)`` writes ``cfg.out/last.pt`` after every epoch (and ``best_on_test.pt`` when ``eval_every`` > 0).
Run it again with the same ``out`` and it resumes where it stopped; ``max_minutes`` stops cleanly at an epoch
boundary. The shuffling of epoch ``e`` is seeded by ``seed + e`` (SANFlow's synthetic anomalies of batch ``b`` by
``(seed, e, b)``) and learning-rate schedules are functions of the step, so a resumed run continues exactly as
an uninterrupted one would (``tests/test_training.py`` checks this).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import build_extractor_for, build_model, load_checkpoint, pick_device, save_checkpoint, seed_everything
from .config import TrainConfig
from .data import MVTecDataset
from .feature_cache import cached_features
from .methods import get_method

__all__ = ["train", "TrainResult"]


@dataclass
class TrainResult:
    checkpoint: Path
    epochs_done: int
    finished: bool
    history: list[dict] = field(default_factory=list)
    best_on_test: dict | None = None


def _batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into batches (the last may be smaller)."""
    g = torch.Generator().manual_seed(seed)
    return list(torch.randperm(n, generator=g).split(batch_size))


def _completed(last: Path, cfg: TrainConfig) -> TrainResult | None:
    """The result of a finished run of the same architecture in ``last``, or None if there is work left."""
    if not last.is_file():
        return None
    ckpt = load_checkpoint(last)
    if TrainConfig.from_dict(ckpt["config"]).architecture() != cfg.architecture() or ckpt["epoch"] < cfg.epochs:
        return None
    return TrainResult(last, ckpt["epoch"], True, ckpt["history"], ckpt.get("best_on_test"))


def train(cfg: TrainConfig, progress: bool = True, log=print) -> TrainResult:
    """Train (or resume) ``cfg.method`` as ``cfg`` says. See module docstring."""
    cfg = cfg.resolved()
    out = Path(cfg.out)
    last = out / "last.pt"
    done = _completed(last, cfg)
    if done is not None:  # nothing left to train: no backbone, no features
        return done
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if device.type == "cpu" and cfg.backbone == "mcait":
        log("note: MS-CaiT on a CPU takes ~10 s per image; use a GPU (Colab) or --backbone mobilenetv2")

    method = get_method(cfg.method)
    extractor = build_extractor_for(cfg).to(device)
    dataset = MVTecDataset(cfg.data, cfg.category, "train", input_size=cfg.input_size)
    model = build_model(cfg, extractor).to(device)
    features = images_all = None
    if not method.cacheable:  # decode and resize every image once; the method augments them at every step
        images_all = torch.stack([dataset[i]["image"] for i in tqdm(range(len(dataset)), desc="load images",
                                                                   disable=not progress, leave=False)])
    else:
        key = dict(backbone=cfg.backbone, weights=cfg.weights, pretrained=cfg.pretrained, size=cfg.input_size,
                   stages=method.out_indices(cfg.backbone))
        raw = cached_features(extractor, dataset, cfg.cache_dir, key, device=device, progress=progress,
                              desc="train features")
        features = method.prepare(raw)
        method.fit(model, features)
    optimizer = method.optimizer(cfg, model)

    start_epoch, history, best = 0, [], None
    if last.is_file():
        ckpt = load_checkpoint(last)
        saved = TrainConfig.from_dict(ckpt["config"])
        if saved.architecture() != cfg.architecture():
            raise ValueError(
                f"{last} was trained with {saved.architecture()}, but this run asks for {cfg.architecture()}; "
                f"use another --out folder, or delete {last} to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt.get("best_on_test")
        log(f"resuming from {last} after epoch {start_epoch}")

    n = len(dataset)
    n_batches = math.ceil(n / cfg.batch_size)
    t0 = time.monotonic()
    epoch = start_epoch
    bar = tqdm(range(start_epoch, cfg.epochs), desc=f"train {cfg.category}", disable=not progress,
               initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        model.train()
        t_epoch, total, count = time.monotonic(), 0.0, 0
        for b, idx in enumerate(_batches(n, cfg.batch_size, cfg.seed + epoch)):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * method.lr_factor(epoch + b / n_batches, cfg.epochs)
            if features is None:
                batch = dict(images=images_all[idx].to(device), rng=np.random.default_rng([cfg.seed, epoch, b]))
            elif cfg.recompute_features:
                images = torch.stack([dataset[int(i)]["image"] for i in idx]).to(device)
                batch = dict(features=method.prepare(extractor(images)))
            else:
                batch = dict(features=[f[idx].to(device, non_blocking=True) for f in features])
            loss = method.loss(model, extractor, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}: training diverged. "
                    f"Try a smaller learning rate (--lr, now {cfg.lr:g}); the last good checkpoint is {last} "
                    f"(it holds epoch {epoch})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if method.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        dims = method.dims(model)
        record = dict(epoch=epoch + 1, loss=total / count, loss_per_dim=total / count / dims,
                      seconds=time.monotonic() - t_epoch)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            from .evaluation import evaluate_model

            metrics = evaluate_model(model, extractor, cfg, device=device, progress=False, nfa=False)
            record.update({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            if best is None or metrics["pixel_auroc"] > best["pixel_auroc"]:
                best = dict(epoch=epoch + 1, **{k: v for k, v in metrics.items() if isinstance(v, float)})
                save_checkpoint(out / "best_on_test.pt", config=cfg.to_dict(), model=model.state_dict(),
                                epoch=epoch + 1, selected_on="test pixel AUROC (NOT the paper's protocol)")
        history.append(record)
        bar.set_postfix(loss=f"{record['loss_per_dim']:.4f}/dim")
        save_checkpoint(last, config=cfg.to_dict(), model=model.state_dict(), optimizer=optimizer.state_dict(),
                        epoch=epoch + 1, history=history, best_on_test=best)
        if cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes and epoch + 1 < cfg.epochs:
            log(f"stopped after epoch {epoch + 1}/{cfg.epochs}: --max-minutes {cfg.max_minutes:g} reached; "
                f"run the same command again to resume")
            return TrainResult(last, epoch + 1, False, history, best)
    bar.close()
    done = history[-1]["epoch"] if history else start_epoch
    return TrainResult(last, done, done >= cfg.epochs, history, best)
