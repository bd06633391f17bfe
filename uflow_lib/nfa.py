r"""A contrario segmentation: the Number of False Alarms (NFA) of the latents (book chapter 5).

Under the background model :math:`H_0` the latents of normal data are i.i.d. :math:`\mathcal N(0, 1)`, so at a
pixel with :math:`C` channels :math:`q = \sum_c z_c^2 \sim \chi^2_C`. A candidate event :math:`E` is
*detected* when :math:`\mathrm{NFA}(E) = N_T \cdot P_{H_0}(E) < \varepsilon` (default :math:`\varepsilon = 1`),
which bounds the expected number of false detections per image by :math:`\varepsilon` when the latents follow
:math:`H_0` (:mod:`uflow_lib.null_latents` draws latents that depart from it as real ones do: over-dispersed,
unevenly, and spatially correlated; book chapter 5 counts the false detections). The maps returned are
:math:`-\log_{10}\mathrm{NFA}`, so the automatic threshold is ``map > -log10(eps)`` (``> 0`` for ε = 1).

**Tree NFA** (the paper's final method), per image and scale at latent resolution. The candidates are the
nodes of the component tree of the upper level sets of :math:`m = \operatorname{mean}_c z^2` (4-connectivity,
``skimage.morphology.max_tree``). A node's region :math:`R` is its whole component (all its descendants'
pixels), and since :math:`q = C m`, the region minimum :math:`x = \min_R q` is :math:`C` times the node's own
level, :math:`t = x / C = \min_R m`. Every pixel of :math:`R` has :math:`q \ge x` and the Chernoff bound gives

.. math:: \log_{10} P(R) = |R| \cdot \Big(-\frac C2 \cdot \frac{t - 1 - \ln t}{\ln 10}\Big),

valid for :math:`t > 1` only. ``bound="valid"`` (default) sets :math:`\log_{10} P = 0` for :math:`t \le 1`;
``bound="paper"`` keeps the authors' unclamped form, which calls "too normal" regions significant.
Procedure 1 prunes each leaf branch to its most significant node, Procedure 2 lets a node absorb its all-leaf
children when it is at least as significant; repeated until stable, the leaves are the detections.
Here the fixed point is computed in one pass from its closed form, vectorised over the tree arrays (see
:mod:`uflow_lib.component_tree`); the test suite checks it against a literal, iterative reference. Ties keep
the larger region (the merge's ``≤``). Maps are float64 throughout, so that the threshold at 0 of
:math:`\log_{10} N_T + \log_{10} P` (two numbers of several hundred) loses no digits.
The number of tests counts all connected 4-regions (polyominoes, :func:`log10_num_tests_tree`); per-scale
maps are upsampled bilinearly and combined by the per-pixel minimum (the upsampling is a matrix product with
torch's own interpolation weights, for speed: :func:`~uflow_lib.upsampling.upsample_combine`).

**Block NFA** (the paper's first version): :mod:`uflow_lib.nfa_block`.

References
----------
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised
Threshold", J. Math. Imaging Vis. 2024, :doi:`10.1007/s10851-024-01193-y` (arXiv 2211.12353).
A. Desolneux, L. Moisan, J.-M. Morel, "From Gestalt Theory to Image Analysis: A Probabilistic Approach",
Springer 2008, :doi:`10.1007/978-0-387-74378-3` (the a contrario framework and the NFA).
P. Salembier, A. Oliveras, L. Garrido, "Antiextensive connected operators for image and sequence processing",
IEEE Trans. Image Process. 1998, :doi:`10.1109/83.663500` (the max-tree).
I. Jensen, A. J. Guttmann, "Statistics of lattice animals (polyominoes) and polygons", J. Phys. A 2000
(the number of polyominoes, :data:`POLYOMINO_ALPHA`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy import special
from skimage.measure import label

from . import component_tree
from .upsampling import upsample_combine

__all__ = [
    "tree_nfa", "nfa_segmentation", "tree_log10_prob_maps", "tree_detection_counts", "log10_num_tests_tree",
    "chernoff_log10_tail", "count_regions",
]

#: A(r) ≈ α β^r / r fixed polyominoes (connected 4-regions up to translation) of r cells (Jensen & Guttmann
#: 2000); N_T places each of them at every position
POLYOMINO_ALPHA, POLYOMINO_BETA = 0.316915, 4.062570
_BOUNDS = ("valid", "paper")
_FOREST_PIXELS = 262_144  # the procedures run on forests of about this many pixels (memory: ~13 int64 per pixel)
_SQUARE_BLOCK = 1 << 20  # mean_c z² reads the latents in float64 blocks of about this many values (8 MiB)


# ------------------------------------------------------------------ validation (shared with uflow_lib.nfa_block)
def _check_latents(latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not isinstance(latents, (list, tuple)) or not all(isinstance(z, torch.Tensor) for z in latents):
        raise TypeError(f"latents must be a list of torch tensors (B, C_s, h_s, w_s), fine → coarse; got "
                        f"{type(latents).__name__}. Wrap a single tensor as [z].")
    if len(latents) == 0 or any(z.ndim != 4 for z in latents):
        raise ValueError(f"latents must be a non-empty list of 4-D tensors (B, C_s, h_s, w_s); got shapes "
                         f"{[tuple(z.shape) for z in latents]}. Add the batch dimension with z[None].")
    if len({z.shape[0] for z in latents}) != 1:
        raise ValueError(f"all scales must have the same batch size B, got {[z.shape[0] for z in latents]}")
    if any(not z.is_floating_point() for z in latents):
        raise TypeError(f"latents must be floating point, got {[z.dtype for z in latents]}; cast with .float()")
    if any(z.numel() == 0 for z in latents):
        raise ValueError(f"latents must not be empty, got shapes {[tuple(z.shape) for z in latents]}")
    return list(latents)


def _to_numpy(z: torch.Tensor) -> np.ndarray:
    """``(B, C, h, w)`` tensor → numpy float32 or float64 array (a view when already on the CPU).

    numpy rather than torch for the reductions: they are exact, single-pass, and do not depend on torch's
    thread pool (which is slower than one thread on a loaded 2-core machine).
    """
    z = z.detach().cpu()
    return (z if z.dtype in (torch.float32, torch.float64) else z.float()).numpy()


def _raise_not_finite() -> None:
    raise ValueError("latents contain NaN or inf (or values whose square overflows); the NFA needs finite latents "
                     "- check the flow's output")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_bound(bound: str) -> None:
    if bound not in _BOUNDS:
        raise ValueError(f"bound must be 'valid' (Chernoff bound clamped to 0 where t <= 1, the default) or "
                         f"'paper' (the authors' unclamped form), got {bound!r}")


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, numbers.Real) and epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon (expected false detections per image) must be a positive number, got {epsilon!r}")


def _select_scales(n_scales: int, scales: Sequence[int] | None) -> list[int]:
    if scales is None:
        return list(range(n_scales))
    chosen = list(scales)
    if (not chosen or len(set(chosen)) != len(chosen)
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < n_scales
                   for s in chosen)):
        raise ValueError(f"scales must be distinct indices in [0, {n_scales}) into the latents list, or None for "
                         f"all scales; got {scales!r}")
    return sorted(int(s) for s in chosen)


# ------------------------------------------------------------------------------------- number of tests
def log10_num_tests_tree(sizes: Sequence[tuple[int, int]]) -> float:
    r""":math:`\log_{10} N_T` for the tree NFA: every connected 4-region of every size at every position.

    .. math:: N_T = \sum_s h_s w_s \sum_{r=1}^{h_s w_s} \alpha \beta^r / r

    computed with ``logsumexp`` (``N_T`` overflows float64 beyond about 500 pixels).

    Parameters
    ----------
    sizes : sequence of (int, int)
        ``(h_s, w_s)`` of each scale that enters the NFA.

    Examples
    --------
    >>> round(log10_num_tests_tree([(28, 28), (14, 14)]), 2)
    476.92
    """
    logs = []
    for h, w in sizes:
        r = np.arange(1, h * w + 1, dtype=np.float64)
        # ln Σ_r α β^r / r  +  ln(h w)
        logs.append(special.logsumexp(math.log(POLYOMINO_ALPHA) + r * math.log(POLYOMINO_BETA) - np.log(r))
                    + math.log(h * w))
    return float(special.logsumexp(logs) / math.log(10))


# ---------------------------------------------------------------------------------------- tree NFA
def chernoff_log10_tail(x: np.ndarray | float, C: np.ndarray | float, bound: str = "valid") -> np.ndarray:
    r"""Per-pixel Chernoff bound :math:`\log_{10} P(\chi^2_C \ge x) \le -\frac C2 (t - 1 - \ln t)/\ln 10`.

    With :math:`t = x / C`; the bound holds for :math:`t > 1`. ``bound="valid"`` returns 0 (a probability
    of at most 1) for :math:`t \le 1`; ``bound="paper"`` returns the unclamped, negative value there.
    ``t`` is floored at the smallest positive float so that ``x = 0`` stays finite.

    Parameters
    ----------
    x : array_like
        χ² value (region minimum of :math:`q`), any shape.
    C : array_like
        Degrees of freedom (channels), broadcastable with ``x``.

    Returns
    -------
    ndarray, float64, the broadcast shape of ``x`` and ``C``; always ``<= 0``.
    """
    _check_bound(bound)
    t = np.maximum(np.asarray(x, dtype=np.float64) / np.asarray(C, dtype=np.float64), np.finfo(np.float64).tiny)
    # t − 1 − ln t ≥ 0; ln t through log1p near t = 1 for accuracy
    u = t - 1.0
    gap = u - np.where(np.abs(u) < 0.5, np.log1p(np.clip(u, -0.5, 0.5)), np.log(t))
    log10p = -0.5 * np.asarray(C, dtype=np.float64) * gap / math.log(10)
    return np.where(t > 1.0, log10p, 0.0) if bound == "valid" else log10p


def _tree_forest(maps: list[np.ndarray], channels: list[int], bound: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Tree NFA of every map: node scores :math:`|R|` × the Chernoff bound at :math:`t = \min_R m`, Procedures 1–2.

    ``maps``: list of ``(B, h_s, w_s)`` arrays of :math:`m`; ``channels``: :math:`C_s` per map. Returns, flat over
    the concatenated pixels of all maps (``(N,)`` float64 each), the log10 P each pixel receives (0 outside
    detections) and the log10 P of each final leaf at its canonical pixel (NaN elsewhere): the trees and the
    procedures' closed form are in :mod:`uflow_lib.component_tree`.
    """
    forest = component_tree.build_forest(maps)
    C = np.repeat(np.asarray(channels, dtype=np.float64), [m.size for m in maps])  # (N,) C_s of each pixel
    # t = min_R m = the node's level, so x = C·level
    log_p = np.where(forest.canonical, forest.area * chernoff_log10_tail(C * forest.level, C, bound), np.inf)
    return component_tree.final_leaves(forest, log_p)


