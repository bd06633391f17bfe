"""Where and how a run executes: seeding every random number generator, and choosing the device."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["seed_everything", "numpy_global_seed", "pick_device"]


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
