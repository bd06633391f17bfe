"""Where and how a run executes: seeding every random number generator, choosing the device, and keeping freed
memory for reuse (an allocator setting of the process)."""

from __future__ import annotations

import ctypes

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["seed_everything", "numpy_global_seed", "pick_device", "keep_freed_memory"]

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
