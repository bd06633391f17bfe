"""One prepared check of the library on a GPU: five timed sections, each recorded even when another fails.

Runs from the working tree alone (no ``../shared``): random backbone weights everywhere, generated data only.

(a) every flow of ``uflow_lib.methods.FLOWS``: 2 epochs on the generated dataset on the GPU (MobileNetV2, random
    weights, the CPU recipes' 256 input), then the same checkpoint evaluated on the GPU and on the CPU, and the
    largest difference between the two sets of metrics (a method whose training fails on the GPU is recorded as
    failed, then trained on the CPU so that its GPU evaluation is still compared);
(b) MS-CaiT extraction at batch 8, 448×448: images/s and peak memory in fp32, TF32 and bf16 autocast, and each
    one's feature drift from fp32 per scale;
(c) U-Flow training at MS-CaiT shapes (768@28² + 384@14²), batch 23, random features: ms per image with TF32 off
    and on, features already on the GPU or copied per batch from the CPU (pinned, or as the training loop does);
(d) saving ``last.pt`` as the training loop does (U-Flow at MS-CaiT shapes with its Adam state): seconds and MB;
(e) one 83-image evaluation (generated test set at 900², MS-CaiT + U-Flow at MS-CaiT shapes) split into decode,
    extraction, flow, scoring, NFA and metrics, and the library's ``predict_maps`` end to end.

Every section is timed with ``torch.cuda.synchronize`` after a warm-up, and guarded: an exception is recorded as
its one-line error and the next section runs. A section starts only while less than ``--budget-minutes`` − 0.5
minutes have passed (7 of the default 7.5); later ones are recorded as skipped. The results are rewritten after
every section, so a run stopped from outside keeps what it measured.

``--quick`` shrinks everything to test this script on a CPU in well under a minute: a few generated images at
128, one-step flows, fewer channels in (c) and (d), and in (b) and (e) a MobileNetV2 at 128 in place of MS-CaiT
(whose 448 input is too slow on a CPU); the outputs say so.

    python benchmarks/gpu_check.py                          # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_check   # a test of this script

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (default ``--out benchmarks/results``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, RESULTS

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

try:
    import FrEIA  # noqa: E402, F401
except ModuleNotFoundError:  # the GPU machines' image has torch and timm but not FrEIA (pure Python)
    sys.exit("FrEIA is not importable: put a copy of its package folder on PYTHONPATH (benchmarks/README.md)")

from uflow_lib.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from uflow_lib.config import TrainConfig  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.evaluation import (EVAL_SIZE, compute_metrics, default_nfa_scales, evaluate_checkpoint,  # noqa: E402
                                  predict_maps)
from uflow_lib.features import FeatureExtractor, build_extractor  # noqa: E402
from uflow_lib.methods import FLOWS, build_extractor_for, ci_config, get_method  # noqa: E402
from uflow_lib.methods.uflow import UFlow, anomaly_score_map  # noqa: E402
from uflow_lib.nfa import tree_nfa  # noqa: E402
from uflow_lib.runtime import seed_everything  # noqa: E402
from uflow_lib.scoring import image_scores, mean_z2  # noqa: E402
from uflow_lib.synthetic import make_dataset  # noqa: E402
from uflow_lib.training import train  # noqa: E402

#: Section keys in run order, with the title the Markdown table shows.
SECTIONS: dict[str, str] = {
    "a_methods": "(a) each method: 2 epochs on the device, evaluated there and on the CPU",
    "b_extraction": "(b) MS-CaiT extraction: fp32, TF32, bf16 autocast",
    "c_uflow_training": "(c) U-Flow training at MS-CaiT shapes",
    "d_checkpoint": "(d) saving last.pt (U-Flow at MS-CaiT shapes + Adam state)",
    "e_evaluation": "(e) one evaluation, split by stage",
}
RESERVE_MINUTES = 0.5  # no section starts in the last half minute of the budget
#: CaiT's random layer-scale init (1e-6) makes every block almost the identity; 0.1 lets each block contribute,
#: so the feature drift of (b) measures the blocks and not just the patch embedding
LAYER_SCALE = 0.1
MS_CAIT_CHANNELS, MS_CAIT_SIDES = [768, 384], [28, 14]
#: Metrics on a 0–1 scale, whose largest device-vs-CPU difference (a) reports (mean z², thresholds: relative)
BOUNDED_METRICS = ("pixel_auroc", "image_auroc", "aupro", "aupro_pixel_map", "miou_auto", "miou_oracle",
                   "miou_oracle_likelihood")


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the real sizes, or tiny ones (``--quick``) that test the script on a CPU."""

    data: dict  # make_dataset arguments of (a)
    method_overrides: dict  # TrainConfig overrides of (a)
    backbone: str  # extractor of (b) and (e): "mcait", or a small CNN in quick mode
    input_size: int  # its input side
    cait_blocks: tuple[int, int]  # MS-CaiT blocks at 448 and 224 (paper: 41, 21)
    extract_batch: int
    extract_iters: tuple[int, int]  # (warm-up, timed) batches of (b)
    flow_channels: list[int]  # U-Flow input channels of (c), (d)
    flow_steps: int
    train_batch: int
    train_batches: int  # distinct batches of random features held in memory
    train_steps: tuple[int, int]  # (warm-up, timed) steps of (c)
    save_repeats: int
    eval_counts: tuple[int, int]  # (test/good, images per defect) of (e): 19 + 4 × 16 = 83
    eval_source_size: int  # side of the PNG files (MVTec bottle: 900)
    eval_batch: int  # predict_maps' default


