r"""The block NFA of the paper's first version (book chapter 5), beside the tree NFA of :mod:`uflow_lib.nfa`.

Under :math:`H_0` the latents are i.i.d. :math:`\mathcal N(0, 1)`. A *hit* is :math:`z^2 > \tau` with :math:`\tau`
the :math:`\chi^2_1` quantile of probability :math:`p` (paper: 0.9). In a window of :math:`n` positions the hit
count averaged over channels, :math:`\bar k`, is compared with :math:`\mathrm{Bin}(n, 1 - p)`:
:math:`\log_{10} P(\mathrm{Bin} \ge \bar k)`. Maps are upsampled bicubically and summed over scales;
:math:`N_T = \sum_s h_s w_s`, and the detections are where :math:`-\log_{10}\mathrm{NFA} > 0`.

Two choices differ from the authors' code; both are options, with the library's choice as the default:

- ``border="cut"`` (default): windows are cut at the map's border, so a window near the border has fewer
  trials :math:`n` and every trial is a real latent. ``border="reflect"`` is the authors' form: the hit map is
  reflect-padded, every window has :math:`n = k^2` trials, and near the border some latents are counted twice
  as if they were independent trials (a hit on the edge weighs double), which makes the border liberal.
- ``tail="ceil"`` (default): :math:`P(\mathrm{Bin} \ge \lceil \bar k \rceil)`, the probability of a count at
  least as large as the one observed. ``tail="strict"`` is the authors' ``binom.logsf(k̄)``, which is
  :math:`P(\mathrm{Bin} > \bar k)`: the same for fractional :math:`\bar k` but one count further out when
  :math:`\bar k` is an integer, so the observed count itself is not in the tail (an anti-conservative
  p-value: :math:`P(P_{strict} \le \alpha)` can exceed :math:`\alpha`).

The library keeps the forms whose per-window p-values are valid (super-uniform) under :math:`H_0`, which the
proof of the ε guarantee needs; book chapter 5 measures both on its data and on pure noise.
The sum of per-scale log-probabilities is not itself the log of a probability, so the ε guarantee of the a
contrario framework is not exact here: with few channels and several scales it can be exceeded; at the channel
counts of real latents the test is conservative.

References
----------
M. Tailanian, Á. Pardo, P. Musé, "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised
Threshold", arXiv 2211.12353 v1 (2022), the block NFA; J. Math. Imaging Vis. 2024,
:doi:`10.1007/s10851-024-01193-y`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from .nfa import _check_latents, _check_positive_int, _raise_not_finite, _to_numpy
from .upsampling import upsample_combine

__all__ = ["block_nfa", "block_log10_prob_maps", "log10_num_tests_block"]

_BORDERS = ("cut", "reflect")
_TAILS = ("ceil", "strict")


def log10_num_tests_block(sizes: Sequence[tuple[int, int]]) -> float:
    r""":math:`\log_{10} N_T` for the block NFA, :math:`N_T = \sum_s h_s w_s` (980 for 28² + 14²)."""
    return math.log10(sum(h * w for h, w in sizes))


def _block_windows(n_scales: int, windows: Sequence[int] | None) -> list[int]:
    if windows is None:  # the paper's 5×5 at the finest scale, 3×3 at every coarser one
        return [5] + [3] * (n_scales - 1)
    windows = list(windows)
    if len(windows) != n_scales or any(isinstance(k, bool) or not isinstance(k, (int, np.integer))
                                       or k < 1 or k % 2 == 0 for k in windows):
        raise ValueError(f"windows must give one odd positive window side per scale ({n_scales}), got {windows!r}")
    return windows


def _check_options(border: str, tail: str) -> None:
    if border not in _BORDERS:
        raise ValueError(f"border must be 'cut' (windows cut at the map's border, the default) or 'reflect' "
                         f"(the authors' reflect padding), got {border!r}")
    if tail not in _TAILS:
        raise ValueError(f"tail must be 'ceil' (P(Bin >= ceil(k)), the default) or 'strict' (the authors' "
                         f"P(Bin > k)), got {tail!r}")


def block_log10_prob_maps(latents: Sequence[torch.Tensor], p: float = 0.9,
                          windows: Sequence[int] | None = None, border: str = "cut",
                          tail: str = "ceil") -> list[torch.Tensor]:
    r"""Per-scale block-NFA maps :math:`\log_{10} P(\mathrm{Bin}(n, 1 - p) \ge \bar k)`, before upsampling.

    A hit is :math:`z^2 > \tau`, :math:`\tau = F^{-1}_{\chi^2_1}(p)`. At each position, :math:`\bar k` is the
    number of hits in the ``k×k`` window centred there, averaged over channels, and :math:`n` is the number of
    window positions inside the map (``border="cut"``, the default: windows are cut at the border, so that every
    trial is a real latent; ``border="reflect"``, the authors' form: the hit map is reflect-padded and
    :math:`n = k^2` everywhere). As the count is an integer, :math:`P(\mathrm{Bin} \ge \bar k) =
    P(\mathrm{Bin} \ge \lceil \bar k \rceil)` (``tail="ceil"``, the default); ``tail="strict"`` is the
    authors' ``binom.logsf(k̄)`` :math:`= P(\mathrm{Bin} > \bar k) = P(\mathrm{Bin} \ge \lfloor \bar k \rfloor + 1)`,
    one count further out at integer :math:`\bar k` (its probability 0 when :math:`\bar k = n` is floored at
    the smallest positive float64, so that maps stay finite). The tail is read from a table of
    ``scipy.stats.binom.logsf`` (exact; one entry per possible ``(n, count)``).

    Parameters
    ----------
    latents : list of Tensor
        ``(B, C_s, h_s, w_s)``, fine → coarse.
    p : float
        Probability of a non-hit under H0 (paper: 0.9, τ = 2.7055).
    windows : sequence of odd int, optional
        Window side per scale; default 5 at the finest scale, 3 at the others (the authors' ``5 / 2^s``
        floored at 3).
    border : {"cut", "reflect"}
        Windows cut at the map's border (default) or the authors' reflect padding (needs ``k // 2 < h_s, w_s``).
    tail : {"ceil", "strict"}
        :math:`P(\mathrm{Bin} \ge \lceil \bar k \rceil)` (default) or the authors' :math:`P(\mathrm{Bin} > \bar k)`.

    Returns
    -------
    list of Tensor, float64, ``(B, 1, h_s, w_s)`` per scale, ``<= 0``.
    """
    latents = _check_latents(latents)
    if not (isinstance(p, numbers.Real) and 0.0 < p < 1.0):
        raise ValueError(f"p must be a float in (0, 1) (paper: 0.9), got {p!r}")
    windows = _block_windows(len(latents), windows)
    _check_options(border, tail)
    tau = stats.chi2.ppf(p, 1)
    out = []
    for z, k in zip(latents, windows):
        a = _to_numpy(z)
        B, C, h, w = a.shape
        if border == "reflect" and k // 2 >= min(h, w):
            raise ValueError(f"border='reflect' needs windows smaller than twice the map: window {k} on a {h}×{w} map")
        hits = _hit_counts(a, tau)  # Σ_c [z² > τ], (B, h, w)
        if border == "cut":
            total = _box_sum(hits, k)  # hits in the k×k window, all channels, (B, h, w)
            n = _box_sum(np.ones((1, h, w), dtype=np.int64), k)  # window positions inside the map, (1, h, w)
        else:
            r = k // 2
            total = _box_sum(np.pad(hits, ((0, 0), (r, r), (r, r)), mode="reflect"), k)[:, r:r + h, r:r + w]
            n = np.full((1, h, w), k * k, dtype=np.int64)  # every window has k² trials
        # the count whose tail is read: ⌈k̄⌉ = ⌈total / C⌉ ("ceil") or ⌊k̄⌋ + 1 ("strict"), in integers
        count = (total + C - 1) // C if tail == "ceil" else total // C + 1
        ks = np.arange(k * k + 2)
        table = stats.binom.logsf(ks[None, :] - 1, ks[:, None], 1.0 - p) / math.log(10)  # [n, count] → log10 P
        table = np.maximum(table, math.log10(np.finfo(np.float64).tiny))  # P(Bin(n) > n) = 0 → smallest float
        out.append(torch.from_numpy(table[np.broadcast_to(n, count.shape), count])[:, None])  # (B, 1, h, w)
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
              windows: Sequence[int] | None = None, border: str = "cut", tail: str = "ceil") -> torch.Tensor:
    r"""Block NFA map :math:`-\log_{10}\mathrm{NFA}`, ``(B, 1, out_size, out_size)`` float64; detection where > 0.

    .. math:: \log_{10}\mathrm{NFA} = \log_{10} \textstyle\sum_s h_s w_s + \sum_s \operatorname{up}(\log_{10} P_s)

    with ``up`` the bicubic upsampling (``align_corners=False``) of :func:`block_log10_prob_maps`, done as one
    matrix product for all scales (:func:`~uflow_lib.upsampling.upsample_combine`). Returned on the device of ``latents[0]``.
    ``border`` and ``tail``: see :func:`block_log10_prob_maps` (defaults: the library's forms; ``"reflect"``,
    ``"strict"``: the authors').
    """
    _check_positive_int("out_size", out_size)
    maps = [-lp[:, 0].numpy() for lp in block_log10_prob_maps(latents, p, windows, border, tail)]  # −log10 P_s, (B, h_s, w_s)
    log_nt = log10_num_tests_block([z.shape[-2:] for z in latents])
    return torch.from_numpy(upsample_combine(maps, out_size, "bicubic", -log_nt)).to(latents[0].device)  # (B, 1, out, out)
