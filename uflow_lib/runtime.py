"""Where and how a run executes: seeding every random number generator, choosing the device, keeping freed
memory for reuse (an allocator setting of the process), and naming the CPU (its printed digits depend on it)."""

from __future__ import annotations

import ctypes
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

__all__ = ["seed_everything", "numpy_global_seed", "pick_device", "keep_freed_memory", "cpu_model", "cpu_signature"]

_KEEPS_FREED_MEMORY: bool | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def numpy_global_seed(seed: int | None) -> Iterator[None]:
    """Seed numpy's global RNG inside the block and restore its previous state afterwards.

    FrEIA draws the fixed channel permutations of its coupling blocks from numpy's *global* generator; building a
    model inside ``with numpy_global_seed(seed):`` makes them reproducible without disturbing the caller's draws.
    ``None`` leaves the generator as it is.
    """
    state = np.random.get_state()
    if seed is not None:
        np.random.seed(seed)
    try:
        yield
    finally:
        if seed is not None:
            np.random.set_state(state)


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; any other name (``"cpu"``, ``"cuda:1"``) as given, once it is
    checked to exist here (:func:`uflow_lib.validation.check_device` raises a ``DeviceError`` otherwise)."""
    from .validation import check_device

    return check_device(name)


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` (Linux) to keep freed memory for reuse in this process: no separate ``mmap`` for
    large blocks, no returning of the heap's top to the system (``mallopt`` ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD``). Values are untouched; what it saves is the kernel's work: by default every tensor of
    32 MiB or more (the variance network's activations at 128 px, batch 8) is a fresh ``mmap`` whose pages are
    faulted in and zeroed on first touch, and the heap is given back after each step. The process keeps its peak
    memory. Called once by SANFlow's training step (:meth:`uflow_lib.methods.sanflow.SANFlowMethod.loss`, with its
    ``FAST_PATHS``); process-wide; returns whether it applied.
    """
    global _KEEPS_FREED_MEMORY
    if _KEEPS_FREED_MEMORY is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _KEEPS_FREED_MEMORY = bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, (1 << 31) - 1))
        except (OSError, AttributeError):  # not glibc
            _KEEPS_FREED_MEMORY = False
    return _KEEPS_FREED_MEMORY


def _cpuinfo_fields(cpuinfo: Path) -> dict[str, str]:
    """The first processor's ``name: value`` lines of Linux's ``cpuinfo`` (``{}`` where there is none)."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and widest vector units, e.g. ``Intel(R) Xeon(R) Processor with AVX-512 and AMX``
    (from Linux's ``cpuinfo``; ``""`` where there is none). Timings and their ratios depend on them, and the
    machines this project runs on differ."""
    fields = _cpuinfo_fields(cpuinfo)
    name, flags = fields.get("model name", ""), set(fields.get("flags", "").split())
    units = [label for flag, label in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    if not units and "avx2" in flags:
        units = ["AVX2"]
    return name + (" with " + " and ".join(units) if units else "")


def cpu_signature(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What decides the rounding of a CPU run, as one line: architecture, model and vector units (:func:`cpu_model`)
    and family and model numbers (virtual machines often name the model only ``AMD EPYC``), e.g. ``x86_64, AMD EPYC
    with AVX-512 (family 25, model 17)``. With one thread and the same seeds, two runs with the same signature print
    the same digits; a trained model's digits differ between signatures (kernels block and sum in other orders)."""
    fields = _cpuinfo_fields(cpuinfo)
    numbers = ", ".join(f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
                        if key in fields)
    return f"{platform.machine()}, {cpu_model(cpuinfo) or 'unknown CPU'}{f' ({numbers})' if numbers else ''}"
