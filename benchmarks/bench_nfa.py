"""Speed of the fast tree and block NFAs against the literal references of ``tests/nfa_reference.py``.

Per image, for the MS-CaiT latent shapes ([816×28×28, 192×14×14]) and the MobileNetV2 ones ([44×32×32,
48×16×16]); every ratio is measured in this one run, and the outputs are checked to agree before timing.
Two timings per method: end to end (``tree_nfa`` / ``block_nfa``: −log10 NFA at 256×256, upsampling included)
and the core (per-scale log10 P maps at latent resolution). The fast side is timed on a batch (the way
evaluation calls it) and image by image; everything with torch using every CPU, then one thread.

Upsampling differs between the sides: the reference calls ``F.interpolate`` per scale (bilinear for the tree,
bicubic for the block NFA, ``align_corners=False``), then takes the minimum / sum over scales and adds
log10 N_T; the fast side applies the same linear maps as matrix products ``U_h X U_wᵀ`` with torch's own
interpolation weights (built once by ``F.interpolate`` on unit vectors; tests/test_nfa.py checks equality with
``F.interpolate``), the banded ``U_h`` by blocks of output rows, with the maximum over scales (tree) taken
block by block, and the sum over scales and log10 N_T (block) inside one product.

Run from the repository root::

    python benchmarks/bench_nfa.py            # writes benchmarks/results/nfa_speed.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import nfa_reference as ref  # noqa: E402
from uflow_lib import component_tree, nfa, nfa_block  # noqa: E402

SHAPES = {"MS-CaiT": [(816, 28), (192, 14)], "MobileNetV2": [(44, 32), (48, 16)]}


def seconds(fn, repeat: int) -> tuple[float, float]:
    """Best CPU time of this process and best wall time over ``repeat`` calls.

    CPU time is the primary measure: the machine is shared, and wall time then mostly measures the others.
    """
    cpu = wall = float("inf")
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall


def make_latents(shapes, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """i.i.d. N(0, 1) float32 latents, with a 4×4 patch shifted by +2 at the fine scale of every other image."""
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(batch, C, s, s, generator=g) for C, s in shapes]
    latents[0][::2, :, 10:14, 12:16] += 2.0
    return latents


def one_by_one(fn, latents, n):
    return [fn([z[b:b + 1] for z in latents]) for b in range(n)]


def bench(name, shapes, batch, n_ref, repeat):
    latents = make_latents(shapes, batch)
    first = [z[:n_ref] for z in latents]
    rows = []

    # agreement first: the timings compare equal computations
    assert torch.allclose(nfa.tree_nfa(first), ref.tree_nfa(first), rtol=1e-12, atol=1e-9)
    assert torch.allclose(nfa_block.block_nfa(first), ref.block_nfa(first), rtol=0, atol=1e-6)

    def ref_tree_core():
        for z in first:
            zz = z.double().numpy()
            for b in range(n_ref):
                ref.tree_log10_prob_map(zz[b])

    def ref_block_core():
        for z, k in zip(first, [5] + [3] * (len(first) - 1)):
            zz = z.double().numpy()
            for b in range(n_ref):
                ref.block_log10_prob_map(zz[b], k)

    for method, fast_full, fast_core, ref_full, ref_core in [
        ("tree", nfa.tree_nfa, nfa.tree_log10_prob_maps, ref.tree_nfa, ref_tree_core),
        ("block", nfa_block.block_nfa, nfa_block.block_log10_prob_maps, ref.block_nfa, ref_block_core),
    ]:
        per = lambda times, n: np.array(times) / n  # noqa: E731  (cpu, wall) per image
        t_ref_full = per(seconds(lambda: one_by_one(ref_full, first, n_ref), 2), n_ref)
        t_ref_core = per(seconds(ref_core, 2), n_ref)
        t_batch_full = per(seconds(lambda: fast_full(latents), repeat), batch)
        t_batch_core = per(seconds(lambda: fast_core(latents), repeat), batch)
        t_single_full = per(seconds(lambda: one_by_one(fast_full, latents, n_ref), repeat), n_ref)
        rows.append((name, method, t_ref_full, t_batch_full, t_single_full, t_ref_core, t_batch_core))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per fast call (default 16)")
    parser.add_argument("--ref-images", type=int, default=3, help="images timed with the references (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="fast timings: best of this many (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "nfa_speed.md")
    args = parser.parse_args()

    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    table = []
    # torch threads: every CPU (whatever OMP_NUM_THREADS says), then 1; numpy's BLAS follows OMP_NUM_THREADS
    for threads in sorted({max(default_threads, os.cpu_count() or 1), 1}, reverse=True):
        torch.set_num_threads(threads)
        for name, shapes in SHAPES.items():
            for row in bench(name, shapes, args.batch, args.ref_images, args.repeat):
                table.append((threads, *row))
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()

    ms = lambda t: f"{1e3 * t:.2f}"  # noqa: E731
    lines = [
        f"| torch threads | shapes | NFA | reference | fast, batch of {args.batch} | ratio | fast, one image per call "
        "| ratio | core: reference | core: fast, batch | core ratio | wall-clock ratio, batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, name, method, rf, bf, sf, rc, bc in table:
        lines.append(f"| {threads} | {name} | {method} | {ms(rf[0])} | {ms(bf[0])} | **{rf[0] / bf[0]:.0f}×** | "
                     f"{ms(sf[0])} | {rf[0] / sf[0]:.0f}× | {ms(rc[0])} | {ms(bc[0])} | **{rc[0] / bc[0]:.0f}×** | "
                     f"{rf[1] / bf[1]:.0f}× |")
    n_tests = ["| latent sizes in the NFA | log10 N_T (tree) | log10 N_T (block) |", "|---|---|---|"]
    for sizes in ([(28, 28), (14, 14)], [(14, 14)], [(32, 32), (16, 16)], [(16, 16)], [(64, 64), (32, 32), (16, 16)],
                  [(32, 32)], [(64, 64)]):
        label = " + ".join(f"{h}×{w}" for h, w in sizes)
        n_tests.append(f"| {label} | {nfa.log10_num_tests_tree(sizes):.2f} | {nfa_block.log10_num_tests_block(sizes):.2f} |")

    max_tree_path = ("skimage's compiled core, maps framed by unvisited pixels" if component_tree._skimage_max_tree_core
                     is not None else "public skimage max_tree on a mosaic (fallback)")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    report = "\n".join([
        "# NFA speed: fast (uflow_lib.nfa) against the literal references (tests/nfa_reference.py)",
        "",
        f"Command: `python benchmarks/bench_nfa.py --batch {args.batch} --ref-images {args.ref_images} "
        f"--repeat {args.repeat}` (from the repository root)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; torch {torch.__version__}, numpy {np.__version__}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min; the machine is shared).",
        "",
        "Latents: i.i.d. N(0, 1) float32, a 4×4 patch +2 at the fine scale of every other image. Times are CPU",
        "milliseconds of this process per image (best of the repeats; the reference one image at a time, best of",
        "2), because on a shared machine wall time mostly measures the other processes; the last column gives the",
        "wall-clock ratio of the same runs. End to end = −log10 NFA at 256×256; core = per-scale log10 P maps at",
        "latent resolution. Upsampling: the reference calls `F.interpolate` per scale (bilinear for the tree NFA,",
        "bicubic for the block NFA); the fast side multiplies by matrices holding torch's own interpolation weights",
        "(`U_h X U_wᵀ`, banded `U_h` by blocks of output rows; max over scales block by block for the tree NFA, the",
        "sum over scales in one product for the block NFA). torch threads: every CPU, then 1 (OMP_NUM_THREADS",
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}). Max-tree of the fast side: {max_tree_path}.",
        "The outputs were checked to agree before timing (tree 1e-9, block 1e-6).",
        "",
        *lines,
        "",
        "Number of tests (why fine scales cannot detect anything with the tree NFA, whose bound must beat "
        "log10 N_T):",
        "",
        *n_tests,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
