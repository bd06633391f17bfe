r"""Component trees (max-trees) of maps as parent arrays, and the selection of their most significant nodes.

The *component tree* of a map :math:`m : \Omega \to \mathbb R` (here :math:`m = \operatorname{mean}_c z^2`, one
per image and scale) has one node per connected component (4-connectivity) of every upper level set
:math:`\{m \ge \lambda\}`; a node's parent is the component of the next lower level that contains it, and the
root is the whole map. A node's *region* :math:`R` is its whole component, so :math:`\min_R m` is the node's own
level :math:`\lambda`. The max-tree of Salembier et al. stores this tree as a *parent array* over the pixels:
``parent[p]`` is a pixel index, the root points to itself, and a node is a *canonical* pixel (the root, or a
pixel whose parent has another level); the other pixels of a node hang directly below its canonical pixel.

Building the trees. ``skimage.morphology.max_tree`` builds one tree per call; a batch of maps is laid out as
one mosaic framed by never-visited pixels and handed to skimage's compiled core (``_max_tree``, private, called
directly for speed: it visits only the listed pixels), with the public ``max_tree`` on the same layout as the
fallback. All trees of a batch then form one *forest*, one parent array over all their pixels.

Reductions on the forest. Every per-node quantity is computed for all nodes at once, without a Python loop
over nodes: pointer jumping (``jumps[k]`` = the :math:`2^k`-th ancestor) gives subtree reductions (area
:math:`|R|`, smallest value below) and root-path reductions (smallest value above) in :math:`O(\log
\mathrm{depth})` numpy rounds.

Selecting nodes. Given a node score :math:`\log P(v)` (smaller = more significant), Procedure 1 of Tailanian et
al. prunes each leaf branch to its most significant node and Procedure 2 lets a node absorb its all-leaf
children when it is at least as significant (:math:`\le`); repeated until nothing changes, the leaves of the
tree are the detections. :func:`final_leaves` computes that fixed point in one pass from its closed form;
``tests/test_nfa.py`` checks it against the literal, iterative procedures of ``tests/nfa_reference.py``.

References
----------
P. Salembier, A. Oliveras, L. Garrido, "Antiextensive connected operators for image and sequence processing",
IEEE Trans. Image Process. 7(4), 1998, :doi:`10.1109/83.663500` (the max-tree).
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised
Threshold", J. Math. Imaging Vis. 2024, :doi:`10.1007/s10851-024-01193-y` (Procedures 1 and 2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage.morphology import max_tree

try:  # the compiled core of skimage.morphology.max_tree, for speed (see max_tree_forest); fallback: the public call
    from skimage.morphology._max_tree import _max_tree as _skimage_max_tree_core
except ImportError:  # pragma: no cover - depends on the installed scikit-image
    _skimage_max_tree_core = None

__all__ = ["Forest", "build_forest", "final_leaves", "max_tree_forest", "ancestor_jumps", "subtree_reduce",
           "path_min"]

_MOSAIC_PIXELS = 65_536  # max_tree is called on the maps of at most this many pixels at once (at least one image)


# ----------------------------------------------------------------------------------------- max-tree forest
def max_tree_forest(maps: list[np.ndarray]) -> np.ndarray:
    """Max-trees of every image of every map as one parent array over all their pixels (roots point to self).

    Parameters
    ----------
    maps : list of ndarray
        ``(B, h_s, w_s)`` per scale, the same ``B`` images.

    Returns
    -------
    ndarray, int64, ``(N,)`` with ``N = Σ_s B h_s w_s``: the parent of each pixel, pixels numbered scale by
    scale, image by image, row-major (the order of ``np.concatenate([m.ravel() for m in maps])``).

    Notes
    -----
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

    ``image``: ``(H·W,)`` float64; ``order``: the pixels to visit, ascending in ``image`` within each map (the
    maps do not touch, so their relative order is free). Returns ``(H·W,)`` int64. See :func:`max_tree_forest`.
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


