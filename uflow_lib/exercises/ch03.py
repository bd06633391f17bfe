r"""Checks for the exercises of chapter 3 (the U-shaped flow).

Each ``check_*`` takes the student's function, calls it on cases it builds itself and compares the result
with an *independent* reference: the output shapes and trainable parameters of real FrEIA graphs built by
:func:`uflow_lib.methods.uflow.build_uflow`, FrEIA's own ``IRevNetDownsampling`` for the pixel unshuffle, and a
numerical minimisation (``scipy.optimize``) for the latent scale under the batch-summed loss. A wrong,
missing (``None``) or unfinished answer raises :class:`~uflow_lib.exercises.ExerciseFailed` with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import FrEIA.modules as Fm
import torch

from ..flow_blocks import count_trainable_parameters
from ..methods.uflow import build_uflow
from . import ExerciseFailed, apart, as_integer, counts_attempts, passed, require, tiered
from . import call_student as _call
from . import require_function as _require_function

__all__ = ["check_pixel_unshuffle", "check_latent_shapes", "check_uflow_parameters", "check_summed_loss_std"]

#: The paper's configuration (MS-CaiT features, 4 steps): its trainable parameters, stated in the paper's code.
MSCAIT_PARAMETERS = 12_216_480



def _graph_latent_shapes(channels: Sequence[int], sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Latent shapes read from a real one-step FrEIA graph (no formula), fine → coarse."""
    flow = build_uflow(channels, sizes, flow_steps=1)
    return [tuple(int(d) for d in dims) for dims in flow.output_dims(None)]  # GraphINN lists outputs in order


