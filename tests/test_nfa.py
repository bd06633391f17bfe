"""Tests of uflow_lib.nfa: golden values, agreement with the literal references, calibration under H0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from scipy import stats
from skimage.morphology import max_tree

import nfa_reference as ref
from uflow_lib import component_tree, nfa, nfa_block
from uflow_lib.upsampling import upsample_combine

MS_CAIT = [(816, 28), (192, 14)]  # (C, side) fine → coarse
RESNET18 = [(84, 64), (80, 32), (128, 16)]
LN10 = math.log(10)


def gaussian_latents(shapes, batch, seed, std=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [std * torch.randn(batch, C, s, s, generator=g, dtype=dtype) for C, s in shapes]


def latents_from_map(m) -> list[torch.Tensor]:
    """C = 2 channels with z = sqrt(m) in both: mean_c z² = m and q = 2 m."""
    z = torch.from_numpy(np.sqrt(np.asarray(m, dtype=np.float64)))
    return [torch.stack([z, z])[None]]  # (1, 2, h, w)


def g2(t):
    """Chernoff log10 bound of one pixel for C = 2 (C/2 = 1), written out by hand."""
    return -(t - 1 - math.log(t)) / LN10


# ------------------------------------------------------------------------------------ number of tests
def test_log10_num_tests_tree_values():
    a, b = nfa.POLYOMINO_ALPHA, nfa.POLYOMINO_BETA
    assert nfa.log10_num_tests_tree([(1, 1)]) == pytest.approx(math.log10(a * b), rel=1e-12)
    # 1×2 map: 2 positions × (α β / 1 + α β² / 2), plus a 1×1 scale
    expected = 2 * (a * b + a * b**2 / 2) + a * b
    assert nfa.log10_num_tests_tree([(1, 2), (1, 1)]) == pytest.approx(math.log10(expected), rel=1e-12)
    assert nfa.log10_num_tests_tree([(28, 28), (14, 14)]) == pytest.approx(476.92, abs=0.005)
    for sizes in ([(28, 28), (14, 14)], [(16, 16), (8, 8)], [(7, 5)]):
        assert nfa.log10_num_tests_tree(sizes) == pytest.approx(ref.log10_num_tests_tree(sizes), rel=1e-12)
    assert nfa.log10_num_tests_tree([(64, 64)]) == pytest.approx(2493, abs=1.5)


def test_log10_num_tests_block():
    assert nfa_block.log10_num_tests_block([(28, 28), (14, 14)]) == pytest.approx(math.log10(980))


# ------------------------------------------------------------------------------------ Chernoff bound
@pytest.mark.parametrize("C", [1, 2, 8, 64, 192, 816])
def test_chernoff_bound_dominates_exact_chi2_tail(C):
    t = np.concatenate([1 + np.logspace(-4, 0, 60), np.linspace(2.05, 6, 60)])
    exact = stats.chi2.logsf(t * C, C) / LN10
    bound = nfa.chernoff_log10_tail(t * C, C, "valid")
    assert np.all(bound >= exact - 1e-12)
    assert np.all(bound < 0)
    assert_allclose(nfa.chernoff_log10_tail(t * C, C, "paper"), bound, rtol=1e-15)


def test_chernoff_bound_below_the_mean():
    t = np.linspace(0.05, 1.0, 40)
    assert np.all(nfa.chernoff_log10_tail(t * 8, 8, "valid") == 0)
    paper = nfa.chernoff_log10_tail(t * 8, 8, "paper")
    assert np.all(paper[:-1] < 0) and paper[-1] == 0  # the flaw: "too normal" looks improbable
    assert nfa.chernoff_log10_tail(6.0, 2, "valid") == pytest.approx(g2(3.0), rel=1e-12)
    assert nfa.chernoff_log10_tail(1.0, 2, "paper") == pytest.approx(g2(0.5), rel=1e-12)
    assert np.isfinite(nfa.chernoff_log10_tail(0.0, 4, "paper"))


# ------------------------------------------------------------------------------ tree NFA: golden arrays
@pytest.mark.parametrize(
    "m, expected",
    [
        # root (level 2) is less significant than its best leaf: both leaves stay
        ([[2, 3, 2, 4, 2]], [[0, g2(3), 0, g2(4), 0]]),
        # root (level 3, 5 pixels) beats both leaves: Procedure 2 merges, the whole line is detected
        ([[3, 3.2, 3, 3.3, 3]], [[5 * g2(3)] * 5]),
        # a chain: Procedure 1 keeps its most significant node, the 2-pixel component
        ([[1, 3, 3.2]], [[0, 2 * g2(3), 2 * g2(3)]]),
        # an L-shaped plateau is one node of 3 pixels
        ([[1, 1, 1], [1, 3, 3], [1, 3, 1]], [[0, 0, 0], [0, 3 * g2(3), 3 * g2(3)], [0, 3 * g2(3), 0]]),
        # diagonal neighbours are not 4-connected: two nodes of one pixel each
        ([[3, 1, 1], [1, 3, 1], [1, 1, 1]], [[g2(3), 0, 0], [0, g2(3), 0], [0, 0, 0]]),
    ],
)
def test_tree_golden(m, expected):
    for bound in ("valid", "paper"):
        (got,) = nfa.tree_log10_prob_maps(latents_from_map(m), bound)
        assert_allclose(got[0], np.array(expected), rtol=1e-12, atol=1e-12)


def test_tree_golden_valid_and_paper_bounds_differ():
    m = [[0.5, 0.5], [0.5, 1.5]]
    (valid,) = nfa.tree_log10_prob_maps(latents_from_map(m), "valid")
    (paper,) = nfa.tree_log10_prob_maps(latents_from_map(m), "paper")
    # valid: the root (t = 0.5) has log P = 0 and cannot absorb the leaf
    assert_allclose(valid[0], [[0, 0], [0, g2(1.5)]], rtol=1e-12, atol=1e-12)
    # paper: the root gets 4 · g(0.5) < g(1.5) and absorbs the leaf, the whole image is "detected"
    assert_allclose(paper[0], np.full((2, 2), 4 * g2(0.5)), rtol=1e-12)


def test_tree_nfa_combines_scales_with_number_of_tests():
    m = [[1, 1, 1], [1, 3, 3], [1, 3, 1]]
    out = nfa.tree_nfa(latents_from_map(m), out_size=3)  # same size: bilinear is the identity
    expected = -(nfa.log10_num_tests_tree([(3, 3)]) + np.where(np.array(m) == 3, 3 * g2(3), 0))
    assert out.shape == (1, 1, 3, 3) and out.dtype == torch.float64
    assert_allclose(out[0, 0].numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------- tree NFA: agreement with reference
def _case(i: int) -> list[torch.Tensor]:
    """Seeded small cases with planted anomalies, some quantised so that the map has plateaus and ties."""
    g = torch.Generator().manual_seed(100 + i)
    shapes = [[(64, 16), (16, 8)], [(64, 16), (16, 8)], [(8, 12)], [(32, 16), (8, 8)], [(16, 12), (32, 6)],
              [(48, 16), (12, 8)], [(8, 16)], [(64, 12), (64, 6)], [(24, 16), (12, 8)], [(40, 10)],
              [(8, 16), (8, 8)], [(64, 16), (32, 8)]][i]
    quantum = [None, 0.5, 1.0, None, None, 0.5, 1.0, None, 0.25, None, 2.0, None][i]
    std = [1.0, 1.0, 1.0, 0.7, 1.3, 1.0, 1.0, 1.0, 1.0, 0.9, 1.0, 1.0][i]
    z = [std * torch.randn(2, C, s, s, generator=g, dtype=torch.float64) for C, s in shapes]
    if i != 7:  # case 7 stays pure noise
        z[0][:, :, 3:7, 4:8] += 2.0 + 0.25 * (i % 4)
    if i == 5:
        z[0][:, :, 10:13, 10:16] += 1.5
    if i == 8:
        z[0][:, :, 0:4, 12:16] += 2.5  # touches the border
    if i == 11:
        z[1][:, :, 5:8, 1:3] += 2.0
    if quantum is not None:
        z = [torch.round(zz / quantum) * quantum for zz in z]
    return z


@pytest.mark.parametrize("bound", ["valid", "paper"])
@pytest.mark.parametrize("case", range(12))
def test_tree_matches_reference(case, bound):
    latents = _case(case)
    fast = nfa.tree_log10_prob_maps(latents, bound)
    log_nt = ref.log10_num_tests_tree([tuple(z.shape[-2:]) for z in latents])
    ref_counts = np.zeros(2, dtype=np.int64)
    for s, z in enumerate(latents):
        for b in range(2):
            expected, leaves = ref.tree_log10_prob_map(z[b].numpy(), bound)
            assert_allclose(fast[s][b], expected, rtol=1e-12, atol=1e-9)
            ref_counts[b] += sum(lp + log_nt < 0 for lp in leaves)
    np.testing.assert_array_equal(nfa.tree_detection_counts(latents, bound), ref_counts)
    got, want = nfa.tree_nfa(latents, 64, bound), ref.tree_nfa(latents, 64, bound)
    assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-9)
    assert torch.equal(got > 0, want > 0)
    if case in (0, 1, 5, 11) or (bound == "paper" and case == 3):
        assert (got > 0).any(), "the planted anomaly should be detected: the comparison must not be vacuous"


def _spy(monkeypatch, module, name) -> list:
    """Replace ``module.name`` by a wrapper that records each call; returns the list of calls."""
    calls, fn = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append(1) or fn(*args, **kwargs))
    return calls


def test_tree_batch_and_mosaic_chunks_do_not_matter(monkeypatch):
    latents = _case(5)
    whole = nfa.tree_log10_prob_maps(latents)
    one_by_one = [nfa.tree_log10_prob_maps([z[b:b + 1] for z in latents]) for b in range(2)]
    layouts = _spy(monkeypatch, component_tree, "_layout_max_tree")
    forests = _spy(monkeypatch, component_tree, "build_forest")
    nfa.tree_log10_prob_maps(latents)
    assert (len(layouts), len(forests)) == (1, 1), "by default the batch of 2 images is one layout, one forest"
    monkeypatch.setattr(component_tree, "_MOSAIC_PIXELS", 300)  # one image (both scales) per max_tree call
    chunked = nfa.tree_log10_prob_maps(latents)
    assert len(layouts) == 1 + 2, "the chunk size must take effect: one max-tree layout per image"
    monkeypatch.setattr(nfa, "_FOREST_PIXELS", 10)  # one image per forest
    grouped = nfa.tree_log10_prob_maps(latents)
    assert len(forests) == 2 + 2, "the group size must take effect: one forest per image"
    for s in range(2):
        assert_allclose(chunked[s], whole[s], rtol=0, atol=0)
        assert_allclose(grouped[s], whole[s], rtol=0, atol=0)
        assert_allclose(np.concatenate([o[s] for o in one_by_one]), whole[s], rtol=0, atol=0)


def test_max_tree_layout_matches_public_max_tree(monkeypatch):
    """The compiled core on the layout with unvisited separators builds the same trees as public max_tree."""
    rng = np.random.default_rng(5)
    maps = [rng.random((3, 7, 9)), rng.random((3, 4, 3))]  # distinct values: the canonical pixels are unique
    parent = component_tree.max_tree_forest(maps)
    start = 0
    for m in maps:
        for b in range(m.shape[0]):
            want = max_tree(m[b], connectivity=1)[0].ravel() + start
            np.testing.assert_array_equal(parent[start:start + m[b].size], want)
            start += m[b].size
    # the public fallback (separators visited at −1, trees cut below them) gives the same detections, ties included
    fast = [nfa.tree_log10_prob_maps(_case(i), bound) for i in (1, 5, 10) for bound in ("valid", "paper")]
    assert component_tree._skimage_max_tree_core is not None, (
        "skimage's private _max_tree core is missing: this comparison would be vacuous (and the NFA slow)")
    monkeypatch.setattr(component_tree, "_skimage_max_tree_core", None)
    public = _spy(monkeypatch, component_tree, "max_tree")
    assert component_tree.max_tree_forest(maps).tolist() == parent.tolist()
    assert len(public) == 1, "the fallback (public max_tree) must have built the trees"
    slow = [nfa.tree_log10_prob_maps(_case(i), bound) for i in (1, 5, 10) for bound in ("valid", "paper")]
    for got, want in zip(fast, slow):
        for g, w in zip(got, want):
            assert_allclose(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_upsample_as_matrix_product_equals_f_interpolate(mode, dtype, tol):
    """The library upsamples with (banded) matrix products built from F.interpolate, for speed: equal to it."""
    g = torch.Generator().manual_seed(3)
    for sizes, out in [([(28, 28), (14, 14)], 256), ([(32, 16), (16, 8), (1, 5)], 64), ([(6, 6)], 4), ([(3, 3)], 3),
                       ([(40, 40)], 17)]:  # (h, w) per scale; the last one downsamples
        maps = [-10 * torch.rand(2, h, w, generator=g, dtype=dtype) for h, w in sizes]  # (B, h, w), like log10 P
        ups = [F.interpolate(x[:, None], size=(out, out), mode=mode, align_corners=False) for x in maps]
        for reduce, want in [("sum", -476.9 + sum(ups)), ("max", -476.9 + torch.stack(ups).amax(dim=0))]:
            got = upsample_combine([x.numpy() for x in maps], out, mode, -476.9, reduce)
            assert got.shape == want.shape == (2, 1, out, out) and got.dtype == want.numpy().dtype
            assert_allclose(got, want.numpy(), rtol=tol, atol=tol)


def test_tree_scales_select_maps_and_number_of_tests():
    latents = _case(11)
    only_coarse = nfa.tree_nfa(latents, 32, scales=[1])
    assert torch.equal(only_coarse, nfa.tree_nfa([latents[1]], 32))
    assert nfa.tree_detection_counts(latents, scales=[1]).tolist() == nfa.tree_detection_counts([latents[1]]).tolist()
    assert not torch.equal(only_coarse, nfa.tree_nfa(latents, 32))


# ------------------------------------------------------------------------- block NFA: agreement with reference
def test_block_matches_unfold_reference():
    cases = [
        (gaussian_latents(MS_CAIT, 2, seed=3), {}),
        (gaussian_latents([(20, 12), (12, 6), (8, 3)], 3, seed=4, dtype=torch.float64),
         {"p": 0.8, "windows": [3, 5, 1]}),  # a 5×5 window on a 6×6 map, a 1×1 window
    ]
    cases[0][0][0][:, :, 10:14, 12:16] += 2.0
    for latents, kwargs in cases:
        fast = nfa_block.block_log10_prob_maps(latents, **kwargs)
        windows = kwargs.get("windows", [5] + [3] * (len(latents) - 1))
        for s, (z, k) in enumerate(zip(latents, windows)):
            for b in range(z.shape[0]):
                want = ref.block_log10_prob_map(z[b].double().numpy(), k, kwargs.get("p", 0.9))
                assert_allclose(fast[s][b, 0].numpy(), want, rtol=1e-12, atol=1e-12)
        got, want = nfa_block.block_nfa(latents, 64, **kwargs), ref.block_nfa(latents, 64, **kwargs)
        assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    assert (nfa_block.block_nfa(cases[0][0]) > 0).any()


def test_block_golden_counts():
    # one channel, 3×3 map, hits (z² > τ) at the centre and a corner; 3×3 windows cut at the border
    z = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    z[0, 0, 1, 1] = z[0, 0, 0, 0] = 3.0
    (got,) = nfa_block.block_log10_prob_maps([z], windows=[3])
    n = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    k = np.array([[2, 2, 1], [2, 2, 1], [1, 1, 1]])
    assert_allclose(got[0, 0].numpy(), stats.binom.logsf(k - 1, n, 0.1) / LN10, rtol=1e-12)


def _block_authors_reference(z: np.ndarray, k: int, p: float = 0.9) -> np.ndarray:
    """The authors' form, literally: reflect-padded hits, n = k², log10 binom.sf(k̄) = P(Bin > k̄). (C, h, w) → (h, w)."""
    r = k // 2
    hits = np.pad(z.astype(np.float64) ** 2 > stats.chi2.ppf(p, 1), ((0, 0), (r, r), (r, r)), mode="reflect")
    k_mean = np.lib.stride_tricks.sliding_window_view(hits, (k, k), axis=(1, 2)).sum(axis=(0, 3, 4)) / z.shape[0]
    return stats.binom.logsf(k_mean, k * k, 1 - p) / LN10


