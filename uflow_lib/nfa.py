r"""A contrario segmentation: the Number of False Alarms (NFA) of the latents (book chapter 5).

Under the background model :math:`H_0` the latents of normal data are i.i.d. :math:`\mathcal N(0, 1)`, so at a
pixel with :math:`C` channels :math:`q = \sum_c z_c^2 \sim \chi^2_C`. A candidate event :math:`E` is
*detected* when :math:`\mathrm{NFA}(E) = N_T \cdot P_{H_0}(E) < \varepsilon` (default :math:`\varepsilon = 1`),
which bounds the expected number of false detections per image by :math:`\varepsilon`. The maps returned are
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
:func:`tree_log10_prob_maps`); the test suite checks it against a literal, iterative reference. Ties keep the
larger region (the merge's ``≤``). Maps are float64 throughout, so that the threshold at 0 of
:math:`\log_{10} N_T + \log_{10} P` (two numbers of several hundred) loses no digits.
The number of tests counts all connected 4-regions (polyominoes, :func:`log10_num_tests_tree`); per-scale
maps are upsampled bilinearly and combined by the per-pixel minimum (the upsampling is a matrix product with
torch's own interpolation weights, for speed: :func:`~uflow_lib.upsampling.upsample_combine`).

**Block NFA** (paper v1): hits :math:`z^2 > \tau` with :math:`\tau` the :math:`\chi^2_1` quantile of
probability :math:`p`; in a window of :math:`n` positions the hit count averaged over channels,
:math:`\bar k`, is compared with :math:`\mathrm{Bin}(n, 1 - p)`: :math:`\log_{10} P(\mathrm{Bin} \ge \bar k)`.
Maps are upsampled bicubically and summed over scales; :math:`N_T = \sum_s h_s w_s`.

References
----------
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised
Threshold", J. Math. Imaging Vis. 2024, :doi:`10.1007/s10851-024-01193-y` (arXiv 2211.12353, v1 for the block
NFA).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy import special, stats
from skimage.measure import label
from skimage.morphology import max_tree

from .upsampling import upsample_combine

try:  # the compiled core of skimage.morphology.max_tree, for speed (see _max_tree_forest); fallback: the public call
    from skimage.morphology._max_tree import _max_tree as _skimage_max_tree_core
except ImportError:  # pragma: no cover - depends on the installed scikit-image
    _skimage_max_tree_core = None

__all__ = [
    "tree_nfa", "block_nfa", "nfa_segmentation", "tree_log10_prob_maps", "tree_detection_counts",
    "block_log10_prob_maps", "log10_num_tests_tree", "log10_num_tests_block", "chernoff_log10_tail",
    "count_regions",
]

#: A(r) ≈ α β^r / r fixed polyominoes (connected 4-regions up to translation) of r cells (Jensen & Guttmann
#: 2000); N_T places each of them at every position
POLYOMINO_ALPHA, POLYOMINO_BETA = 0.316915, 4.062570
_BOUNDS = ("valid", "paper")
_MOSAIC_PIXELS = 65_536  # max_tree is called on the maps of at most this many pixels at once (at least one image)
_FOREST_PIXELS = 262_144  # the procedures run on forests of about this many pixels (memory: ~13 int64 per pixel)
_SQUARE_BLOCK = 1 << 20  # mean_c z² reads the latents in float64 blocks of about this many values (8 MiB)


# ----------------------------------------------------------------------------------------------- validation
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


def log10_num_tests_block(sizes: Sequence[tuple[int, int]]) -> float:
    r""":math:`\log_{10} N_T` for the block NFA, :math:`N_T = \sum_s h_s w_s` (980 for 28² + 14²)."""
    return math.log10(sum(h * w for h, w in sizes))


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


def _max_tree_forest(maps: list[np.ndarray]) -> np.ndarray:
    """Max-trees of every image of every map as one parent array over all their pixels (roots point to self).

    ``maps``: ``(B, h_s, w_s)`` per scale, the same ``B`` images; pixels are numbered scale by scale, image by
    image, row-major (the order of ``np.concatenate([m.ravel() for m in maps])``).

    The maps of a group of images are laid out one below the other in one array, each framed by pixels that
    are never visited: skimage's compiled core (``_max_tree``, private, called directly for speed) visits only
    the pixels listed in its sorted index and ignores a neighbour it has not visited, so every map gets its own
    tree and no visited pixel lies on the array border. Through the public ``max_tree`` each border pixel costs
    a Python check per neighbour (about 20 µs: 90 % of the time on a square mosaic of 16 maps of 28×28, 7× the
    cost of the maps themselves), and separators are visited too. The public ``max_tree`` on the same layout,
    separators at −1 (below every ``m >= 0``, so each tree hangs below them and is cut there), is the fallback.
    """
    B = maps[0].shape[0]
    sizes = [m[0].size for m in maps]  # pixels per image and scale
    offsets = np.cumsum([0] + [B * n for n in sizes])  # first index of each scale
    W = max(m.shape[2] for m in maps) + 1  # row length: column 0 stays unvisited and separates the rows
    per = max(1, _MOSAIC_PIXELS // sum(sizes))
    parent = np.empty(offsets[-1], dtype=np.int64)
    for start in range(0, B, per):
        b = min(per, B - start)
        where, order, values, index, top = [], [], [], [], 0
        for m, offset, n in zip(maps, offsets, sizes):
            h, w = m.shape[1:]
            # pixel (k, i, j) of this chunk at row top + 1 + k (h + 1) + i, column 1 + j: one unvisited row above
            rows = top + 1 + (h + 1) * np.arange(b)[:, None, None] + np.arange(h)[None, :, None]  # (b, h, 1)
            at = (rows * W + 1 + np.arange(w)).reshape(b, n)  # (b, h·w) position of each pixel in the layout
            chunk = m[start:start + b].reshape(b, n)  # (b, h·w)
            order.append(np.take_along_axis(at, np.argsort(chunk, axis=1), axis=1).ravel())  # ascending per map
            where.append(at.ravel())
            values.append(chunk.ravel())
            index.append(offset + start * n + np.arange(b * n))  # (b·h·w,) index in the returned array
            top += b * (h + 1)
        where, index = np.concatenate(where), np.concatenate(index)
        shape = (top + 1, W)  # one more unvisited row: every visited pixel has its 4 neighbours in the array
        image = np.full(shape[0] * W, -1.0)
        image[where] = np.concatenate(values)
        local = np.full(image.size, -1, dtype=np.int64)
        local[where] = np.arange(where.size)
        assert where.min() >= W and where.max() < image.size - W, "visited pixels must not touch the array border"
        up = local[_layout_max_tree(image, np.concatenate(order), shape)[where]]  # −1: parent is a separator
        roots = np.flatnonzero((up < 0) | (up == np.arange(up.size)))
        assert roots.size == b * len(maps), "each map must make exactly one tree"
        up[roots] = roots
        parent[index] = index[up]
    return parent


def _layout_max_tree(image: np.ndarray, order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Parent array (4-connectivity) of the flat ``image`` laid out as ``shape``, visiting only ``order``.

    ``order``: the pixels to visit, ascending in ``image`` within each map (the maps do not touch, so their
    relative order is free). See :func:`_max_tree_forest`.
    """
    if _skimage_max_tree_core is not None:
        W = shape[1]
        parent = np.empty(image.size, dtype=np.int64)
        # (image, mask, flat neighbour offsets, centre of the footprint, shape, parent out, pixels to visit);
        # mask 1 = "not on the border": no visited pixel is, so the core never checks the array bounds
        try:
            _skimage_max_tree_core(image, np.ones(image.size, dtype=np.uint8), np.array([-W, -1, 1, W], np.int32),
                                   np.array([1, 1], np.int32), np.array(shape, np.int32), parent, order)
            return parent
        except TypeError:  # pragma: no cover - another signature in another scikit-image version
            pass
    return max_tree(image.reshape(shape), connectivity=1)[0].ravel()


