r"""The U-shaped normalizing flow (book chapter 3), built with FrEIA's ``GraphINN``.

Scales are ordered fine → coarse, with channels :math:`c_i` and sizes :math:`s_i`. Starting from the coarsest
features, for each scale from the coarsest down to the second finest:

1. a *flow stage* (``flow_steps`` FrEIA ``AllInOneBlock`` s) transforms the current tensor of :math:`v` channels;
2. ``Split`` cuts it along channels into :math:`(\lfloor v/8\rfloor\cdot 4,\; v - \lfloor v/8\rfloor\cdot 4)`;
   the **second** part leaves as that scale's latent :math:`z_s`;
3. the first part goes through ``IRevNetUpsampling`` (pixel shuffle: :math:`C/4` channels at :math:`2h\times 2w`)
   and is concatenated *after* the next finer scale's features.

The finest concatenation passes a last stage and becomes the finest latent. Every operation is a bijection, so
:math:`\log p(x) = \sum_s \log \mathcal N(z_s; 0, I) + \log|\det J|` (the loss of :mod:`uflow_lib.model`).

With MS-CaiT features, ``build_uflow([768, 384], [28, 14])`` has exactly 12,216,480 trainable parameters and
latents 816×28×28 and 192×14×14.

References
----------
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised
Threshold", J. Math. Imaging Vis. 2024, doi:10.1007/s10851-024-01193-y, section 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
from torch import nn

__all__ = ["build_uflow", "latent_shapes", "subnet_conv", "count_trainable_parameters"]

#: ``affine_clamping`` of every coupling block: s = 2·tanh(0.1·a) (FrEIA 0.2 convention).
AFFINE_CLAMPING = 2.0


def subnet_conv(kernel_size: int):
    """Return a FrEIA subnet constructor: Conv(k) → ReLU → Conv(k), hidden width = input width.

    The returned callable maps ``(c_in, c_out)`` to an ``nn.Sequential`` acting on ``(B, c_in, H, W)``
    and returning ``(B, c_out, H, W)`` (``padding="same"``).
    """

    def constructor(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, c_in, kernel_size, padding="same"),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel_size, padding="same"),
        )

    return constructor


def _flow_stage(node: Ff.Node, flow_steps: int, name: str) -> tuple[list[Ff.Node], Ff.Node]:
    """Append ``flow_steps`` AllInOneBlocks after ``node``; kernel 3 on even steps, 1 on odd steps."""
    nodes = []
    for step in range(flow_steps):
        node = Ff.Node(
            node,
            Fm.AllInOneBlock,
            dict(
                subnet_constructor=subnet_conv(3 if step % 2 == 0 else 1),
                affine_clamping=AFFINE_CLAMPING,
                permute_soft=False,
            ),
            name=f"{name}_step{step}",
        )
        nodes.append(node)
    return nodes, node


def _split_sizes(channels: int) -> tuple[int, int]:
    """Channel split of a stage output: (part going up to the finer scale, part leaving as latent)."""
    up = channels // 8 * 4
    return up, channels - up


def latent_shapes(channels: Sequence[int], sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Shapes ``(C_s, h_s, w_s)`` of the latents of :func:`build_uflow`, fine → coarse, without building it.

    >>> latent_shapes([768, 384], [28, 14])
    [(816, 28, 28), (192, 14, 14)]
    >>> latent_shapes([64, 128, 256], [64, 32, 16])
    [(84, 64, 64), (80, 32, 32), (128, 16, 16)]
    """
    _check_scales(channels, sizes)
    shapes: list[tuple[int, int, int]] = []
    carried = 0  # channels arriving from the coarser scale after pixel shuffle
    for c, s in zip(reversed(channels[1:]), reversed(sizes[1:])):
        v = c + carried
        up, out = _split_sizes(v)
        shapes.append((out, s, s))
        carried = up // 4
    shapes.append((channels[0] + carried, sizes[0], sizes[0]))
    return shapes[::-1]