def test_block_authors_options_match_literal_reference():
    latents = gaussian_latents([(20, 12), (12, 6)], 3, seed=7, dtype=torch.float64)
    latents[0][0, :, 2:5, 0:3] += 2.0  # a patch on the border, where reflection counts hits twice
    latents[1][1, :1] = 3.0  # one channel hit everywhere: integer k̄ on that image
    got = nfa_block.block_log10_prob_maps(latents, border="reflect", tail="strict")
    for s, (z, k) in enumerate(zip(latents, (5, 3))):
        for b in range(z.shape[0]):
            assert_allclose(got[s][b, 0].numpy(), _block_authors_reference(z[b].numpy(), k), rtol=1e-12, atol=1e-12)
    # the two options separately: strict = ceil except at integer k̄ (one count further out)
    ceil = nfa_block.block_log10_prob_maps(latents)
    strict = nfa_block.block_log10_prob_maps(latents, tail="strict")
    for s, z in enumerate(latents):
        total = nfa_block._box_sum(nfa_block._hit_counts(z.numpy(), stats.chi2.ppf(0.9, 1)), (5, 3)[s])
        integer = total % z.shape[1] == 0  # (B, h, w)
        assert_allclose(strict[s][:, 0].numpy()[~integer], ceil[s][:, 0].numpy()[~integer], rtol=1e-12)
        assert (strict[s][:, 0].numpy()[integer] < ceil[s][:, 0].numpy()[integer]).all()
    reflect = nfa_block.block_log10_prob_maps(latents, border="reflect")
    assert_allclose(reflect[0][:, :, 2:-2, 2:-2], ceil[0][:, :, 2:-2, 2:-2])  # only the border differs
    assert not np.allclose(reflect[0].numpy(), ceil[0].numpy())
    # every hit: P(Bin(n) > n) = 0 is floored at the smallest float, and the map stays finite
    full = [torch.full((1, 2, 4, 4), 3.0, dtype=torch.float64)]
    (lp,) = nfa_block.block_log10_prob_maps(full, windows=[3], tail="strict")
    assert_allclose(lp.numpy(), math.log10(np.finfo(np.float64).tiny))
    assert torch.isfinite(nfa_block.block_nfa(full, 16, windows=[3], tail="strict")).all()
    with pytest.raises(ValueError, match="border must be"):
        nfa_block.block_nfa(latents, border="wrap")
    with pytest.raises(ValueError, match="tail must be"):
        nfa_block.block_nfa(latents, tail="ge")
    with pytest.raises(ValueError, match="reflect"):
        nfa_block.block_nfa([torch.zeros(1, 1, 2, 2)], windows=[5], border="reflect")