FULL = Sizes(data={}, method_overrides={}, backbone="mcait", input_size=448, cait_blocks=(41, 21),
             extract_batch=8, extract_iters=(2, 5), flow_channels=MS_CAIT_CHANNELS, flow_steps=4, train_batch=23,
             train_batches=4, train_steps=(3, 10), save_repeats=3, eval_counts=(19, 16), eval_source_size=900,
             eval_batch=5)
QUICK = Sizes(data=dict(image_size=128, n_train=4, n_test_good=1, n_test_defect=1),
              method_overrides=dict(input_size=128, batch_size=4, flow_steps=1, variance_size=32),
              backbone="mobilenetv2", input_size=128, cait_blocks=(1, 1), extract_batch=2, extract_iters=(1, 2),
              flow_channels=[48, 24], flow_steps=1, train_batch=2, train_batches=2, train_steps=(1, 2),
              save_repeats=1, eval_counts=(1, 1), eval_source_size=128, eval_batch=5)


@dataclass
class Context:
    """What the sections share: the device, the sizes, a scratch folder, the clock and built modules."""

    device: torch.device
    quick: bool
    sizes: Sizes
    tmp: Path
    start: float
    budget_s: float
    #: torch's TF32 settings at the start (matmul, cuDNN), restored after every section
    tf32_default: tuple[bool, bool] = (False, True)
    cache: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        """Whether the sections run on a GPU."""
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        """Seconds since the start of the run."""
        return time.monotonic() - self.start

    def over_budget(self) -> bool:
        """Whether no new piece of work may start (less than the reserve left of the budget)."""
        return self.elapsed() > self.budget_s - 60 * RESERVE_MINUTES


def log(ctx: Context, msg: str) -> None:
    """A progress line with the seconds since the start."""
    print(f"[{ctx.elapsed():7.1f} s] {msg}", flush=True)


def sync(ctx: Context) -> None:
    """Wait for the GPU (no-op on the CPU)."""
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)


def timed(ctx: Context, fn: Callable[[], object]) -> tuple[object, float]:
    """``(fn(), seconds)`` with the device synchronised before and after."""
    sync(ctx)
    t0 = time.perf_counter()
    out = fn()
    sync(ctx)
    return out, time.perf_counter() - t0


def reset_peak(ctx: Context) -> None:
    """Start a new peak-memory window (no-op on the CPU)."""
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)


def peak_mib(ctx: Context) -> float | None:
    """Peak memory allocated by torch since the last :func:`reset_peak`, MiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.cuda else None


def set_tf32(on: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions together."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def tf32_flags() -> dict[str, bool]:
    """The TF32 settings now in force."""
    return dict(matmul=bool(torch.backends.cuda.matmul.allow_tf32), cudnn=bool(torch.backends.cudnn.allow_tf32))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def extractor(ctx: Context) -> FeatureExtractor:
    """The extractor of (b) and (e) with random weights on the device, built once: MS-CaiT (layer scales set to
    :data:`LAYER_SCALE`), or in quick mode the small CNN."""
    if "extractor" not in ctx.cache:
        torch.manual_seed(0)
        if ctx.sizes.backbone == "mcait":
            ext = build_extractor("mcait", pretrained=False, cait_blocks=ctx.sizes.cait_blocks)
            with torch.no_grad():
                for name, p in ext.named_parameters():
                    if name.split(".")[-1] in ("gamma_1", "gamma_2"):
                        p.fill_(LAYER_SCALE)
        else:
            ext = build_extractor(ctx.sizes.backbone, pretrained=False)
        ctx.cache["extractor"] = ext.to(ctx.device)
    return ctx.cache["extractor"]


def extractor_note(ctx: Context) -> list[str]:
    """What (b) and (e) ran instead of MS-CaiT in quick mode."""
    if ctx.sizes.backbone == "mcait":
        return [f"MS-CaiT, random weights, layer scales set to {LAYER_SCALE}"]
    return [f"quick: MS-CaiT replaced by {ctx.sizes.backbone} (random weights) at {ctx.sizes.input_size}² "
            f"(MS-CaiT at 448 is too slow for a CPU test)"]


def uflow_at_ms_cait_shapes(ctx: Context) -> UFlow:
    """A fresh U-Flow for MS-CaiT's feature shapes (quick: fewer channels), identity norm as MS-CaiT uses."""
    torch.manual_seed(0)
    return UFlow(ctx.sizes.flow_channels, MS_CAIT_SIDES, ctx.sizes.flow_steps, "identity").to(ctx.device)


