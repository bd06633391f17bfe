"""SANFlow's training epoch on real MVTec AD bottle: where the time goes, and the fast paths against the plain ones.

The fast paths (``uflow_lib.methods.sanflow.FAST_PATHS``) compute the same losses: the positional encoding is
factored out of the coupling subnets (computed once per position instead of once per fibre), and the variance
network's and the backbone's convolutions run on channels-last tensors. This script, in ONE process and on the
same batches, (1) times the parts of one training step with the plain paths, (2) runs one epoch with the plain
paths and one with the fast paths, alternately, from the same initial weights, and reports the ratio and the
largest difference of the per-step losses.

Settings: MobileNetV2 (offline ImageNet weights) at 256, batch 8, the variance network at 128 px (the
library's default ``variance_size``), Adam at the recipe's 5e-4, 1 torch thread.

Writes benchmarks/results/sanflow_speed.md. Needs ../shared (skips with a message otherwise).

    python benchmarks/bench_sanflow_speed.py [--steps N]   (default: a whole epoch, 27 steps)
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

from common import MVTEC_ROOT as ROOT, RESULTS, WEIGHTS, have_bottle, machine_line

import numpy as np  # noqa: E402
import torch  # noqa: E402

from uflow_lib.augmentation import synthesize_anomalies  # noqa: E402
from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.methods import build_extractor_for, build_model, ci_config, get_method, resolve  # noqa: E402
from uflow_lib.methods import sanflow as sf  # noqa: E402

BATCH, VARIANCE_SIZE, LR = 8, 128, 5e-4


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def profile_step(model, extractor, images: torch.Tensor) -> dict[str, float]:
    """Seconds of each part of one plain training step on ``images`` (B, 3, 256, 256)."""
    sf.FAST_PATHS = False
    rng = np.random.default_rng(0)
    out = {"synthetic anomalies": _timed(lambda: synthesize_anomalies(images, rng))}
    augmented, _ = synthesize_anomalies(images, rng)
    with torch.no_grad():
        out["backbone (no grad)"] = _timed(lambda: extractor(augmented))
        feats = extractor(augmented)
    x = torch.nn.functional.interpolate(extractor.normalise(augmented), size=(VARIANCE_SIZE,) * 2, mode="bilinear",
                                        antialias=True)

    def variance():
        a, b = model.variance_net(x)
        (a.sum() + b.sum()).backward()

    out["variance network, forward + backward"] = _timed(variance)
    for i, f in enumerate(feats):
        def flow(i=i, f=f):
            z, log_det = model.flow_layer(i, f)
            (z.square().sum() + log_det.sum()).backward()

        out[f"flow {i} ({f.shape[1]} channels, {f.shape[2]}²), forward + backward"] = _timed(flow)
    model.zero_grad(set_to_none=True)
    return out


def epoch(model, extractor, images: torch.Tensor, steps: int, fast: bool) -> tuple[float, list[float]]:
    """Seconds of ``steps`` training steps (batches of the training images in order, seeded anomalies) and the
    losses."""
    sf.FAST_PATHS = fast
    method = get_method("sanflow")
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    t0 = time.perf_counter()
    for b in range(steps):
        idx = torch.arange(b * BATCH, min((b + 1) * BATCH, len(images))) % len(images)
        loss = method.loss(model, extractor, dict(images=images[idx], rng=np.random.default_rng([0, b])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - t0, losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="steps per timed epoch (default: a whole epoch of bottle)")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    cfg = resolve(ci_config(str(ROOT), "unused", weights=str(WEIGHTS), category="bottle", method="sanflow",
                            variance_size=VARIANCE_SIZE, batch_size=BATCH))
    torch.manual_seed(0)
    extractor = build_extractor_for(cfg)
    model0 = build_model(cfg, extractor)
    train = MVTecDataset(ROOT, "bottle", "train", input_size=cfg.input_size)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # (N, 3, 256, 256), decoded once
    steps = args.steps or math.ceil(len(images) / BATCH)
    parts = profile_step(copy.deepcopy(model0), extractor, images[:BATCH])
    plain_s, plain_losses = epoch(copy.deepcopy(model0), extractor, images, steps, fast=False)
    fast_s, fast_losses = epoch(copy.deepcopy(model0), extractor, images, steps, fast=True)
    sf.FAST_PATHS = True
    diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fast_losses, plain_losses))
    lines = [
        "# SANFlow: one training epoch on MVTec AD bottle, plain against fast paths (same losses)", "",
        "Command: `python benchmarks/bench_sanflow_speed.py` (from the repository root; 1 torch thread).", "",
        f"{machine_line(load)}. MobileNetV2 "
        f"at 256, batch {BATCH}, variance network at {VARIANCE_SIZE} px, {steps} steps ({len(images)} images).", "",
        "Where one plain step's time goes:", "", "| part | seconds |", "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in parts.items()], "",
        "| paths | epoch | per step |", "|---|---|---|",
        f"| plain | {plain_s:.1f} s | {plain_s / steps:.2f} s |",
        f"| fast (FAST_PATHS) | {fast_s:.1f} s | {fast_s / steps:.2f} s |", "",
        f"Speed-up, measured in this run: **{plain_s / fast_s:.2f}×**. Largest relative difference of the "
        f"{steps} per-step losses, fast against plain, from the same initial weights: {diff:.1e}.", "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sanflow_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