def _check_scales(channels: Sequence[int], sizes: Sequence[int]) -> None:
    if len(channels) != len(sizes) or len(channels) == 0:
        raise ValueError(
            f"channels and sizes must be non-empty lists of equal length (one entry per scale, fine → coarse); "
            f"got channels={list(channels)}, sizes={list(sizes)}"
        )
    for fine, coarse in zip(sizes[:-1], sizes[1:]):
        if fine != 2 * coarse:
            raise ValueError(
                f"each scale must be twice the size of the next coarser one (pixel-shuffle upsampling doubles "
                f"the size); got sizes={list(sizes)}. Pick feature levels whose strides differ by 2."
            )
    carried = 0
    for i in range(len(channels) - 1, 0, -1):  # the stages that send channels up to a finer scale
        v = channels[i] + carried
        if _split_sizes(v)[0] == 0:
            raise ValueError(
                f"scale {i} has {v} channels at its stage; one that sends channels up to the finer scale needs at "
                f"least 8 (it sends v//8*4 of them). Use feature levels with more channels."
            )
        carried = _split_sizes(v)[0] // 4
    if channels[0] + carried < 2:
        raise ValueError(f"the finest stage has {channels[0] + carried} channels; a coupling block needs at least 2")


def build_uflow(
    channels: Sequence[int], sizes: Sequence[int], flow_steps: int = 4, seed: int | None = 0
) -> Ff.GraphINN:
    """Build the U-shaped flow as a FrEIA ``GraphINN``.

    Parameters
    ----------
    channels, sizes : sequence of int
        Feature channels and spatial sizes per scale, fine → coarse, e.g. ``[768, 384]`` and ``[28, 14]``.
        Each size must be twice the next one.
    flow_steps : int
        AllInOneBlocks per stage (paper: 4).
    seed : int or None
        Seed of the blocks' fixed random channel permutations (FrEIA draws them from numpy's global RNG;
        this function restores that RNG's state afterwards). ``None`` uses the global RNG as it is.

    Returns
    -------
    FrEIA.framework.GraphINN
        ``flow([x_1, ..., x_S])`` with ``x_s`` of shape ``(B, c_s, s_s, s_s)`` returns ``(latents, log_det)``:
        a tuple of ``(B, C_s, s_s, s_s)`` latents fine → coarse (see :func:`latent_shapes`) and ``(B,)``
        log-determinants. ``flow(latents, rev=True)`` inverts it and returns ``(features, -log_det)``.
    """
    _check_scales(channels, sizes)
    if flow_steps < 1:
        raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
    state = np.random.get_state()
    if seed is not None:
        np.random.seed(seed)
    try:
        inputs = [Ff.InputNode(c, s, s, name=f"input_{i}") for i, (c, s) in enumerate(zip(channels, sizes))]
        nodes: list[Ff.Node] = []
        outputs: dict[int, Ff.OutputNode] = {}
        node: Ff.Node = inputs[-1]
        for i in range(len(channels) - 1, 0, -1):  # coarsest → second finest
            stage, node = _flow_stage(node, flow_steps, name=f"scale{i}")
            nodes += stage
            v = stage[-1].output_dims[0][0]
            split = Ff.Node(node, Fm.Split, dict(section_sizes=list(_split_sizes(v)), dim=0), name=f"split{i}")
            outputs[i] = Ff.OutputNode(split.out1, name=f"z{i}")
            # (B, up, h, w) -> (B, up/4, 2h, 2w)
            upsample = Ff.Node(split.out0, Fm.IRevNetUpsampling, {}, name=f"upsample{i}")
            node = Ff.Node([inputs[i - 1].out0, upsample.out0], Fm.Concat, dict(dim=0), name=f"concat{i - 1}")
            nodes += [split, upsample, node]
        stage, node = _flow_stage(node, flow_steps, name="scale0")
        nodes += stage
        outputs[0] = Ff.OutputNode(node, name="z0")
        ordered_outputs = [outputs[i] for i in range(len(channels))]
        return Ff.GraphINN(inputs + nodes + ordered_outputs)
    finally:
        if seed is not None:
            np.random.set_state(state)


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (FrEIA's permutation matrices are excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _selftest() -> None:  # pragma: no cover - convenience for a quick look: python -m uflow_lib.flow
    flow = build_uflow([768, 384], [28, 14])
    print(count_trainable_parameters(flow), latent_shapes([768, 384], [28, 14]))
    z, ld = flow([torch.randn(1, 768, 28, 28), torch.randn(1, 384, 14, 14)])
    print([t.shape for t in z], ld.shape)


if __name__ == "__main__":  # pragma: no cover
    _selftest()