def _trainable(model: torch.nn.Module) -> int:
    """Trainable parameters (FrEIA's fixed permutations are parameters without gradient: not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_features(n: int, channels: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """Random N(0, 1) features at MS-CaiT sides, list of ``(n, C_s, h_s, w_s)`` on the CPU."""
    return [torch.randn(n, c, s, s, generator=generator) for c, s in zip(channels, MS_CAIT_SIDES)]


def attempt(errors: list[str], label: str, fn: Callable[[], dict]) -> dict:
    """``fn()``, or ``{"error": ...}`` when it raises (the one-line error also goes to ``errors``)."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        errors.append(f"{label}: {one_line(exc)}")
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return dict(error=one_line(exc))


# ------------------------------------------------------------------------------------------------- sections


def _train_method(ctx: Context, name: str, root: Path, row: dict) -> TrainConfig:
    """Train ``name`` 2 epochs on the device; if that fails, record why and train on the CPU instead, so that the
    evaluation on the device is still compared. Returns the config of the run that finished."""
    kwargs = dict(method=name, epochs=2, **ctx.sizes.method_overrides)
    cfg = ci_config(root, ctx.tmp / f"run_{name}", device=str(ctx.device), **kwargs)
    try:
        res, row["train_s"] = timed(ctx, lambda: train(cfg, progress=False, log=lambda *_: None))
        row["trained_on"] = str(ctx.device)
    except Exception as exc:
        if not ctx.cuda:
            raise
        traceback.print_exc()
        row["train_error"] = one_line(exc)
        log(ctx, f"  (a) {name}: training on {ctx.device} failed ({row['train_error']}); training on cpu instead")
        cfg = ci_config(root, ctx.tmp / f"run_{name}_cpu", device="cpu", **kwargs)
        res, row["train_s"] = timed(ctx, lambda: train(cfg, progress=False, log=lambda *_: None))
        row["trained_on"] = "cpu"
    row["epoch_s"] = [h["seconds"] for h in res.history]
    row["loss_per_dim"] = res.history[-1]["loss_per_dim"]
    row["checkpoint"] = str(res.checkpoint)
    return cfg


def section_methods(ctx: Context) -> dict:
    """(a) Train each method 2 epochs on the device, evaluate the same checkpoint there and on the CPU."""
    root = make_dataset(ctx.tmp / "generated", seed=0, **ctx.sizes.data)
    warm = build_extractor_for(ci_config(root, "", method="uflow", **ctx.sizes.method_overrides)).to(ctx.device)
    size = ctx.sizes.method_overrides.get("input_size", 256)
    timed(ctx, lambda: warm(torch.rand(2, 3, size, size, device=ctx.device)))  # kernels loaded before timing
    rows: dict[str, dict] = {}
    for name in FLOWS:
        if ctx.over_budget():
            rows[name] = dict(status="skipped", error="time budget reached before this method")
            continue
        log(ctx, f"  (a) {name}: train 2 epochs on {ctx.device}")
        row: dict = dict(status="ok")
        rows[name] = row
        try:
            cfg = _train_method(ctx, name, root, row)

            def evaluate(device: str) -> dict:
                seed_everything(cfg.seed)  # the random backbone is rebuilt, not saved: the training one again
                return evaluate_checkpoint(row["checkpoint"], device=device, progress=False)

            log(ctx, f"  (a) {name}: evaluate on {ctx.device}")
            on_dev, row["eval_device_s"] = timed(ctx, lambda: evaluate(str(ctx.device)))
            log(ctx, f"  (a) {name}: evaluate on cpu")
            on_cpu, row["eval_cpu_s"] = timed(ctx, lambda: evaluate("cpu"))
            keys = [k for k, v in on_dev.items() if isinstance(v, float)]
            row["metrics_device"] = {k: on_dev[k] for k in keys}
            row["metrics_cpu"] = {k: on_cpu[k] for k in keys}
            row["abs_diff"] = {k: abs(on_dev[k] - on_cpu[k]) for k in keys}
            bounded = {k: v for k, v in row["abs_diff"].items() if k in BOUNDED_METRICS and math.isfinite(v)}
            row["max_abs_diff"] = max(bounded.values()) if bounded else float("nan")
            row["max_abs_diff_metric"] = max(bounded, key=bounded.get) if bounded else None
            ref = abs(on_cpu["mean_z2_normal"])
            row["mean_z2_rel_diff"] = row["abs_diff"]["mean_z2_normal"] / ref if ref > 0 else float("nan")
            if "train_error" in row:
                row.update(status="error", error=f"training on {ctx.device}: {row['train_error']}")
        except Exception as exc:  # one method's failure must not hide the others
            traceback.print_exc()
            row.update(status="error", error=one_line(exc))
        finally:
            if ctx.cuda:
                torch.cuda.empty_cache()
    del warm
    notes = ["MobileNetV2 with random weights, each method's CPU recipe (uflow_lib.methods.ci_config), 2 epochs; "
             "torch is seeded as train() seeds it before each evaluation, so both rebuild the training backbone "
             "(random weights are not in the checkpoint)"]
    if ctx.quick:
        notes.append(f"quick: dataset {ctx.sizes.data}, overrides {ctx.sizes.method_overrides}")
    return dict(methods=rows, errors=[f"{n}: {r['error']}" for n, r in rows.items() if r["status"] != "ok"],
                notes=notes)


