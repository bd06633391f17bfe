"""Tests of uflow_lib.null_latents: the null fields' statistics, the matching, the Poisson interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from uflow_lib import null_latents as nl


def test_gaussian_kernel_and_lag1_correlation():
    assert nl.gaussian_kernel(0.0).tolist() == [1.0]
    g = nl.gaussian_kernel(1.3)
    assert g.sum() == pytest.approx(1.0) and len(g) == 2 * math.ceil(6.5) + 1
    # lag-1 correlation of filtered white noise against scipy's own filtering of a long 1-D signal
    x = np.random.default_rng(0).standard_normal(400_000)
    y = ndimage.correlate1d(x, g, mode="wrap")
    assert np.corrcoef(y[:-1], y[1:])[0, 1] == pytest.approx(nl.lag1_correlation(1.3), abs=0.005)
    assert nl.lag1_correlation(3.0) == pytest.approx(math.exp(-1 / (4 * 9.0)), abs=1e-6)  # wide kernel
    for rho in (0.14, 0.41, 0.8):
        assert nl.lag1_correlation(nl.kernel_sigma_for(rho)) == pytest.approx(rho, abs=1e-9)
    assert nl.kernel_sigma_for(0.0) == 0.0
    with pytest.raises(ValueError):
        nl.kernel_sigma_for(1.0)


@pytest.mark.parametrize("variance, rho", [(1.0, 0.0), (1.6, 0.0), (1.0, 0.41), (1.2, 0.6)])
def test_null_field_variance_and_correlation(variance, rho):
    x = nl.null_field(400, 4, 12, 12, variance, rho, np.random.default_rng(1)).astype(np.float64)
    assert x.shape == (400, 4, 12, 12) and x.dtype == np.float64
    assert x.var() == pytest.approx(variance, rel=0.02)
    assert abs(x.mean()) < 0.02
    for axis in (2, 3):  # horizontally and vertically, everywhere (no border effect)
        a, b = np.moveaxis(x, axis, -1)[..., :-1], np.moveaxis(x, axis, -1)[..., 1:]
        assert np.mean(a * b) / variance == pytest.approx(rho, abs=0.02)
    corner = x[:, :, 0, 0].ravel()  # stationary: the corner has the same variance
    assert corner.var() == pytest.approx(variance, rel=0.1)
    assert stats.kstest(x[:, 0, 5, 5] / math.sqrt(variance), "norm").pvalue > 1e-3


def test_null_latents_seeded_and_per_scale():
    shapes = [(6, 8), (5, 4)]
    a = nl.null_latents(shapes, 3, variance=[1.0, 2.0], rho=0.3, seed=5)
    b = nl.null_latents(shapes, 3, variance=[1.0, 2.0], rho=0.3, seed=5)
    assert [tuple(z.shape) for z in a] == [(3, 6, 8, 8), (3, 5, 4, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].dtype == torch.float32
    assert not torch.equal(a[0], nl.null_latents(shapes, 3, variance=[1.0, 2.0], rho=0.3, seed=6)[0])
    with pytest.raises(ValueError, match="one per scale"):
        nl.null_latents(shapes, 3, variance=[1.0, 2.0, 3.0])


def test_matched_nulls_reproduce_the_statistics():
    target = [dict(mean_m=1.08, sd_m=0.34, rho=0.15, rho_m=0.34, C=44), dict(mean_m=1.12, sd_m=0.42, rho=0.42,
                                                                            rho_m=0.42, C=48)]
    z = nl.null_latents([(44, 32), (48, 16)], 300, seed=0, **nl.null_parameters(target, "uneven variance"))
    for zz, want in zip(z, target):
        got = nl.latent_statistics(zz)
        assert got["C"] == want["C"]
        for key, tol in (("mean_m", 0.02), ("sd_m", 0.03), ("rho", 0.02), ("rho_m", 0.05)):
            assert got[key] == pytest.approx(want[key], abs=tol), key
    iid = nl.latent_statistics(nl.null_latents([(48, 16)], 300, seed=1)[0])
    assert iid["sd_m"] == pytest.approx(math.sqrt(2 / 48), rel=0.03)  # χ²_C / C
    assert abs(iid["rho"]) < 0.01 and abs(iid["rho_m"]) < 0.02
    # the pieces: variance only changes the variance; s = 0 when the spread is the χ² one
    kw = nl.null_parameters(target, "variance")
    assert kw == {"variance": [1.08, 1.12], "rho": [0.0, 0.0], "log_sd": [0.0, 0.0], "log_rho": [0.0, 0.0]}
    assert nl.uneven_log_sd(1.0, math.sqrt(2 / 48), 48) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="kind"):
        nl.null_parameters(target, "heavy tails")


def test_poisson_mean_ci():
    low, high = nl.poisson_mean_ci(0, 100)
    assert low == 0.0 and high == pytest.approx(-math.log(0.025) / 100, rel=1e-9)  # 3.689 / n
    low, high = nl.poisson_mean_ci(10, 1)  # Garwood: 4.795, 18.39 for k = 10
    assert (low, high) == (pytest.approx(4.7954, abs=1e-4), pytest.approx(18.3904, abs=1e-4))
    # coverage of the exact interval: at least 95 % for Poisson counts
    rng = np.random.default_rng(0)
    totals = rng.poisson(3.0 * 20, size=2000)
    cover = np.mean([lo <= 3.0 <= hi for lo, hi in (nl.poisson_mean_ci(int(t), 20) for t in totals)])
    assert cover >= 0.95
