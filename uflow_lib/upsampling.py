r"""Bilinear and bicubic upsampling as matrix products, with torch's own weights (used by :mod:`uflow_lib.nfa`).

``F.interpolate`` (``align_corners=False``) is a separable linear map, :math:`\operatorname{up}(X) = U_h X U_w^\top`.
Building :math:`U` once from ``F.interpolate`` itself and multiplying is several times faster for the NFA's
small maps, and it lets a sum over scales plus a constant be a single product (:func:`upsample_combine`).
``tests/test_nfa.py`` checks the result equals ``F.interpolate`` to rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["interpolation_matrix", "upsample_combine"]

_BAND_ROWS = 32  # the second product goes by blocks of this many output rows (see upsample_combine)


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix ``U`` of torch's 1-D ``mode`` interpolation (``align_corners=False``).

    Column ``j`` is ``F.interpolate`` of the ``j``-th unit vector, so ``U`` holds torch's own weights, border
    clamping included (the unit vectors are ``(n_in, 1)`` maps, and width 1 → 1 is the identity in both modes).
    Cached, read-only.
    """
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)  # n_in maps (n_in, 1), one unit each
    up = F.interpolate(basis, size=(n_out, 1), mode=mode, align_corners=False)  # (n_in, 1, n_out, 1)
    U = np.ascontiguousarray(up.reshape(n_in, n_out).T.numpy())  # (n_out, n_in)
    U.flags.writeable = False
    return U


@functools.lru_cache(maxsize=64)
def _row_blocks(heights: tuple[int, ...], out_size: int, mode: str) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    r"""Row blocks of :math:`[U_{h_1}, \dots, U_{h_S}, \mathbf 1]`, ``(out, K)``, for :func:`upsample_combine`.

    Each block: (first row, end row, the columns with a nonzero weight in its rows ``(k,)``, the block on those
    columns ``(rows, k)``). Cached, read-only.
    """
    U = np.concatenate([interpolation_matrix(h, out_size, mode) for h in heights]
                       + [np.ones((out_size, 1))], axis=1)  # (out, K), K = Σ_s h_s + 1
    blocks = []
    for r0 in range(0, out_size, _BAND_ROWS):
        rows = U[r0:r0 + _BAND_ROWS]  # (rows, K)
        cols = np.flatnonzero((rows != 0).any(axis=0))  # (k,)
        block = np.ascontiguousarray(rows[:, cols])  # (rows, k)
        cols.flags.writeable = block.flags.writeable = False
        blocks.append((r0, r0 + rows.shape[0], cols, block))
    return blocks


def upsample_combine(maps: Sequence[np.ndarray], out_size: int, mode: str, constant: float,
              reduce: str = "sum") -> np.ndarray:
    r"""``constant`` + the ``mode`` upsamplings of ``maps`` to ``out_size``², summed or maxed over scales.

    ``maps``: ``(B, h_s, w_s)`` per scale, one floating dtype (the result's). Returns ``(B, 1, out, out)``:
    :math:`c + \sum_s \operatorname{up}(X_s)` for ``reduce="sum"``, :math:`\max_s (c + \operatorname{up}(X_s))`
    for ``"max"``. Bilinear and bicubic upsampling (``align_corners=False``) are separable linear maps,
    :math:`\operatorname{up}(X) = U_h X U_w^\top`, so with the width-upsampled maps :math:`T_s = X_s U_w^\top`
    a sum over scales plus a constant is one matrix product:

    .. math:: c + \sum_s U_{h_s} X_s U_{w_s}^\top = [U_{h_1}, \dots, U_{h_S}, \mathbf 1]
              \, [T_1; \dots; T_S; c \mathbf 1^\top].

    The matrices are built by ``F.interpolate`` itself (:func:`interpolation_matrix`), and the result equals
    ``F.interpolate`` to rounding (tested). They are banded (2 or 4 weights per row), so the second product
    goes by blocks of ``_BAND_ROWS`` output rows, on the few input rows each block uses; the maximum over
    scales is taken block by block. Used instead of ``F.interpolate`` for speed: on 16 maps 32×32 + 16×16 →
    256² (1 thread) torch's bicubic kernel takes 0.5 ms per map and image, this 0.13 ms for both maps, their
    sum and the constant (bilinear 28×28 + 14×14 with the maximum: 0.25 ms with ``F.interpolate``, 0.17 ms).
    numpy (whose BLAS follows ``OMP_NUM_THREADS``) rather than torch: the many small products would each
    wait for torch's thread pool, which on a loaded 2-core machine is slower than one thread.
    """
    assert reduce in ("sum", "max"), reduce
    B, dtype = maps[0].shape[0], maps[0].dtype
    products = []  # per product: (stacked T (B, K, out), its row blocks); one for "sum", one per map for "max"
    for group in ([list(maps)] if reduce == "sum" else [[x] for x in maps]):
        widths = [interpolation_matrix(x.shape[-1], out_size, mode).astype(dtype, copy=False) for x in group]
        T = np.concatenate([x @ U.T for x, U in zip(group, widths)]  # T_s = X_s U_wᵀ, (B, h_s, out)
                           + [np.full((B, 1, out_size), constant, dtype=dtype)], axis=1)  # (B, K, out)
        products.append((T, _row_blocks(tuple(x.shape[-2] for x in group), out_size, mode)))
    out = np.empty((B, 1, out_size, out_size), dtype=dtype)
    for i in range(len(products[0][1])):
        part = None
        for T, blocks in products:
            r0, r1, cols, block = blocks[i]
            y = np.matmul(block.astype(dtype, copy=False), T[:, cols])  # (rows, k) @ (B, k, out) → (B, rows, out)
            part = y if part is None else np.maximum(part, y, out=part)
        out[:, 0, r0:r1] = part
    return out