def _drift(ref: list[torch.Tensor], other: list[torch.Tensor]) -> list[dict]:
    """Per scale: max |Δ| / max |ref| and mean |Δ| / mean |ref|."""
    out = []
    for r, o in zip(ref, other):
        d = (o.float() - r).abs()
        out.append(dict(max_rel=float(d.max() / r.abs().max()), mean_rel=float(d.mean() / r.abs().mean())))
    return out


def section_extraction(ctx: Context) -> dict:
    """(b) MS-CaiT at 448: throughput, peak memory and drift from fp32 of TF32 and bf16 autocast."""
    ext = extractor(ctx)
    s = ctx.sizes
    side = s.input_size
    x = torch.rand(s.extract_batch, 3, side, side, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    weights_mib = torch.cuda.memory_allocated(ctx.device) / 2**20 if ctx.cuda else None
    modes = {"fp32": (False, None), "tf32": (True, None), "bf16_autocast": (False, torch.bfloat16)}
    rows: dict[str, dict] = {}
    errors: list[str] = []
    ref: list[torch.Tensor] = []  # the fp32 features

    def measure(tf32: bool, dtype: torch.dtype | None) -> dict:
        set_tf32(tf32)
        ac = torch.autocast(ctx.device.type, dtype=dtype) if dtype is not None else nullcontext()

        def run() -> list[torch.Tensor]:
            with ac:
                return ext(x)

        for _ in range(s.extract_iters[0]):
            run()
        reset_peak(ctx)
        feats, secs = timed(ctx, lambda: [run() for _ in range(s.extract_iters[1])][-1])
        feats = [f.float().cpu() for f in feats]
        if not ref:
            ref.extend(feats)
        return dict(images_per_s=s.extract_batch * s.extract_iters[1] / secs,
                    ms_per_batch=1000 * secs / s.extract_iters[1], peak_mib=peak_mib(ctx), tf32=tf32_flags(),
                    drift=_drift(ref, feats))

    for mode, (tf32, dtype) in modes.items():
        if mode != "fp32" and not ref:
            rows[mode] = dict(error="no fp32 features to compare with")
            errors.append(f"{mode}: skipped, fp32 failed")
            continue
        rows[mode] = attempt(errors, mode, lambda: measure(tf32, dtype))
    notes = extractor_note(ctx) + ["drift = max|Δ|/max|fp32| and mean|Δ|/mean|fp32| per scale"]
    if not ctx.cuda:
        notes.append("on the CPU TF32 does nothing; bf16 autocast is the CPU's")
    scales = [f"{c}@{n}²" for c, n in zip(ext.channels, ext.feature_sizes(side))]
    return dict(backbone=s.backbone, input_size=side, batch=s.extract_batch, timed_batches=s.extract_iters[1],
                weights_mib=weights_mib, scales=scales, modes=rows, errors=errors, notes=notes)


def uflow_with_adam(ctx: Context) -> tuple:
    """U-Flow's method, its config, a U-Flow at MS-CaiT shapes in training mode, and its Adam (bottle's paper
    learning rate)."""
    method = get_method("uflow")
    cfg = TrainConfig(data="", category="bottle", out="", backbone="mcait", lr=1.129e-4)
    model = uflow_at_ms_cait_shapes(ctx).train()
    return method, cfg, model, method.optimizer(cfg, model)


def section_uflow_training(ctx: Context) -> dict:
    """(c) U-Flow steps at MS-CaiT shapes on random features: TF32 off/on, features on the GPU or from the CPU."""
    s = ctx.sizes
    method, _, model, opt = uflow_with_adam(ctx)
    n = s.train_batch * s.train_batches
    cpu = random_features(n, s.flow_channels, torch.Generator().manual_seed(0))
    pinned = [f.pin_memory() for f in cpu] if ctx.cuda else cpu
    on_dev = [f.to(ctx.device) for f in cpu]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).split(s.train_batch)

    def batch_gpu(i: int) -> list[torch.Tensor]:
        sl = slice((i % s.train_batches) * s.train_batch, (i % s.train_batches + 1) * s.train_batch)
        return [f[sl] for f in on_dev]

    def batch_pinned(i: int) -> list[torch.Tensor]:
        sl = slice((i % s.train_batches) * s.train_batch, (i % s.train_batches + 1) * s.train_batch)
        return [f[sl].to(ctx.device, non_blocking=True) for f in pinned]

    def batch_loop(i: int) -> list[torch.Tensor]:  # what uflow_lib.training does: shuffled rows, unpinned
        idx = order[i % len(order)]
        return [f[idx].to(ctx.device, non_blocking=True) for f in cpu]

    variants = {"tf32 off, features on GPU": (False, batch_gpu), "tf32 on, features on GPU": (True, batch_gpu),
                "tf32 on, features on CPU, pinned": (True, batch_pinned),
                "tf32 on, features on CPU, as the training loop": (True, batch_loop)}
    if not ctx.cuda:
        variants = {k.replace("GPU", "device"): v for k, v in variants.items() if "pinned" not in k}
    rows: dict[str, dict] = {}
    errors: list[str] = []

    def measure(tf32: bool, get: Callable[[int], list[torch.Tensor]]) -> dict:
        set_tf32(tf32)
        losses: list[float] = []

        def steps(k: int, offset: int) -> None:
            for i in range(k):
                loss = method.loss(model, None, {"features": get(offset + i)})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())

        steps(s.train_steps[0], 0)
        reset_peak(ctx)
        _, secs = timed(ctx, lambda: steps(s.train_steps[1], s.train_steps[0]))
        return dict(tf32=tf32, ms_per_image=1000 * secs / (s.train_steps[1] * s.train_batch),
                    ms_per_step=1000 * secs / s.train_steps[1], peak_mib=peak_mib(ctx), last_loss=losses[-1])

    for name, (tf32, get) in variants.items():
        rows[name] = attempt(errors, name, lambda: measure(tf32, get))
    notes = ["the loop's own .item() per step is included, as in uflow_lib.training"]
    if not ctx.cuda:
        notes.append("on the CPU there is no pinned memory: the pinned variant is left out")
    if ctx.quick:
        notes.append(f"quick: channels {s.flow_channels}, {s.flow_steps} flow step(s), batch {s.train_batch}")
    return dict(channels=s.flow_channels, sides=MS_CAIT_SIDES, flow_steps=s.flow_steps, batch=s.train_batch,
                timed_steps=s.train_steps[1], parameters=_trainable(model),
                variants=rows, errors=errors, notes=notes)


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts; "?" elsewhere)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    path = path.resolve()
    best = max((m for m in mounts if path.is_relative_to(m[0])), key=lambda m: len(m[0]), default=None)
    return best[1] if best else "?"