# ------------------------------------------------------------------------------------- forest reductions
def ancestor_jumps(parent: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Pointer jumping: ``jumps[k][v]`` = the 2^k-th ancestor of ``v`` (saturating at its root), and depths.

    ``parent``: ``(N,)`` int64. Returns a list of ``(N,)`` int64 arrays and the ``(N,)`` int64 depths.
    """
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


def subtree_reduce(values: np.ndarray, jumps: list[np.ndarray], depth: np.ndarray, op: str) -> np.ndarray:
    """For every node, ``op`` ("sum" or "min") of ``values`` ``(N,)`` over its subtree, in O(log depth) rounds.

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


def path_min(values: np.ndarray, jumps: list[np.ndarray]) -> np.ndarray:
    """For every node, the minimum of ``values`` ``(N,)`` over its ancestors and itself (O(log depth) rounds)."""
    agg = values.copy()
    for jump in jumps:
        agg = np.minimum(agg, agg[jump])
    return agg


# ------------------------------------------------------------------------------------- node selection
class Forest(NamedTuple):
    """The component trees of a batch of maps, flat over their ``N`` pixels (see :func:`build_forest`)."""

    parent: np.ndarray  #: (N,) int64, roots point to themselves
    level: np.ndarray  #: (N,) float64, the map value of each pixel = the level of its node
    is_root: np.ndarray  #: (N,) bool
    canonical: np.ndarray  #: (N,) bool, the pixels that stand for a node
    area: np.ndarray  #: (N,) float64, |R| of the pixel's subtree (the node's region at canonical pixels)
    jumps: list[np.ndarray]  #: ancestor_jumps(parent)
    depth: np.ndarray  #: (N,) int64


def build_forest(maps: list[np.ndarray]) -> Forest:
    """Max-tree forest of ``maps`` (``(B, h_s, w_s)`` per scale) with levels, canonical pixels and areas |R|."""
    parent = max_tree_forest(maps)
    level = np.concatenate([m.ravel() for m in maps])
    is_root = parent == np.arange(parent.size)
    canonical = is_root | (level[parent] != level)
    jumps, depth = ancestor_jumps(parent)
    area = subtree_reduce(np.ones(parent.size), jumps, depth, "sum")  # |R|: pixels in the component
    return Forest(parent, level, is_root, canonical, area, jumps, depth)


def final_leaves(forest: Forest, log_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Procedures 1–2 on every tree of the forest, in closed form.

    Parameters
    ----------
    forest : Forest
    log_p : ndarray
        ``(N,)`` float64, the score :math:`\log P(v)` of each node at its canonical pixel, ``inf`` elsewhere.

    Returns
    -------
    pixel : ndarray
        ``(N,)`` float64, the log P of the final leaf containing each pixel, 0 outside final leaves.
    leaf : ndarray
        ``(N,)`` float64, the log P of each final leaf at its canonical pixel, NaN elsewhere.

    Notes
    -----
    Let :math:`S(v)` be the smallest log P in the subtree of ``v``, and call a node *good* when it has at
    most one child or :math:`\log P(w) \le \min_c S(c)` over its children. By induction from the leaves, a
    subtree whose nodes are all good (*single*) ends as one leaf holding :math:`S(v)`: Procedure 1 keeps a
    chain's minimum, and a good branching node whose children have become leaves (holding :math:`S(c)`)
    absorbs them by Procedure 2 and then holds :math:`\log P(w) = S(w)`. A node that is not good never
    absorbs, so it and its ancestors keep several branches for ever, and its single children stay as final
    leaves. Ties keep the highest node (the merge's ``≤``); it is unique, because the branching nodes of a
    single subtree are good. Hence the final leaves are the single nodes ``d`` with
    :math:`\log P(d) = S(d)` whose single proper ancestors all have a larger log P.
    """
    parent, is_root, canonical = forest.parent, forest.is_root, forest.canonical
    jumps, depth = forest.jumps, forest.depth
    S = subtree_reduce(log_p, jumps, depth, "min")

    child = np.flatnonzero(canonical & ~is_root)  # node-to-node edges child → parent[child]
    n_children = np.bincount(parent[child], minlength=parent.size)
    child_min = np.full(parent.size, np.inf)
    np.minimum.at(child_min, parent[child], S[child])
    good = ~canonical | (n_children <= 1) | (log_p <= child_min)
    single = subtree_reduce(good.astype(np.int8), jumps, depth, "min").astype(bool)

    # smallest log P among the single proper ancestors (they lie between d and the top of its collapsed subtree)
    single_log_p = path_min(np.where(canonical & single, log_p, np.inf), jumps)
    above = np.where(is_root, np.inf, single_log_p[parent])
    detected = canonical & single & (log_p == S) & (above > log_p)

    # each pixel takes the log P of the detected node containing it (at most one), else 0
    pixel = path_min(np.where(detected, log_p, np.inf), jumps)
    return np.where(np.isfinite(pixel), pixel, 0.0), np.where(detected, log_p, np.nan)