def _ancestor_jumps(parent: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Pointer jumping: ``jumps[k][v]`` = the 2^k-th ancestor of ``v`` (saturating at its root), and depths."""
    idx = np.arange(parent.size)
    depth = (parent != idx).astype(np.int64)  # distance from v to jump[v]
    jumps, jump = [], parent
    while True:
        jumps.append(jump)
        nxt = jump[jump]
        if np.array_equal(nxt, jump):  # every pointer has reached its root: depth is complete
            return jumps, depth
        depth = depth + depth[jump]
        jump = nxt


def _subtree_reduce(values: np.ndarray, jumps: list[np.ndarray], depth: np.ndarray, op: str) -> np.ndarray:
    """For every node, ``op`` ("sum" or "min") of ``values`` over its subtree, in O(log depth) vectorised rounds.

    After round k, ``agg[v]`` covers the descendants of ``v`` less than 2^(k+1) below it: it adds the
    aggregates of the nodes exactly 2^k below (disjoint subtrees, so sums are exact).
    """
    agg = values.copy()
    for k, jump in enumerate(jumps):
        src = np.flatnonzero(depth >= (1 << k))  # nodes whose 2^k-th ancestor exists
        if src.size == 0:
            break
        if op == "sum":
            agg = agg + np.bincount(jump[src], weights=agg[src], minlength=agg.size)
        else:
            nxt = agg.copy()
            np.minimum.at(nxt, jump[src], agg[src])
            agg = nxt
    return agg


def _path_min(values: np.ndarray, jumps: list[np.ndarray]) -> np.ndarray:
    """For every node, the minimum of ``values`` over its ancestors and itself (O(log depth) rounds)."""
    agg = values.copy()
    for jump in jumps:
        agg = np.minimum(agg, agg[jump])
    return agg


def _tree_forest(maps: list[np.ndarray], channels: list[int], bound: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Procedures 1–2 on every tree of every map, in closed form.

    ``maps``: list of ``(B, h_s, w_s)`` arrays of :math:`m`. Returns, flat over the concatenated pixels of all
    maps, the log10 P each pixel receives (0 outside detections) and the log10 P of each final leaf at its
    canonical pixel (NaN elsewhere). The trees are skimage's pixel trees: a node is a canonical pixel (a root,
    or a pixel whose parent has another level); the other pixels hang below the node of their level.

    Fixed point of the procedures. Let :math:`S(v)` be the smallest log P in the subtree of ``v``, and call a
    node *good* when it has at most one child or :math:`\log P(w) \le \min_c S(c)` over its children. By
    induction from the leaves, a subtree whose nodes are all good (*single*) ends as one leaf holding
    :math:`S(v)`: Procedure 1 keeps a chain's minimum, and a good branching node whose children have become
    leaves (holding :math:`S(c)`) absorbs them by Procedure 2 and then holds :math:`\log P(w) = S(w)`. A node
    that is not good never absorbs, so it and its ancestors keep several branches for ever, and its single
    children stay as final leaves. Ties keep the highest node (the merge's ``≤``); it is unique, because the
    branching nodes of a single subtree are good. Hence the final leaves are the single nodes ``d`` with
    :math:`\log P(d) = S(d)` whose single proper ancestors all have a larger log P.
    """
    parent = _max_tree_forest(maps)
    level = np.concatenate([m.ravel() for m in maps])
    C = np.repeat(np.asarray(channels, dtype=np.float64), [m.size for m in maps])
    is_root = parent == np.arange(parent.size)
    canonical = is_root | (level[parent] != level)
    jumps, depth = _ancestor_jumps(parent)

    # |R|: pixels in the component; t = min_R m = the node's level, so x = C·level
    area = _subtree_reduce(np.ones(parent.size), jumps, depth, "sum")
    log_p = np.where(canonical, area * chernoff_log10_tail(C * level, C, bound), np.inf)
    S = _subtree_reduce(log_p, jumps, depth, "min")

    child = np.flatnonzero(canonical & ~is_root)  # node-to-node edges child → parent[child]
    n_children = np.bincount(parent[child], minlength=parent.size)
    child_min = np.full(parent.size, np.inf)
    np.minimum.at(child_min, parent[child], S[child])
    good = ~canonical | (n_children <= 1) | (log_p <= child_min)
    single = _subtree_reduce(good.astype(np.int8), jumps, depth, "min").astype(bool)

    # smallest log P among the single proper ancestors (they lie between d and the top of its collapsed subtree)
    single_log_p = _path_min(np.where(canonical & single, log_p, np.inf), jumps)
    above = np.where(is_root, np.inf, single_log_p[parent])
    detected = canonical & single & (log_p == S) & (above > log_p)

    # each pixel takes the log P of the detected node containing it (at most one), else 0
    pixel = _path_min(np.where(detected, log_p, np.inf), jumps)
    return np.where(np.isfinite(pixel), pixel, 0.0), np.where(detected, log_p, np.nan)


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
    max-tree on a layout of all the maps (``_max_tree_forest``); the procedures' fixed point is written with
    subtree reductions (area, smallest log P, "every node good") and root-path reductions (smallest log P
    above, detected ancestor), each computed for all nodes at once by pointer jumping in O(log depth) numpy
    rounds. The closed form and why it equals the iterated Procedures 1–2 are in the docstring of
    ``_tree_forest``.
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


# ---------------------------------------------------------------------------------------- block NFA
def _block_windows(n_scales: int, windows: Sequence[int] | None) -> list[int]:
    if windows is None:  # the paper's 5×5 at the finest scale, 3×3 at every coarser one
        return [5] + [3] * (n_scales - 1)
    windows = list(windows)
    if len(windows) != n_scales or any(isinstance(k, bool) or not isinstance(k, (int, np.integer))
                                       or k < 1 or k % 2 == 0 for k in windows):
        raise ValueError(f"windows must give one odd positive window side per scale ({n_scales}), got {windows!r}")
    return windows


def block_log10_prob_maps(latents: Sequence[torch.Tensor], p: float = 0.9,
                          windows: Sequence[int] | None = None) -> list[torch.Tensor]:
    r"""Per-scale block-NFA maps :math:`\log_{10} P(\mathrm{Bin}(n, 1 - p) \ge \bar k)`, before upsampling.

    A hit is :math:`z^2 > \tau`, :math:`\tau = F^{-1}_{\chi^2_1}(p)`. At each position, :math:`\bar k` is the
    number of hits in the ``k×k`` window centred there, averaged over channels, and :math:`n` is the number of
    window positions inside the map (windows are cut at the border, never padded or reflected, so that every
    trial is a real latent). As the count is an integer, :math:`P(\mathrm{Bin} \ge \bar k) =
    P(\mathrm{Bin} \ge \lceil \bar k \rceil)` (the authors' ``binom.logsf(k̄)`` is the same except at integer
    :math:`\bar k`, where it gives :math:`P(\mathrm{Bin} > \bar k)`). The tail is read from a table of
    ``scipy.stats.binom.logsf`` (exact; one entry per possible ``(n, ⌈k̄⌉)``).

    Parameters
    ----------
    latents : list of Tensor
        ``(B, C_s, h_s, w_s)``, fine → coarse.
    p : float
        Probability of a non-hit under H0 (paper: 0.9, τ = 2.7055).
    windows : sequence of odd int, optional
        Window side per scale; default 5 at the finest scale, 3 at the others (the authors' ``5 / 2^s``
        floored at 3).

    Returns
    -------
    list of Tensor, float64, ``(B, 1, h_s, w_s)`` per scale, ``<= 0``.
    """
    latents = _check_latents(latents)
    if not (isinstance(p, numbers.Real) and 0.0 < p < 1.0):
        raise ValueError(f"p must be a float in (0, 1) (paper: 0.9), got {p!r}")
    windows = _block_windows(len(latents), windows)
    tau = stats.chi2.ppf(p, 1)
    out = []
    for z, k in zip(latents, windows):
        a = _to_numpy(z)
        B, C, h, w = a.shape
        hits = _hit_counts(a, tau)  # Σ_c [z² > τ], (B, h, w)
        total = _box_sum(hits, k)  # hits in the k×k window, all channels, (B, h, w)
        n = _box_sum(np.ones((1, h, w), dtype=np.int64), k)  # window positions inside the map, (1, h, w)
        k_ceil = (total + C - 1) // C  # ⌈k̄⌉ = ⌈total / C⌉, in integers
        ks = np.arange(k * k + 1)
        table = stats.binom.logsf(ks[None, :] - 1, ks[:, None], 1.0 - p) / math.log(10)  # [n, k] → log10 P
        out.append(torch.from_numpy(table[np.broadcast_to(n, k_ceil.shape), k_ceil])[:, None])  # (B, 1, h, w)
    return out


def _hit_counts(a: np.ndarray, tau: float) -> np.ndarray:
    r"""Number of channels with :math:`z^2 > \tau` per position: ``(B, C, h, w)`` → ``(B, h, w)`` int64, exactly.

    For float32 latents, :math:`z^2 > \tau` (with the square exact in float64) is ``|z| >= x*`` for the
    smallest float32 ``x*`` that satisfies it, which avoids a float64 copy of the latents.
    """
    if a.dtype == np.float64:
        z2 = a * a
        if not np.isfinite(z2.max()):
            _raise_not_finite()
        hits = z2 > tau
    else:
        x = np.float32(math.sqrt(tau))
        while float(x) ** 2 > tau:
            x = np.nextafter(x, np.float32(0))
        while float(x) ** 2 <= tau:
            x = np.nextafter(x, np.float32(np.inf))
        absz = np.abs(a)
        if not np.isfinite(absz.max()):
            _raise_not_finite()
        hits = absz >= x
    return hits.view(np.uint8).sum(axis=1, dtype=np.int64)


def _box_sum(x: np.ndarray, k: int) -> np.ndarray:
    """Sums over the ``k×k`` window centred at each position, zeros outside: ``(B, h, w)`` → ``(B, h, w)``.

    Integral image (exact for integers): the window rows ``y-r..y+r`` are rows ``y+1..y+k`` of the padded map.
    """
    r = k // 2
    integral = np.pad(x, ((0, 0), (r + 1, r), (r + 1, r))).cumsum(axis=1).cumsum(axis=2)  # (B, h+k, w+k)
    return integral[:, k:, k:] - integral[:, :-k, k:] - integral[:, k:, :-k] + integral[:, :-k, :-k]


def block_nfa(latents: Sequence[torch.Tensor], out_size: int = 256, p: float = 0.9,
              windows: Sequence[int] | None = None) -> torch.Tensor:
    r"""Block NFA map :math:`-\log_{10}\mathrm{NFA}`, ``(B, 1, out_size, out_size)`` float64; detection where > 0.

    .. math:: \log_{10}\mathrm{NFA} = \log_{10} \textstyle\sum_s h_s w_s + \sum_s \operatorname{up}(\log_{10} P_s)

    with ``up`` the bicubic upsampling (``align_corners=False``) of :func:`block_log10_prob_maps`, done as one
    matrix product for all scales (:func:`~uflow_lib.upsampling.upsample_combine`). Returned on the device of ``latents[0]``.
    """
    _check_positive_int("out_size", out_size)
    maps = [-lp[:, 0].numpy() for lp in block_log10_prob_maps(latents, p, windows)]  # −log10 P_s, (B, h_s, w_s)
    log_nt = log10_num_tests_block([z.shape[-2:] for z in latents])
    return torch.from_numpy(upsample_combine(maps, out_size, "bicubic", -log_nt)).to(latents[0].device)  # (B, 1, out, out)


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