def section_checkpoint(ctx: Context) -> dict:
    """(d) ``save_checkpoint`` of a U-Flow at MS-CaiT shapes with its Adam state, as each epoch's ``last.pt``."""
    s = ctx.sizes
    method, cfg, model, opt = uflow_with_adam(ctx)
    feats = [f.to(ctx.device) for f in random_features(2, s.flow_channels, torch.Generator().manual_seed(0))]
    loss = method.loss(model, None, {"features": feats})
    loss.backward()
    opt.step()  # the Adam moments exist from here on
    history = [dict(epoch=1, loss=loss.item(), loss_per_dim=0.0, seconds=0.0)]
    places = {"system temp": ctx.tmp / "ckpt", "repository runs/": REPO / "runs" / "gpu_check_tmp"}
    rows: dict[str, dict] = {}
    errors: list[str] = []

    def measure(folder: Path) -> dict:
        path = folder / "last.pt"
        saves, synced = [], []
        for _ in range(s.save_repeats):
            _, secs = timed(ctx, lambda: save_checkpoint(path, config=cfg.to_dict(), model=model.state_dict(),
                                                         optimizer=opt.state_dict(), epoch=1, history=history))
            saves.append(secs)
            t0 = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            synced.append(secs + time.perf_counter() - t0)
        _, load_s = timed(ctx, lambda: load_checkpoint(path))
        return dict(path=str(folder), fs=_fs_type(folder), size_mb=path.stat().st_size / 1e6, save_s=saves,
                    save_s_median=float(np.median(saves)), save_fsync_s=synced, load_s=load_s)

    for place, folder in places.items():
        had_parent = folder.parent.exists()
        try:
            rows[place] = attempt(errors, place, lambda: measure(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if not had_parent and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()
    notes = ["save: uflow_lib.checkpoint.save_checkpoint (torch.save to a temporary file, then rename) from the "
             "device, as after every epoch; save + fsync adds an fsync of the file afterwards"]
    if ctx.quick:
        notes.append(f"quick: channels {s.flow_channels}, {s.flow_steps} flow step(s): a much smaller file")
    return dict(parameters=_trainable(model), places=rows, errors=errors, notes=notes)


def _eval_dataset(ctx: Context) -> Path:
    """The generated test set (83 images with the full sizes), its PNGs resized to ``eval_source_size`` (zlib
    level 1: the noisy texture takes 0.7 s per 900² file at the default level, and decoding costs the same)."""
    good, per_defect = ctx.sizes.eval_counts
    root = make_dataset(ctx.tmp / "eval", seed=1, image_size=256 if not ctx.quick else 128, n_train=1,
                        n_test_good=good, n_test_defect=per_defect)
    side = ctx.sizes.eval_source_size

    def resize(png: Path) -> None:
        with Image.open(png) as im:
            if im.size == (side, side):
                return
            resample = Image.NEAREST if png.parts[-3] == "ground_truth" else Image.BICUBIC
            im = im.resize((side, side), resample)
        im.save(png, compress_level=1)

    pngs = [p for p in sorted((root / "texture").glob("*/*/*.png")) if p.parts[-3] != "train"]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(resize, pngs))
    return root


def section_evaluation(ctx: Context) -> dict:
    """(e) One evaluation with MS-CaiT + U-Flow at MS-CaiT shapes, timed by stage, and predict_maps end to end."""
    s = ctx.sizes
    root = _eval_dataset(ctx)
    dataset = MVTecDataset(root, "texture", "test", input_size=s.input_size, mask_size=EVAL_SIZE)
    n = len(dataset)
    ext = extractor(ctx)
    sides = ext.feature_sizes(s.input_size)
    torch.manual_seed(0)
    model = UFlow(ext.channels, sides, s.flow_steps, "identity").to(ctx.device).eval()
    scales = default_nfa_scales(s.backbone, len(sides), [z[-1] for z in model.latent_shapes])
    # torch's settings at the start, what a plain evaluation runs with
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = ctx.tf32_default
    flags = tf32_flags()

    items, decode_s = timed(ctx, lambda: [dataset[i] for i in range(n)])
    images = torch.stack([it["image"] for it in items])
    with torch.no_grad():
        model(ext(images[: s.eval_batch].to(ctx.device)))  # warm-up
    t = dict(extraction=0.0, flow=0.0, scoring=0.0, nfa=0.0)
    parts: dict[str, list] = {k: [] for k in ("score", "image_score", "mean_z2", "nfa")}
    with torch.no_grad():
        for b in range(0, n, s.eval_batch):
            x = images[b: b + s.eval_batch]
            feats, secs = timed(ctx, lambda: ext(x.to(ctx.device)))
            t["extraction"] += secs
            z, secs = timed(ctx, lambda: [v.float().cpu() for v in model(feats)[0]])
            t["flow"] += secs
            t0 = time.perf_counter()
            smap = anomaly_score_map(z, EVAL_SIZE)
            parts["score"].append(smap[:, 0].float().numpy())
            parts["image_score"].append(image_scores(smap).numpy())
            parts["mean_z2"].append(mean_z2(z).numpy())
            t["scoring"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            parts["nfa"].append(tree_nfa(z, EVAL_SIZE, bound="valid", scales=scales)[:, 0].float().numpy())
            t["nfa"] += time.perf_counter() - t0
    pred = {k: np.concatenate(v) for k, v in parts.items()}
    pred["mask"] = np.stack([it["mask"][0].numpy().astype(np.uint8) for it in items])
    pred["label"] = np.asarray([it["label"] for it in items])
    metrics, t["metrics"] = timed(ctx, lambda: compute_metrics(pred))
    stages = {"decode": decode_s, **t}

    def library() -> dict:
        p = predict_maps(model, ext, dataset, ctx.device, batch_size=s.eval_batch, nfa="tree", nfa_scales=scales,
                         progress=False)
        return compute_metrics(p)

    lib_metrics, lib_s = timed(ctx, library)
    diffs = [abs(metrics[k] - lib_metrics[k]) for k in metrics if math.isfinite(metrics[k] - lib_metrics[k])]
    notes = extractor_note(ctx) + [
        f"U-Flow with random weights for {ext.channels} at {sides}, {s.flow_steps} flow steps, identity norm",
        f"decode: MVTecDataset items ({s.eval_source_size}² PNG → {s.input_size} image + {EVAL_SIZE} mask), one "
        f"process; extraction includes the copy to the device; flow includes the copy of the latents back; "
        f"TF32 {flags} (torch's defaults); NFA: tree, valid bound, scales {scales or 'all'}"]
    if ctx.quick:
        notes.append(f"quick: {n} images")
    return dict(images=n, batch=s.eval_batch, stages_s=stages,
                stages_ms_per_image={k: 1000 * v / n for k, v in stages.items()}, total_s=sum(stages.values()),
                predict_maps_and_metrics_s=lib_s, max_abs_diff_vs_predict_maps=max(diffs) if diffs else float("nan"),
                metrics=metrics, notes=notes)


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "a_methods": section_methods, "b_extraction": section_extraction, "c_uflow_training": section_uflow_training,
    "d_checkpoint": section_checkpoint, "e_evaluation": section_evaluation,
}


# --------------------------------------------------------------------------------------------------- output


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def summary(key: str, res: dict) -> str:
    """The one-cell summary of a finished section for the overview table."""
    if key == "a_methods":
        return "; ".join((f"{n}: max abs diff {r['max_abs_diff']:.2e} ({r['max_abs_diff_metric']})"
                          if "max_abs_diff" in r else f"{n}: {r['status']}")
                         + (f" [{r['error']}]" if r.get("error") else "") for n, r in res["methods"].items())
    if key == "b_extraction":
        return "; ".join(f"{m}: error [{r['error']}]" if "error" in r else
                         f"{m}: {r['images_per_s']:.1f} img/s, peak {_fmt(r['peak_mib'], 0)} MiB"
                         for m, r in res["modes"].items())
    if key == "c_uflow_training":
        return "; ".join(f"{n}: error [{r['error']}]" if "error" in r else f"{n}: {r['ms_per_image']:.2f} ms/img"
                         for n, r in res["variants"].items())
    if key == "d_checkpoint":
        return "; ".join(f"{p}: error [{r['error']}]" if "error" in r else
                         f"{p}: {r['size_mb']:.1f} MB in {r['save_s_median']:.2f} s" for p, r in res["places"].items())
    if key == "e_evaluation":
        return (f"{res['images']} images, {res['total_s']:.1f} s: "
                + ", ".join(f"{k} {v:.2f}" for k, v in res["stages_s"].items()) + " s")
    return ""


def details(key: str, res: dict) -> list[str]:
    """The section's own Markdown table and notes."""
    lines: list[str] = []
    if key == "a_methods":
        lines += ["| method | trained on | train 2 epochs (s) | eval on device (s) | eval on CPU (s) "
                  "| pixel AUROC device / CPU | image AUROC device / CPU | max abs diff, 0–1 metrics "
                  "| mean z² relative diff |", "|---|---|---|---|---|---|---|---|---|"]
        for n, r in res["methods"].items():
            if "max_abs_diff" not in r:
                lines.append(f"| {n} | {r['status']}: {r.get('error', '')} | | | | | | | |")
                continue
            d, c = r["metrics_device"], r["metrics_cpu"]
            lines.append(f"| {n} | {r['trained_on']} | {r['train_s']:.1f} | {r['eval_device_s']:.1f} "
                         f"| {r['eval_cpu_s']:.1f} | {d['pixel_auroc']:.6f} / {c['pixel_auroc']:.6f} "
                         f"| {d['image_auroc']:.6f} / {c['image_auroc']:.6f} "
                         f"| {r['max_abs_diff']:.2e} ({r['max_abs_diff_metric']}) | {r['mean_z2_rel_diff']:.2e} |")
        lines += [f"- {e}" for e in res["errors"]]
    elif key == "b_extraction":
        lines += [f"{res['backbone']} at {res['input_size']}², batch {res['batch']}, {res['timed_batches']} timed "
                  f"batches; weights {_fmt(res['weights_mib'], 0)} MiB.", "",
                  "| mode | images/s | ms/batch | peak MiB | "
                  + " | ".join(f"drift {sc} max / mean" for sc in res["scales"]) + " |",
                  "|---|---|---|---|" + "---|" * len(res["scales"])]
        for m, r in res["modes"].items():
            if "error" in r:
                lines.append(f"| {m} | error: {r['error']} |" + " |" * (2 + len(res["scales"])))
                continue
            drift = " | ".join(f"{d['max_rel']:.2e} / {d['mean_rel']:.2e}" for d in r["drift"])
            lines.append(f"| {m} | {r['images_per_s']:.2f} | {r['ms_per_batch']:.1f} | {_fmt(r['peak_mib'], 0)} "
                         f"| {drift} |")
    elif key == "c_uflow_training":
        lines += [f"Channels {res['channels']} at {res['sides']}, {res['flow_steps']} flow steps, "
                  f"{res['parameters']:,} trainable parameters, batch {res['batch']}, "
                  f"{res['timed_steps']} timed steps.", "",
                  "| variant | ms/image | ms/step | peak MiB | last loss |", "|---|---|---|---|---|"]
        for n, r in res["variants"].items():
            if "error" in r:
                lines.append(f"| {n} | error: {r['error']} | | | |")
                continue
            lines.append(f"| {n} | {r['ms_per_image']:.2f} | {r['ms_per_step']:.1f} | {_fmt(r['peak_mib'], 0)} "
                         f"| {r['last_loss']:.4g} |")
    elif key == "d_checkpoint":
        lines += [f"{res['parameters']:,} trainable parameters.", "",
                  "| where | file system | size (MB) | save (s, each) | save + fsync (s) | load (s) |",
                  "|---|---|---|---|---|---|"]
        for p, r in res["places"].items():
            if "error" in r:
                lines.append(f"| {p} | error: {r['error']} | | | | |")
                continue
            lines.append(f"| {p} | {r['fs']} | {r['size_mb']:.1f} | {', '.join(f'{v:.3f}' for v in r['save_s'])} "
                         f"| {', '.join(f'{v:.3f}' for v in r['save_fsync_s'])} | {r['load_s']:.3f} |")
    elif key == "e_evaluation":
        lines += ["| stage | seconds | ms per image |", "|---|---|---|"]
        for k, v in res["stages_s"].items():
            lines.append(f"| {k} | {v:.3f} | {res['stages_ms_per_image'][k]:.1f} |")
        lines += [f"| total | {res['total_s']:.3f} | {1000 * res['total_s'] / res['images']:.1f} |", "",
                  f"predict_maps + compute_metrics end to end: {res['predict_maps_and_metrics_s']:.2f} s "
                  f"(max abs diff of the metrics to the split run: {res['max_abs_diff_vs_predict_maps']:.2e})."]
    return lines + [""] + [f"- {n}" for n in res.get("notes", [])]


def _safe(fn: Callable[[], object], fallback: object = None) -> object:
    """``fn()``; if it raises, the error as text (or ``[text]`` when ``fallback`` is a list): a formatting slip
    must not cost the measurements, which are in the JSON anyway."""
    try:
        return fn()
    except Exception as exc:
        text = f"(could not format: {one_line(exc)})"
        return [text] if isinstance(fallback, list) else text


def write_outputs(out: Path, meta: dict, sections: dict[str, dict]) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(dict(meta=meta, sections=sections), indent=1) + "\n")
    lines = ["# GPU check (benchmarks/gpu_check.py)", "",
             f"Device: **{meta['device_name']}** · torch {meta['torch']} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}) "
             f"· {meta['date']} · {meta['cpu_count']} CPUs · Python {meta['python']}"
             + (" · **quick mode: tiny sizes, not a measurement**" if meta["quick"] else ""), "",
             f"Command: `{meta['command']}`; total {meta['total_s']:.1f} s, budget {meta['budget_minutes']} min. "
             "Random weights and generated data only.", "",
             "| section | status | seconds | result |", "|---|---|---|---|"]
    for key, title in SECTIONS.items():
        sec = sections.get(key, dict(status="pending", seconds=None, result=None))
        cell = _safe(lambda: summary(key, sec["result"])) if sec["result"] else ""
        cell = "; ".join(c for c in (sec.get("error") or sec.get("note"), cell) if c)
        lines.append(f"| {title} | {sec['status']} | {_fmt(sec['seconds'])} | {cell} |")
    for key, title in SECTIONS.items():
        sec = sections.get(key)
        if sec and sec["result"]:
            lines += ["", f"## {title}", "", *_safe(lambda: details(key, sec["result"]), [])]
    (out / "gpu_check.md").write_text("\n".join(lines).rstrip() + "\n")


