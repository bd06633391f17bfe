"""SANFlow's training epoch on real MVTec AD bottle: where the time goes, and the fast paths against the plain ones.

The fast paths (``uflow_lib.methods.sanflow.FAST_PATHS``) compute the same losses with less work: in the fibre
flows the positional encoding is factored out of the coupling subnets (computed once per position, one hidden
buffer per subnet) and each coupling block's forward and backward pass is one autograd function with FrEIA's
arithmetic (bit for bit the same values and gradients, about twenty autograd nodes fewer per block); in the
variance network the convolutions run on channels-last tensors, the batch norms sum their statistics pairwise
(more precise than PyTorch's channels-last kernel) with the ReLU fused, the 3-channel input convolution is one
matrix product and the output convolution is computed only at the pixels where the loss samples it; the backbone
runs on channels-last tensors; and training keeps freed memory for reuse
(``uflow_lib.runtime.keep_freed_memory``: glibc's malloc otherwise maps every tensor of 32 MiB or more afresh, and the kernel
faults in and zeroes its pages).

In ONE run this script (1) times the parts of one training step on each path (in this process, default
allocator), (2) runs one epoch per path, each in its own process (the allocator setting is per process) with its
own copy of the same initial weights, alternating step by step on the same batches (one process computes while
the others wait, so all see the same load of the shared machine), and reports the summed wall-clock and CPU
seconds of each, their ratios and the largest difference of the per-step losses, and (3) compares one step's
loss and gradients on each path in float32 with the plain step in float64 (the plain path's weights after the
epoch). The paths: plain, fast, and fast with the variance network's convolutions in bfloat16
(``sf.BF16_VARIANCE_CONVS``), an option that does NOT compute the same losses, measured for comparison.

Settings: MobileNetV2 (offline ImageNet weights) at 256, batch 8, the variance network at 128 px, Adam at the
recipe's 5e-4, 1 torch thread (run it with OMP_NUM_THREADS=1).

Writes benchmarks/results/sanflow_speed.md. Needs ../shared (skips with a message otherwise).

    OMP_NUM_THREADS=1 python benchmarks/bench_sanflow_speed.py [--steps N]   (default: a whole epoch, 27 steps)
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import multiprocessing as mp
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
#: the paths compared: name → (FAST_PATHS, BF16_VARIANCE_CONVS); the last one is an option, not the same losses
PATHS = {"plain": (False, False), "fast": (True, False), "fast + bf16 option": (True, True)}


def use(path: str) -> None:
    sf.FAST_PATHS, sf.BF16_VARIANCE_CONVS = PATHS[path]


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def profile_step(model, extractor, images: torch.Tensor, path: str) -> dict[str, float]:
    """Seconds of each part of one training step on ``images`` (B, 3, 256, 256) on one of the ``PATHS``."""
    use(path)
    rng = np.random.default_rng(0)
    out = {"synthetic anomalies": _timed(lambda: synthesize_anomalies(images, rng))}
    augmented, _ = synthesize_anomalies(images, rng)
    with torch.no_grad():
        out["backbone (no grad)"] = _timed(lambda: extractor(sf._fast_layout(augmented)))
        feats = [f.contiguous() for f in extractor(sf._fast_layout(augmented))]
    x = torch.nn.functional.interpolate(extractor.normalise(augmented), size=(VARIANCE_SIZE,) * 2, mode="bilinear",
                                        antialias=True)
    sizes = [f.shape[-2:] for f in feats]

    def variance():
        sum(a.sum() + b.sum() for a, b in model.statistics(x, sizes)).backward()

    out["variance network (sampled at the 3 grids), forward + backward"] = _timed(variance)
    for i, f in enumerate(feats):
        def flow(i=i, f=f):
            z, log_det = model.flow_layer(i, f)
            (z.square().sum() + log_det.sum()).backward()

        out[f"flow {i} ({f.shape[1]} channels, {f.shape[2]}²), forward + backward"] = _timed(flow)
    model.zero_grad(set_to_none=True)
    return out


def _setup():
    """The benchmark's configuration, backbone, initial model (seeded) and training images."""
    torch.set_num_threads(1)
    cfg = resolve(ci_config(str(ROOT), "unused", weights=str(WEIGHTS), category="bottle", method="sanflow",
                            variance_size=VARIANCE_SIZE, batch_size=BATCH))
    torch.manual_seed(0)
    extractor = build_extractor_for(cfg)
    model0 = build_model(cfg, extractor)
    train = MVTecDataset(ROOT, "bottle", "train", input_size=cfg.input_size)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # (N, 3, 256, 256), decoded once
    return cfg, extractor, model0, images