def _channel_mean_square(z: torch.Tensor) -> np.ndarray:
    r""":math:`m = \operatorname{mean}_c z^2`: ``(B, C, h, w)`` latents → ``(B, h, w)`` float64.

    The squares are exact for float32 latents (a product of two float32 fits in float64's mantissa) and are
    summed in float64. The latents are copied to float64 a few images at a time into one reused buffer: twice
    as fast as ``np.einsum(..., dtype=np.float64)`` on the float32 array (which casts in small chunks).
    """
    a = _to_numpy(z)
    B, C, h, w = a.shape
    x = a.reshape(B, C, h * w)  # (B, C, h·w)
    per = max(1, _SQUARE_BLOCK // (C * h * w))
    out = np.empty((B, h * w))
    buf = np.empty((min(per, B), C, h * w))
    for start in range(0, B, per):
        block = buf[:min(per, B - start)]  # (b, C, h·w) float64
        np.copyto(block, x[start:start + per])
        np.einsum("bcp,bcp->bp", block, block, out=out[start:start + per])  # Σ_c z², (b, h·w)
    m = (out / C).reshape(B, h, w)  # (B, h, w)
    if not np.isfinite(m).all():
        _raise_not_finite()
    return m


def _tree_maps(latents: list[torch.Tensor], bound: str, scales: list[int]):
    """Per selected scale: (log10 P per pixel ``(B, h, w)``, leaf log10 P ``(B, h·w)``), and the map sizes.

    Images go through :func:`_tree_forest` in groups of about ``_FOREST_PIXELS`` pixels (bounded memory).
    """
    zs = [latents[s] for s in scales]
    maps = [_channel_mean_square(z) for z in zs]  # m per scale, (B, h, w)
    B = maps[0].shape[0]
    group = max(1, _FOREST_PIXELS // sum(m[0].size for m in maps))
    pixels, leaves = [[] for _ in maps], [[] for _ in maps]
    for first in range(0, B, group):
        part = [m[first:first + group] for m in maps]  # (b, h, w) per scale
        pixel, leaf = _tree_forest(part, [z.shape[1] for z in zs], bound)
        start = 0
        for s, m in enumerate(part):
            piece = slice(start, start + m.size)
            pixels[s].append(pixel[piece].reshape(m.shape))  # (b, h, w)
            leaves[s].append(leaf[piece].reshape(m.shape[0], -1))  # (b, h·w)
            start += m.size
    out = [(np.concatenate(p), np.concatenate(lf)) for p, lf in zip(pixels, leaves)]
    return out, [m.shape[1:] for m in maps]


def tree_log10_prob_maps(latents: Sequence[torch.Tensor], bound: str = "valid",
                         scales: Sequence[int] | None = None) -> list[np.ndarray]:
    r"""Per-scale tree-NFA maps of :math:`\log_{10} P` at latent resolution, before upsampling.

    Parameters
    ----------
    latents : list of Tensor
        ``(B, C_s, h_s, w_s)``, fine → coarse.
    bound : {"valid", "paper"}
    scales : sequence of int, optional
        Indices of the scales to use (default: all).

    Returns
    -------
    list of ndarray, float64, ``(B, h_s, w_s)`` per selected scale: the log10 P of the detected region
    containing the pixel, 0 elsewhere (always ``<= 0``).

    Notes
    -----
    No Python loop over pixels or nodes. The trees of a whole batch come from one call of skimage's compiled
    max-tree on a layout of all the maps (:func:`~uflow_lib.component_tree.max_tree_forest`); the procedures'
    fixed point is written with subtree reductions (area, smallest log P, "every node good") and root-path
    reductions (smallest log P above, detected ancestor), each computed for all nodes at once by pointer
    jumping in O(log depth) numpy rounds. The closed form and why it equals the iterated Procedures 1–2 are in
    the docstring of :func:`~uflow_lib.component_tree.final_leaves`.
    """
    latents = _check_latents(latents)
    _check_bound(bound)
    out, _ = _tree_maps(latents, bound, _select_scales(len(latents), scales))
    return [pixel for pixel, _ in out]


def tree_detection_counts(latents: Sequence[torch.Tensor], bound: str = "valid",
                          scales: Sequence[int] | None = None, epsilon: float = 1.0) -> np.ndarray:
    r"""Number of detected regions per image, ``(B,)`` int64: the final leaves of the trees with NFA < ε.

    A leaf counts when :math:`\log_{10} N_T + \log_{10} P(R) < \log_{10}\varepsilon`; the counts are summed
    over the selected scales (a region found at two scales counts twice, so this bounds the number of
    regions of :func:`tree_nfa`'s mask from above, up to regions split by the upsampling).
    """
    latents = _check_latents(latents)
    _check_bound(bound)
    _check_epsilon(epsilon)
    out, sizes = _tree_maps(latents, bound, _select_scales(len(latents), scales))
    threshold = math.log10(epsilon) - log10_num_tests_tree(sizes)
    return sum(np.sum(leaf < threshold, axis=1) for _, leaf in out).astype(np.int64)


def tree_nfa(latents: Sequence[torch.Tensor], out_size: int = 256, bound: str = "valid",
             scales: Sequence[int] | None = None) -> torch.Tensor:
    r"""Tree NFA map :math:`-\log_{10}\mathrm{NFA}`, ``(B, 1, out_size, out_size)`` float64; detection where > 0.

    .. math:: \log_{10}\mathrm{NFA} = \log_{10} N_T + \min_s \operatorname{up}(\log_{10} P_s)

    with ``up`` the bilinear upsampling (``align_corners=False``) of :func:`tree_log10_prob_maps`, done as a
    matrix product (:func:`~uflow_lib.upsampling.upsample_combine`).

    Parameters
    ----------
    latents : list of Tensor
        ``(B, C_s, h_s, w_s)``, fine → coarse, i.i.d. N(0, 1) for normal data.
    out_size : int
        Side of the output map (the evaluation resolution).
    bound : {"valid", "paper"}
        ``"valid"``: Chernoff bound, 0 where the region minimum is below the χ² mean (the default);
        ``"paper"``: the authors' unclamped form (under-dispersed latents make the whole image significant).
    scales : sequence of int, optional
        Scales entering the NFA (and counted in :math:`N_T`); default all. Fine maps cost many tests:
        :math:`\log_{10} N_T \approx 2493` for one 64×64 scale.

    Returns
    -------
    Tensor ``(B, 1, out_size, out_size)``, float64, on the device of ``latents[0]``.
    """
    latents = _check_latents(latents)
    _check_bound(bound)
    _check_positive_int("out_size", out_size)
    out, sizes = _tree_maps(latents, bound, _select_scales(len(latents), scales))
    log_nt = log10_num_tests_tree(sizes)
    # −(log10 N_T + min_s up(log P_s)) = max_s (−log10 N_T + up(−log P_s)), (B, 1, out, out)
    neg = upsample_combine([-pixel for pixel, _ in out], out_size, "bilinear", -log_nt, reduce="max")
    return torch.from_numpy(neg).to(latents[0].device)


# ------------------------------------------------------------------------------------------ segmentation
def nfa_segmentation(neg_log10_nfa: torch.Tensor | np.ndarray, epsilon: float = 1.0) -> torch.Tensor | np.ndarray:
    r"""Automatic segmentation: ``True`` where :math:`\mathrm{NFA} < \varepsilon`.

    That is :math:`-\log_{10}\mathrm{NFA} > -\log_{10}\varepsilon` (``> 0`` for the default ε = 1).
    Any shape in (``(B, 1, H, W)`` from :func:`tree_nfa`), boolean tensor or array of the same shape out.
    """
    _check_epsilon(epsilon)
    return neg_log10_nfa > -math.log10(epsilon)


def count_regions(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Number of 4-connected regions of a ``(B, 1, H, W)`` (or ``(B, H, W)``) mask per image, ``(B,)`` int64."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    mask = mask.reshape(mask.shape[0], *mask.shape[-2:])
    return np.array([label(m, connectivity=1).max() for m in mask], dtype=np.int64)