def run_section(ctx: Context, key: str) -> dict:
    """Run one section, guarded: ``status`` is ok, error (with a one-line ``error``) or skipped (with a ``note``)."""
    if ctx.over_budget():
        note = (f"skipped: {ctx.elapsed() / 60:.1f} min had passed (sections start only in the first "
                f"{ctx.budget_s / 60 - RESERVE_MINUTES:g} min)")
        log(ctx, f"{key}: {note}")
        return dict(status="skipped", seconds=0.0, error=None, note=note, result=None)
    log(ctx, f"{key}: start")
    t0 = time.monotonic()
    try:
        result, status, error = RUNNERS[key](ctx), "ok", None
        if result.get("errors"):  # parts of the section failed, the rest was measured
            status, error = "partial", "; ".join(result["errors"])
    except Exception as exc:
        traceback.print_exc()
        result, status, error = None, "error", one_line(exc)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = ctx.tf32_default
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    secs = time.monotonic() - t0
    log(ctx, f"{key}: {status} in {secs:.1f} s" + (f" ({error})" if error else ""))
    return dict(status=status, seconds=secs, error=error, note=None, result=result)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a test of this script, e.g. on the CPU)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for gpu_check.json and .md (default %(default)s)")
    ap.add_argument("--budget-minutes", type=float, default=7.5,
                    help=f"sections start only while less than this minus {RESERVE_MINUTES} min have passed")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="SECTION",
                    help=f"run only these sections (a rerun; write it to another --out): {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here (use --device cpu --quick to test the script)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Context(device, args.quick, QUICK if args.quick else FULL, tmp, start, 60 * args.budget_minutes,
                  (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)))
    if ctx.cuda:
        torch.ones(256, 256, device=device).matmul(torch.ones(256, 256, device=device)).sum().item()  # context
    name = torch.cuda.get_device_name(device) if ctx.cuda else f"CPU ({platform.processor() or platform.machine()})"
    meta = dict(device=str(device), device_name=name, torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if ctx.cuda else None, date=time.strftime("%Y-%m-%d %H:%M"),
                python=platform.python_version(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                quick=args.quick, budget_minutes=args.budget_minutes, tf32_default=tf32_flags(),
                command="python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
                total_s=0.0)
    log(ctx, f"gpu check on {name}, torch {torch.__version__}, quick={args.quick}, out={args.out}")
    out = Path(args.out)
    sections: dict[str, dict] = {}
    try:
        for key in SECTIONS:
            if args.only and key not in args.only:
                sections[key] = dict(status="skipped", seconds=0.0, error=None, note="not selected (--only)",
                                     result=None)
                continue
            sections[key] = run_section(ctx, key)
            meta["total_s"] = ctx.elapsed()
            write_outputs(out, meta, sections)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(ctx, f"done; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
