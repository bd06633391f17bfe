r"""Plain, literal reference implementations of the two NFAs (test-only, slow on purpose: readable first).

The tree NFA follows Tailanian, Pardo, Musé (U-Flow, J. Math. Imaging Vis. 2024,
doi:10.1007/s10851-024-01193-y) step by step and shares nothing with ``uflow_lib.nfa`` except torch's
interpolation: the component tree is built from the definition (connected components of the upper level sets,
grown level by level with a union-find), regions are explicit pixel sets, and Procedures 1 and 2 rewrite a
``networkx.DiGraph`` until nothing changes. The block NFA unfolds every
window of every channel with numpy and calls ``scipy.stats.binom`` elementwise.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from decimal import Decimal, getcontext

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

ALPHA, BETA = Decimal("0.316915"), Decimal("4.062570")


# ------------------------------------------------------------------------------------------ tree NFA
def component_tree(m: np.ndarray) -> nx.DiGraph:
    """Tree of the connected components (4-connectivity) of the upper level sets ``{m >= level}`` of ``m`` (h, w).

    Nodes carry ``level`` and ``region`` (frozenset of flat pixel indices); edges go parent → child.
    """
    h, w = m.shape
    values = m.ravel()
    by_level = defaultdict(list)
    for p, v in enumerate(values.tolist()):
        by_level[v].append(p)

    def neighbours(p):
        i, j = divmod(p, w)
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < h and 0 <= b < w:
                yield a * w + b

    tree = nx.DiGraph()
    sets = nx.utils.UnionFind()
    node_of = {}  # union-find representative → tree node of that component
    for level in sorted(by_level, reverse=True):
        before = dict(node_of)
        for p in by_level[level]:
            sets[p]  # register the pixel
            for q in neighbours(p):
                if values[q] >= level:
                    sets.union(p, q)
        grown = defaultdict(list)  # representative → the new pixels of this level in that component
        for p in by_level[level]:
            grown[sets[p]].append(p)
        children = defaultdict(list)
        node_of = {}
        for rep, node in before.items():
            if sets[rep] in grown:
                children[sets[rep]].append(node)  # absorbed into a component of this level
            else:
                node_of[sets[rep]] = node  # untouched: the same node continues
        for rep, pixels in grown.items():
            region = frozenset(pixels).union(*(tree.nodes[c]["region"] for c in children[rep]))
            node = tree.number_of_nodes()
            tree.add_node(node, level=level, region=region)
            for c in children[rep]:
                tree.add_edge(node, c)
            node_of[rep] = node
    return tree


def region_log10_prob(region: frozenset, q: np.ndarray, C: int, bound: str) -> float:
    """|R| · Chernoff bound at the region minimum of q; 0 where t <= 1 for the valid bound."""
    t = max(min(q[p] for p in region) / C, sys.float_info.min)  # x = 0 (all channels 0): floored, as the library
    if bound == "valid" and t <= 1:
        return 0.0
    return len(region) * (-C / 2) * (t - 1 - math.log(t)) / math.log(10)


def _parent(tree, v):
    parents = list(tree.predecessors(v))
    return parents[0] if parents else None


def prune(tree: nx.DiGraph) -> bool:
    """Procedure 1: on each branch from a leaf up to (not through) the first node with several children, keep
    only the node of smallest log P (ties: the highest). Returns whether the tree changed."""
    changed = False
    for leaf in [v for v in tree if tree.out_degree(v) == 0]:
        if leaf not in tree:
            continue
        branch = [leaf]
        while (up := _parent(tree, branch[-1])) is not None and tree.out_degree(up) == 1:
            branch.append(up)
        best = min(range(len(branch)), key=lambda i: (tree.nodes[branch[i]]["log_p"], -i))
        if len(branch) > 1:
            top = _parent(tree, branch[-1])
            tree.remove_nodes_from([v for i, v in enumerate(branch) if i != best])
            if top is not None:
                tree.add_edge(top, branch[best])
            changed = True
    return changed


def merge(tree: nx.DiGraph) -> bool:
    """Procedure 2: a node whose children are all leaves absorbs them when its log P <= the smallest of theirs."""
    changed = False
    for v in list(tree):
        if v not in tree:
            continue
        kids = list(tree.successors(v))
        if kids and all(tree.out_degree(c) == 0 for c in kids):
            if tree.nodes[v]["log_p"] <= min(tree.nodes[c]["log_p"] for c in kids):
                tree.remove_nodes_from(kids)
                changed = True
    return changed


def tree_log10_prob_map(z: np.ndarray, bound: str = "valid") -> tuple[np.ndarray, list[float]]:
    """One image, one scale: ``z`` (C, h, w) → (log10 P map (h, w), log10 P of each final leaf)."""
    C, h, w = z.shape
    q = (z.astype(np.float64) ** 2).sum(axis=0).ravel()
    tree = component_tree(q.reshape(h, w) / C)
    for v in tree:
        tree.nodes[v]["log_p"] = region_log10_prob(tree.nodes[v]["region"], q, C, bound)
    while prune(tree) | merge(tree):
        pass
    out = np.zeros(h * w)
    leaves = [v for v in tree if tree.out_degree(v) == 0]
    for v in leaves:
        out[list(tree.nodes[v]["region"])] = tree.nodes[v]["log_p"]
    return out.reshape(h, w), [tree.nodes[v]["log_p"] for v in leaves]


def log10_num_tests_tree(sizes) -> float:
    """Σ_s h w Σ_r α β^r / r with exact decimal arithmetic (no overflow)."""
    getcontext().prec = 50
    total = sum(Decimal(h * w) * sum(ALPHA * BETA ** r / r for r in range(1, h * w + 1)) for h, w in sizes)
    return float(total.log10())


def tree_nfa(latents, out_size=256, bound="valid", scales=None) -> torch.Tensor:
    """Reference −log10 NFA (B, 1, out, out), image by image."""
    scales = range(len(latents)) if scales is None else scales
    ups = []
    for s in scales:
        z = latents[s].double().numpy()
        maps = np.stack([tree_log10_prob_map(z[b], bound)[0] for b in range(z.shape[0])])  # (B, h, w)
        ups.append(F.interpolate(torch.from_numpy(maps)[:, None], size=(out_size, out_size), mode="bilinear",
                                 align_corners=False))
    log_nt = log10_num_tests_tree([tuple(latents[s].shape[-2:]) for s in scales])
    return -(log_nt + torch.stack(ups).amin(dim=0))


# ----------------------------------------------------------------------------------------- block NFA
def block_log10_prob_map(z: np.ndarray, window: int, p: float = 0.9) -> np.ndarray:
    """One image, one scale: ``z`` (C, h, w) → log10 P(Bin(n, 1−p) >= mean_c hits in the window) (h, w).

    Windows are cut at the border: n = number of window positions inside the map.
    """
    C, h, w = z.shape
    r = window // 2
    tau = stats.chi2.ppf(p, 1)
    hits = np.pad(z.astype(np.float64) ** 2 > tau, ((0, 0), (r, r), (r, r)))  # (C, h+2r, w+2r), False outside
    inside = np.pad(np.ones((h, w), dtype=bool), r)
    win_hits = np.lib.stride_tricks.sliding_window_view(hits, (window, window), axis=(1, 2))  # (C, h, w, k, k)
    k_per_channel = win_hits.sum(axis=(-2, -1))  # (C, h, w)
    k_mean = k_per_channel.sum(axis=0) / C  # (h, w), fractional
    n = np.lib.stride_tricks.sliding_window_view(inside, (window, window)).sum(axis=(-2, -1))  # (h, w)
    return stats.binom.logsf(np.ceil(k_mean) - 1, n, 1 - p) / math.log(10)


def block_nfa(latents, out_size=256, p=0.9, windows=None) -> torch.Tensor:
    windows = [5] + [3] * (len(latents) - 1) if windows is None else windows
    total = 0.0
    for z, k in zip(latents, windows):
        zz = z.double().numpy()
        maps = np.stack([block_log10_prob_map(zz[b], k, p) for b in range(zz.shape[0])])  # (B, h, w)
        total = total + F.interpolate(torch.from_numpy(maps)[:, None], size=(out_size, out_size), mode="bicubic",
                                      align_corners=False)
    log_nt = math.log10(sum(z.shape[-2] * z.shape[-1] for z in latents))
    return -(log_nt + total)
