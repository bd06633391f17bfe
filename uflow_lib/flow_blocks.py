r"""Building blocks shared by the flow methods: the clamp of MSFlow's and SANFlow's couplings, the 2-D positional
encoding that conditions them, the standard-normal NLL loss of U-Flow and MSFlow, and a parameter count.

Every method builds its coupling blocks with FrEIA's ``AllInOneBlock``, whose fixed channel permutations come
from numpy's global generator: build them inside :func:`uflow_lib.runtime.numpy_global_seed`.

References
----------
L. Ardizzone et al., FrEIA (Framework for Easily Invertible Architectures), https://github.com/vislearn/FrEIA.
A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (sinusoidal positional encoding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CLAMP", "positional_encoding_2d", "nll_loss", "count_trainable_parameters"]

#: ``affine_clamping`` of the coupling blocks of MSFlow and SANFlow (and MSFlow's fusion clamp), as in their papers.
CLAMP = 1.9


def positional_encoding_2d(channels: int, h: int, w: int) -> torch.Tensor:
    r"""2-D sin/cos positional encoding, ``(channels, h, w)`` float32 in [-1, 1].

    The first half of the channels encodes the column :math:`x`, the second half the row :math:`y`, with
    frequencies :math:`\omega_k = 10000^{-2k/(C/2)}`, :math:`k = 0, \dots, C/4 - 1`:

    .. math::

        PE_{2k}(y, x) = \sin(\omega_k x),\; PE_{2k+1} = \cos(\omega_k x),\;
        PE_{C/2 + 2k} = \sin(\omega_k y),\; PE_{C/2 + 2k+1} = \cos(\omega_k y).

    >>> pe = positional_encoding_2d(8, 2, 3)
    >>> pe.shape, round(float(pe[0, 0, 1]), 4), round(float(pe[1, 0, 1]), 4)
    (torch.Size([8, 2, 3]), 0.8415, 0.5403)
    """
    if channels < 4 or channels % 4 != 0:
        raise ValueError(f"positional encoding channels must be a positive multiple of 4 (sin and cos for rows "
                         f"and columns), got {channels}; use e.g. 64 (MSFlow) or 128 (CFLOW-AD)")
    if h < 1 or w < 1:
        raise ValueError(f"positional encoding size must be positive, got h={h}, w={w}")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(10000.0) / half))  # (C/4,)
    ang_x = torch.arange(w, dtype=torch.float64)[:, None] * freq  # (w, C/4)
    ang_y = torch.arange(h, dtype=torch.float64)[:, None] * freq  # (h, C/4)
    pe = torch.zeros(channels, h, w, dtype=torch.float64)
    pe[0:half:2] = ang_x.sin().T[:, None, :]  # (C/4, 1, w) broadcast over rows
    pe[1:half:2] = ang_x.cos().T[:, None, :]
    pe[half::2] = ang_y.sin().T[:, :, None]  # (C/4, h, 1) broadcast over columns
    pe[half + 1::2] = ang_y.cos().T[:, :, None]
    return pe.float()


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (FrEIA's permutation matrices are buffers: not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def nll_loss(latents: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
    r"""Per-sample negative log-likelihood (without the constant), averaged over the batch.

    latents: list of ``(B, C_s, h_s, w_s)``; log_det: ``(B,)``. Returns a scalar
    :math:`\operatorname{mean}_b [\sum_s \frac12 \lVert z_s^{(b)}\rVert^2 - \log|\det J^{(b)}|]`.
    """
    quad = sum(0.5 * (z**2).flatten(1).sum(dim=1) for z in latents)  # (B,)
    return (quad - log_det).mean()