# ---------------------------------------------------------------------------------------------------- 3.1
@counts_attempts("Exercise 3.1")
def check_pixel_unshuffle(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 3.1: ``fn(x)`` with ``x`` ``(B, C, 2H, 2W)`` → ``(B, 4C, H, W)``, the inverse of the upsampling.

    The reference is FrEIA's ``IRevNetDownsampling``; the check also inverts the answer with FrEIA's
    ``IRevNetUpsampling`` (the module of the U-Flow graph) and asks for the input back exactly.
    """
    _require_function(fn, "pixel_unshuffle", "(x)")
    g = torch.Generator().manual_seed(3)
    for shape in [(1, 1, 4, 4), (2, 3, 6, 8), (1, 12, 14, 14), (3, 5, 2, 10)]:
        x = torch.randn(*shape, generator=g)
        B, C, H2, W2 = shape
        want = Fm.IRevNetDownsampling([(C, H2, W2)])([x])[0][0]
        got = _call(fn, "pixel_unshuffle", x.clone())
        require(isinstance(got, torch.Tensor), f"pixel_unshuffle returned {type(got).__name__}, expected a tensor",
                "return the rearranged tensor (use reshape/permute, not a Python list).")
        require(tuple(got.shape) == tuple(want.shape),
                f"pixel_unshuffle of a {tuple(shape)} tensor has shape {tuple(got.shape)}, expected "
                f"{tuple(want.shape)}", "4× the channels at half the height and width: (B, 4C, H/2, W/2).")
        same_values = torch.equal(got.flatten(1).sort(dim=1).values, want.flatten(1).sort(dim=1).values)
        hint = (tiered("the values are right but in another order: channel c of the input gives output channels "
                       "4c, 4c+1, 4c+2, 4c+3 = its pixels (0,0), (0,1), (1,0), (1,1) of each 2×2 block; split each "
                       "spatial axis in two, then move the two within-block axes next to the channel axis.",
                       "x.reshape(B, C, H, 2, W, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4*C, H, W).")
                if same_values else
                "an unshuffle only moves entries (a permutation): no entry may change, appear twice or vanish.")
        require(torch.equal(got, want), f"pixel_unshuffle of a {tuple(shape)} tensor differs from FrEIA's "
                f"IRevNetDownsampling", hint)
        back = Fm.IRevNetUpsampling([(4 * C, H2 // 2, W2 // 2)])([got])[0][0]
        require(torch.equal(back, x), "IRevNetUpsampling(pixel_unshuffle(x)) does not return x",
                "the unshuffle must be the exact inverse of the U-Flow upsampling.")
    passed("Exercise 3.1", "identical to FrEIA's IRevNetDownsampling and inverted exactly by IRevNetUpsampling")


# ---------------------------------------------------------------------------------------------------- 3.2
_SHAPE_CASES: list[tuple[list[int], list[int]]] = [
    ([768, 384], [28, 14]),         # MS-CaiT (paper)
    ([64, 128, 256], [64, 32, 16]),  # resnet18
    ([32, 96], [32, 16]),            # MobileNetV2 (this book's CPU backbone)
    ([10, 20, 40], [16, 8, 4]),
    ([3, 12, 9], [16, 8, 4]),        # 9 channels: the split keeps 4 (not 4.5) going up
    ([5, 9], [8, 4]),                # 9 // 8 * 4 = 4 go up (as 1 channel), 5 leave as the latent
    ([8, 16, 24, 40], [32, 16, 8, 4]),
]


@counts_attempts("Exercise 3.2")
def check_latent_shapes(fn: Callable[[Sequence[int], Sequence[int]], Sequence[tuple[int, int, int]]]) -> None:
    """Exercise 3.2: ``fn(channels, sizes)`` → latent shapes ``[(C_s, h_s, w_s), ...]`` fine → coarse.

    The reference is the output shape of a real FrEIA graph built with ``build_uflow(..., flow_steps=1)``.
    """
    _require_function(fn, "latent_shapes_by_hand", "(channels, sizes)")
    for channels, sizes in _SHAPE_CASES:
        want = _graph_latent_shapes(channels, sizes)
        got = _call(fn, "latent_shapes_by_hand", list(channels), list(sizes))
        try:
            got_t = [tuple(int(d) for d in s) for s in got]
        except TypeError:
            got_t = None
        require(got_t is not None and len(got_t) == len(want) and all(len(s) == 3 for s in got_t),
                f"latent_shapes_by_hand({channels}, {sizes}) returned {got!r}; expected a list of "
                f"{len(want)} tuples (C, h, w), one per scale",
                "return one (channels, height, width) tuple per scale: [(C0, h0, w0), (C1, h1, w1), ...].")
        if got_t == want[::-1]:
            hint = "your shapes are right but in the wrong order: list them fine → coarse (largest size first)."
        elif [s[1:] for s in got_t] != [s[1:] for s in want]:
            hint = "each latent keeps the spatial size of its own scale: h_s = w_s = sizes[s]."
        else:
            hint = tiered("work from the coarsest scale to the finest: each stage keeps part of its channels as its "
                          "latent and sends the rest to the next finer scale, where the pixel shuffle turns them "
                          "into 4 times fewer channels at twice the size; the finest stage keeps everything.",
                          "v = channels + carried; up = v // 8 * 4 goes up as up // 4 channels; the latent has "
                          "v − up channels.")
        require(got_t == want, f"latent_shapes_by_hand({channels}, {sizes}) = {got_t}, but the FrEIA graph "
                f"gives {want}", hint)
    passed("Exercise 3.2", "every case agrees with the FrEIA graph")


# ---------------------------------------------------------------------------------------------------- 3.3
_PARAM_CASES: list[tuple[list[int], list[int], int]] = [
    ([32, 96], [32, 16], 4),         # MobileNetV2
    ([64, 128, 256], [64, 32, 16], 4),  # resnet18
    ([5, 9], [8, 4], 4),             # a stage of 9 channels: halves 5 and 4
    ([3, 12, 9], [16, 8, 4], 3),     # 3 steps: kernels 3, 1, 3
    ([6, 10], [8, 4], 1),
    ([10, 13], [8, 4], 5),           # 5 steps: kernels 3, 1, 3, 1, 3; fine stage 10 + 1 = 11 channels
]


@counts_attempts("Exercise 3.3")
def check_uflow_parameters(fn: Callable[[Sequence[int], Sequence[int], int], int]) -> None:
    """Exercise 3.3: ``fn(channels, sizes, flow_steps)`` → trainable parameters of ``build_uflow(...)``.

    The reference counts the parameters of real graphs (and the paper's 12,216,480 for MS-CaiT).
    """
    _require_function(fn, "uflow_parameters", "(channels, sizes, flow_steps=4)")
    cases = [([768, 384], [28, 14], 4, MSCAIT_PARAMETERS)]
    cases += [(c, s, k, count_trainable_parameters(build_uflow(c, s, k))) for c, s, k in _PARAM_CASES]
    for channels, sizes, steps, want in cases:
        answer = _call(fn, "uflow_parameters", list(channels), list(sizes), steps)
        got = as_integer(answer)
        require(got is not None,
                f"uflow_parameters({channels}, {sizes}, {steps}) returned {answer!r} of type "
                f"{type(answer).__name__}, expected an int",
                "parameter counts are whole numbers: use `//` and int arithmetic.")
        hint = tiered("count one AllInOneBlock at a time: its subnet (two convolutions with biases, from the first "
                      "half of the channels to a scale and a shift for the second half) and its global affine; "
                      "mind odd channel counts, the kernel of each step and the channels of each stage.",
                      "per block on C channels with kernel k, c1 = C − C//2, c2 = C//2: (k²·c1·c1 + c1) + "
                      "(k²·c1·2c2 + 2c2) + 2C; kernels 3 on even steps, 1 on odd; a stage has its own channels "
                      "+ up/4 from the coarser scale.")
        require(got == want, f"uflow_parameters({channels}, {sizes}, flow_steps={steps}) = {got:,}, but the "
                f"FrEIA graph has {want:,} trainable parameters", hint)
    passed("Exercise 3.3", "the paper's flow and every other case agree with FrEIA")


# ---------------------------------------------------------------------------------------------------- 3.4
def _summed_loss_std(batch: int) -> float:
    r"""Numerically: the scale :math:`a` minimising the expected batch-summed loss of :math:`z = a x`, unit x.

    Per latent entry the loss is :math:`B \cdot \tfrac12 a^2 - \log a` (quadratic summed over B samples,
    log-det averaged); the latent std is :math:`a`.
    """
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_a: batch * 0.5 * math.exp(2 * log_a) - log_a, bounds=(-10, 10),
                          method="bounded", options=dict(xatol=1e-10))
    return math.exp(res.x)


@counts_attempts("Exercise 3.4")
def check_summed_loss_std(fn: Callable[[int], float]) -> None:
    """Exercise 3.4: ``fn(B)`` → the std of the latents of a flow trained with the batch-summed loss.

    The reference minimises the expected loss numerically with ``scipy.optimize.minimize_scalar``.
    """
    _require_function(fn, "summed_loss_std", "(B)")
    for batch in (1, 2, 8, 23, 32, 100):
        want = _summed_loss_std(batch)
        got = _call(fn, "summed_loss_std", batch)
        try:
            got_f = float(got)
        except (TypeError, ValueError):
            got_f = float("nan")
        require(math.isfinite(got_f), f"summed_loss_std({batch}) returned {got!r}, expected a number",
                "return a float (the standard deviation of the latent entries).")
        if math.isclose(got_f, 1 / batch, rel_tol=1e-4) and batch > 1:
            hint = "1/B is the *variance*; the question asks for the standard deviation."
        elif math.isclose(got_f, math.sqrt(batch), rel_tol=1e-4) and batch > 1:
            hint = "upside down: the quadratic term weighs B times more, so the latents *shrink*."
        else:
            hint = tiered("write the expected loss per latent entry of z = a·x, with x of unit variance, as a "
                          "function of the scale a (what is summed over the batch, what is averaged?) and "
                          "minimise it.", "B·a²/2 − log a; set d/da = 0.")
        g, w = apart(got_f, want)
        require(math.isclose(got_f, want, rel_tol=1e-4),
                f"summed_loss_std({batch}) = {g}, but minimising the loss gives {w}", hint)
    passed("Exercise 3.4", "your standard deviation matches the numerical minimum for every batch size")