def _worker(path: str, conn) -> None:
    """One path's training in its own process (its own memory allocator): a step per batch index received,
    answered with (wall s, CPU s, loss); ``None`` ends it, answered with the model's state dict."""
    _, extractor, model, images = _setup()
    use(path)
    method = get_method("sanflow")
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    conn.send("ready")
    while (b := conn.recv()) is not None:
        idx = torch.arange(b * BATCH, min((b + 1) * BATCH, len(images))) % len(images)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = method.loss(model, extractor, dict(images=images[idx], rng=np.random.default_rng([0, b])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        conn.send((time.perf_counter() - t0, time.process_time() - c0, loss.item()))
    buf = io.BytesIO()  # bytes, not tensors: torch would share tensors' memory with the receiving process
    torch.save(model.state_dict(), buf)
    conn.send(buf.getvalue())


def alternating_epoch(steps: int):
    """``steps`` training steps on each path of ``PATHS``, each path in its own process with its own copy of the
    same initial weights, alternating step by step on the same batches (the training images in order, seeded
    anomalies; the order of the paths rotates): one path computes while the others wait, so all see the same
    load of the machine → per path: wall and CPU seconds and loss per step; and the plain path's final weights."""
    ctx = mp.get_context("spawn")
    pipes, procs = {}, []
    for path in PATHS:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(path, child))
        proc.start()
        pipes[path] = parent
        procs.append(proc)
        assert parent.recv() == "ready"  # set up one at a time (decoding the images is not timed)
    log = {path: {"wall": [], "cpu": [], "loss": []} for path in PATHS}
    names = list(PATHS)
    for b in range(steps):
        for path in names[b % len(names):] + names[:b % len(names)]:
            pipes[path].send(b)
            wall, cpu, loss = pipes[path].recv()
            log[path]["wall"].append(wall)
            log[path]["cpu"].append(cpu)
            log[path]["loss"].append(loss)
    states = {}
    for path in PATHS:
        pipes[path].send(None)
        states[path] = torch.load(io.BytesIO(pipes[path].recv()))
    for proc in procs:
        proc.join()
    return log, states["plain"]


def float64_errors(model, extractor, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """One step's loss and gradients on each path (float32), against the plain step in float64 on the same
    weights and batch: relative loss error and the largest gradient error over the flows' and the variance
    network's parameters, each relative to that parameter's largest gradient entry (conv biases followed by a
    batch norm have gradient 0 and are left out)."""
    method = get_method("sanflow")
    batch = lambda x: dict(images=x, rng=np.random.default_rng([1, 0]))  # noqa: E731

    def step(m, ex, x, path):
        use(path)
        m.zero_grad(set_to_none=True)
        loss = method.loss(m, ex, batch(x))
        loss.backward()
        return loss.item(), {n: p.grad.double() for n, p in m.named_parameters() if p.grad is not None}

    ref_loss, ref = step(copy.deepcopy(model).double(), copy.deepcopy(extractor).double(), images.double(), "plain")
    out = {}
    for path in PATHS:
        loss, grads = step(model, extractor, images, path)
        err = {n: ((grads[n] - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref
               if not (n.startswith("variance_net.blocks") and n.endswith(".bias") and int(n.split(".")[2]) % 3 == 0)}
        out[path] = {
            "loss": abs(loss - ref_loss) / abs(ref_loss),
            "flows": max(v for n, v in err.items() if n.startswith("flows")),
            "variance network": max(v for n, v in err.items() if n.startswith("variance_net")),
        }
    use("fast")
    model.zero_grad(set_to_none=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="steps per timed epoch (default: a whole epoch of bottle)")
    args = ap.parse_args()
    if not have_bottle():
        return 0
    load = os.getloadavg()[0]
    _, extractor, model0, images = _setup()
    steps = args.steps or math.ceil(len(images) / BATCH)
    parts = {path: profile_step(copy.deepcopy(model0), extractor, images[:BATCH], path) for path in PATHS}
    log, plain_state = alternating_epoch(steps)
    trained = copy.deepcopy(model0)
    trained.load_state_dict(plain_state)
    load_end = os.getloadavg()[0]
    names = list(PATHS)
    errors = float64_errors(trained, extractor, images[BATCH:2 * BATCH])
    wall = {path: sum(log[path]["wall"]) for path in log}
    cpu = {path: sum(log[path]["cpu"]) for path in log}
    diff = {path: max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(log[path]["loss"], log["plain"]["loss"]))
            for path in log}
    lines = [
        "# SANFlow: one training epoch on MVTec AD bottle, plain against fast paths (same losses)", "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/bench_sanflow_speed.py` (from the repository root; 1 torch "
        "thread).", "",
        f"{machine_line(load)}, {load_end:.2f} at the end of the epoch (the 2 cores are shared). MobileNetV2 "
        f"at 256, batch {BATCH}, variance network at {VARIANCE_SIZE} px, {steps} steps ({len(images)} images).", "",
        "Where one step's time goes (seconds, mean of 3 after a warm-up; all paths in this process, with the "
        "default allocator):", "",
        "| part | " + " | ".join(PATHS) + " |", "|---" * (len(PATHS) + 1) + "|",
        *[f"| {k} | " + " | ".join(f"{parts[p][k]:.3f}" for p in PATHS) + " |" for k in parts["plain"]], "",
        "One epoch per path, each path in its own process with its own copy of the same initial weights, the "
        "paths alternating step by step on the same batches (their order rotating):", "",
        "| path | epoch (wall) | per step (wall) | epoch (CPU) | largest relative loss difference to plain |",
        "|---|---|---|---|---|",
        *[f"| {p} | {wall[p]:.1f} s | {wall[p] / steps:.2f} s | {cpu[p]:.1f} s | {diff[p]:.1e} |" for p in PATHS], "",
        f"Speed-up of the fast paths (the same losses), measured in this run: "
        f"**{wall['plain'] / wall['fast']:.2f}×** in wall-clock time ({cpu['plain'] / cpu['fast']:.2f}× in CPU "
        f"time). The bfloat16 option, which does not compute the same losses: {wall['plain'] / wall[names[2]]:.2f}× "
        f"({cpu['plain'] / cpu[names[2]]:.2f}× in CPU time).", "",
        "One step in float32 against the same step in float64 (the plain path's weights after the epoch, the next "
        "batch): "
        "relative error of the loss, and the largest error of a gradient relative to that parameter's largest "
        "gradient entry:", "",
        "| paths | loss | flows' gradients | variance network's gradients |", "|---|---|---|---|",
        *[f"| {k} | {v['loss']:.1e} | {v['flows']:.1e} | {v['variance network']:.1e} |" for k, v in errors.items()],
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sanflow_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