def test_block_strict_tail_is_not_a_valid_p_value():
    """P(P ≤ α) ≤ α holds for the ceil tail and fails for the strict one (1 channel, 3×3 window, exact)."""
    p, n = 0.9, 9
    pmf = stats.binom.pmf(np.arange(n + 1), n, 1 - p)
    ceil = stats.binom.sf(np.arange(n + 1) - 1, n, 1 - p)  # P(Bin ≥ k) at each observed count k
    strict = stats.binom.sf(np.arange(n + 1), n, 1 - p)  # P(Bin > k)
    for alpha in ceil[1:]:
        assert pmf[ceil <= alpha].sum() <= alpha + 1e-15
    assert pmf[strict <= strict[1]].sum() > strict[1]  # e.g. α = P(Bin > 1): P(strict ≤ α) = P(Bin ≥ 1) > α


# ------------------------------------------------------------------------------------ calibration under H0
EPSILON = 1.0  # the default ε of the segmentation: at most one false detection per image on average


def _h0_detections(shapes, n_images, seed, std=1.0, batch=25):
    """Per image, ``(n_images,)`` arrays: detection counts at ε = 1 and the largest −log10 NFA of each map."""
    out = {k: [] for k in ("tree leaves", "tree regions", "block regions", "paper leaves", "paper regions",
                           "tree max", "block max")}
    for start in range(0, n_images, batch):
        latents = gaussian_latents(shapes, batch, seed + start, std)
        tree, paper, block = nfa.tree_nfa(latents), nfa.tree_nfa(latents, bound="paper"), nfa_block.block_nfa(latents)
        out["tree leaves"].append(nfa.tree_detection_counts(latents))
        out["tree regions"].append(nfa.count_regions(tree > 0))
        out["block regions"].append(nfa.count_regions(block > 0))
        out["paper leaves"].append(nfa.tree_detection_counts(latents, bound="paper"))
        out["paper regions"].append(nfa.count_regions(paper > 0))
        out["tree max"].append(tree.amax(dim=(1, 2, 3)).numpy())
        out["block max"].append(block.amax(dim=(1, 2, 3)).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("shapes", [MS_CAIT, RESNET18], ids=["ms-cait", "resnet18"])
def test_false_detections_under_h0(shapes):
    r"""Calibration on n = 100 seeded images of i.i.d. N(0, 1) latents, i.e. exactly under H0.

    The NFA guarantee: :math:`E[\#\{R : \mathrm{NFA}(R) < \delta\}] \le \delta` per image for every δ (the
    Chernoff bound dominates the χ² tail and the union runs over the N_T tests). Two consequences are checked:

    * ε = 1: the mean number of detections per image is at most ε, up to the sampling error of a mean of n
      counts; for a Poisson count of mean ε (the edge of the guarantee) three standard errors are
      3 sqrt(ε / n) = 0.3.
    * δ = 0.1 and 0.01: an image reaches NFA < δ somewhere (map > −log10 δ) with probability at most δ, so the
      number of such images is stochastically below Bin(n, δ); more than k = 20 resp. 5 of them fails
      (P(Bin(n, δ) > k) < 1e-3).

    The block NFA has no such proof (its maps sum log P over scales, and a product of p-values is not a
    p-value); with hundreds of channels its channel-averaged hit count makes it conservative (largest
    −log10 NFA measured here ≈ −1.7), so the same checks apply to it.
    """
    n = 100
    got = _h0_detections(shapes, n, seed=1000)
    mean = {k: float(v.mean()) for k, v in got.items()}
    print(f"\nH0, std 1.0, {shapes}: mean per image {mean}")
    tolerance = 3 * math.sqrt(EPSILON / n)
    for key in ("tree leaves", "tree regions", "block regions"):
        assert mean[key] <= EPSILON + tolerance, f"{key}: {mean[key]} false detections per image under H0"
    for delta in (0.1, 0.01):
        k_max = int(stats.binom.isf(1e-3, n, delta))
        for key in ("tree max", "block max"):
            hits = int(np.sum(got[key] > -math.log10(delta)))
            assert hits <= k_max, f"{key}: {hits} of {n} images have NFA < {delta} under H0 (at most {k_max})"
    # The unclamped "paper" form differs from the valid one only on nodes with t <= 1 (region minimum below the
    # χ² mean). It has no guarantee, but at std 1 such nodes never end as significant leaves: measured, it
    # detects exactly what the valid form does, image by image (0 detections on these 100 images).
    assert mean["paper leaves"] <= EPSILON + tolerance, f"paper leaves: {mean['paper leaves']} per image at std 1"
    np.testing.assert_array_equal(got["paper leaves"], got["tree leaves"])
    np.testing.assert_array_equal(got["paper regions"], got["tree regions"])


@pytest.mark.parametrize("shapes", [MS_CAIT, RESNET18], ids=["ms-cait", "resnet18"])
def test_paper_bound_detects_whole_image_on_underdispersed_latents(shapes):
    """The documented flaw: with std 0.7 every region is "too normal", the unclamped bound calls it improbable."""
    latents = gaussian_latents(shapes, 8, seed=7, std=0.7)
    assert bool((nfa.tree_nfa(latents, 64, bound="paper") > 0).all())
    assert not bool((nfa.tree_nfa(latents, 64, bound="valid") > 0).any())
    # std 0.9: the same noise as the std-1 images scaled by 0.9, so every χ² tail is thinner than under H0 and
    # every node's valid log P is larger. The valid tree bound keeps its guarantee (at most ε per image); both
    # NFAs detect no more than at std 1, and each image is less significant than its std-1 twin: its largest
    # −log10 NFA is lower (measured margins: ≥ 1.6 for the tree, ≥ 0.18 for the block NFA).
    low = _h0_detections(shapes, 8, seed=7, std=0.9, batch=8)
    high = _h0_detections(shapes, 8, seed=7, std=1.0, batch=8)
    print(f"\nH0, std 0.9, {shapes}: mean per image {({k: float(v.mean()) for k, v in low.items()})}")
    for key in ("tree leaves", "tree regions", "block regions"):
        assert low[key].mean() <= EPSILON and low[key].sum() <= high[key].sum(), (key, low[key], high[key])
    for key in ("tree max", "block max"):
        assert np.all(low[key] < high[key]), f"{key}: std 0.9 {low[key]} not below std 1.0 {high[key]}"
    # the unclamped form already fails there with many channels: the whole image at each of the two MS-CaiT
    # scales is one "significant" region (two leaves, one region at 256×256), far above ε
    assert np.all(low["paper leaves"] >= low["tree leaves"])
    if shapes is MS_CAIT:
        assert low["paper leaves"].tolist() == [2] * 8 and low["paper regions"].tolist() == [1] * 8


# ------------------------------------------------------------------------------------- planted anomaly
def _planted(shift, seed=11, batch=4):
    latents = gaussian_latents(MS_CAIT, batch, seed)
    latents[0][:, :, 10:14, 12:16] += shift  # a 4×4 patch of the fine scale, every channel
    square = torch.zeros(1, 1, 28, 28)
    square[..., 10:14, 12:16] = 1
    return latents, F.interpolate(square, size=(256, 256), mode="nearest").bool()  # (1, 1, 256, 256)


def _iou(mask, truth):
    return ((mask & truth).flatten(1).sum(1) / (mask | truth).flatten(1).sum(1)).numpy()


def test_planted_unit_shift_found_by_tree_nfa():
    latents, truth = _planted(1.0, batch=8)
    iou = _iou(nfa.tree_nfa(latents) > 0, truth)
    print(f"\ntree NFA, +1 patch, IoU per image {np.round(iou, 3)}")
    # The detected node is the most significant component, |R| · g(min_R t): when one patch pixel is weak,
    # the component without it (possibly with a hole) can win, so single images may fall below 0.5.
    assert iou.mean() >= 0.5 and iou.min() >= 0.3
    assert nfa.tree_detection_counts(latents).tolist() == [1] * 8


def test_planted_patch_and_block_nfa_sensitivity():
    latents, truth = _planted(2.0, batch=8)
    iou = _iou(nfa_block.block_nfa(latents) > 0, truth)
    print(f"\nblock NFA, +2 patch, IoU per image {np.round(iou, 3)}")
    assert iou.mean() >= 0.5 and iou.min() >= 0.3
    # A +1 patch is missed by design: the channel-averaged count k̄ ≈ 16·0.26 + 9·0.1 ≈ 5.1 hits out of 25 is
    # compared with one Bin(25, 0.1) draw, P(≥ 6) ≈ 10^-1.5, far above 1/N_T = 1/980.
    latents, _ = _planted(1.0)
    assert not bool((nfa_block.block_nfa(latents) > 0).any())


# ------------------------------------------------------------------------------------ segmentation, inputs
def test_nfa_segmentation_threshold_and_types():
    scores = torch.tensor([[-1.0, 0.0, 0.5, 2.5]])
    assert nfa.nfa_segmentation(scores).tolist() == [[False, False, True, True]]
    assert nfa.nfa_segmentation(scores, epsilon=0.01).tolist() == [[False, False, False, True]]
    assert nfa.nfa_segmentation(scores.numpy(), epsilon=10.0).tolist() == [[False, True, True, True]]
    mask = np.zeros((2, 1, 4, 4), dtype=bool)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = mask[0, 0, 3, 2:] = True  # diagonal pixels: separate 4-regions
    assert nfa.count_regions(mask).tolist() == [3, 0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z: nfa.tree_nfa(z, bound="chernoff"), "bound must be 'valid'"),
        (lambda z: nfa.tree_nfa([z[0][0]]), "4-D"),
        (lambda z: nfa_block.block_nfa([z[0][0]]), "4-D"),
        (lambda z: nfa.tree_nfa([z[0], z[1][:1]]), "same batch size"),
        (lambda z: nfa_block.block_nfa([z[0], z[1][:1]]), "same batch size"),
        (lambda z: nfa.tree_nfa([]), "non-empty"),
        (lambda z: nfa.tree_nfa(z, scales=[2]), "scales must be distinct indices"),
        (lambda z: nfa.tree_nfa(z, scales=[0, 0]), "scales must be distinct indices"),
        (lambda z: nfa.tree_nfa(z, out_size=0), "out_size"),
        (lambda z: nfa_block.block_nfa(z, windows=[4, 3]), "odd positive"),
        (lambda z: nfa_block.block_nfa(z, windows=[5]), "one odd positive"),
        (lambda z: nfa_block.block_nfa(z, p=1.5), "p must be"),
        (lambda z: nfa.nfa_segmentation(z[0], epsilon=0), "epsilon"),
        (lambda z: nfa.tree_nfa([z[0] * float("nan")]), "NaN or inf"),
        (lambda z: nfa_block.block_nfa([z[0] * float("inf")]), "NaN or inf"),
        (lambda z: nfa.chernoff_log10_tail(1.0, 2, "exact"), "bound must be"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    latents = gaussian_latents([(4, 6), (4, 3)], 2, seed=0)
    with pytest.raises(ValueError, match=match):
        call(latents)


def test_bad_input_types():
    with pytest.raises(TypeError, match="list of torch tensors"):
        nfa.tree_nfa(torch.zeros(1, 2, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        nfa_block.block_nfa([torch.zeros(1, 2, 4, 4, dtype=torch.int64)])
