"""Likelihood maps and image scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uflow_lib.methods.uflow import anomaly_map, anomaly_score_map
from uflow_lib.scoring import image_scores, joint_score_map, log_likelihood_maps, log_upsample, mean_z2


def test_log_likelihood_is_mean_over_channels():
    z = [torch.tensor([[1.0, 3.0]]).view(1, 2, 1, 1)]
    # −½ · (1 + 9)/2 = −2.5
    assert log_likelihood_maps(z)[0].item() == pytest.approx(-2.5)


def test_anomaly_map_hand_checked():
    z = [torch.zeros(1, 4, 2, 2), torch.full((1, 4, 1, 1), 2.0)]  # p = 1 and p = e^{-2}
    a = anomaly_map(z, out_size=8)
    torch.testing.assert_close(a, torch.full((1, 1, 8, 8), 1 - (1 + math.exp(-2)) / 2))


def test_log_domain_upsampling_matches_bilinear():
    torch.manual_seed(0)
    logp = -torch.rand(2, 1, 7, 5).double() * 5
    ref = F.interpolate(logp.exp(), size=(16, 16), mode="bilinear", align_corners=False).log()
    torch.testing.assert_close(log_upsample(logp, 16), ref)


def test_score_map_is_monotone_in_the_paper_map():
    torch.manual_seed(0)
    z = [torch.randn(2, 6, 8, 8) * 1.5, torch.randn(2, 12, 4, 4) * 1.5]
    a, s = anomaly_map(z, 32).double(), anomaly_score_map(z, 32)
    torch.testing.assert_close(1 - torch.exp(-s), a, atol=2e-7, rtol=0)


def test_strong_defects_do_not_tie():
    # two images with defects on both scales, of different strength: A saturates to exactly 1 in float32
    z = [torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 4, 4)]
    for b, v in enumerate((20.0, 30.0)):
        z[0][b, :, 2:6, 2:6] = v
        z[1][b, :, 1:3, 1:3] = v
    assert torch.all(anomaly_map(z, 32).flatten(1).amax(1) == 1.0)  # ties in the paper's form
    scores = image_scores(anomaly_score_map(z, 32))
    assert scores[1] > scores[0] > 100


def test_product_combination_is_sum_of_negative_log_likelihoods():
    z = [torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 1, 1), 2.0)]
    s = anomaly_score_map(z, 4, combine="product")
    torch.testing.assert_close(s, torch.full((1, 1, 4, 4), 0.5 + 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="combine"):
        anomaly_score_map(z, 4, combine="max")


def test_joint_score_weighs_each_scale_by_its_channels():
    # hand-derived: scale 0 has C = 2 channels of z = 1 (log p = -1/2), scale 1 has C = 3 channels of z = 2
    # (log p = -2): joint = 2 · 1/2 + 3 · 2 = 7, while the product of geometric means gives 1/2 + 2 = 2.5
    z = [torch.full((1, 2, 2, 2), 1.0), torch.full((1, 3, 1, 1), 2.0)]
    torch.testing.assert_close(joint_score_map(z, 4), torch.full((1, 1, 4, 4), 7.0, dtype=torch.float64))
    torch.testing.assert_close(anomaly_score_map(z, 4, combine="product"), torch.full((1, 1, 4, 4), 2.5,
                                                                                        dtype=torch.float64))


def test_joint_score_is_the_gaussian_negative_log_likelihood():
    """Without upsampling (every scale at out_size): -Σ_s Σ_c log N(z; 0, 1) minus the constant, as scipy says."""
    from scipy.stats import norm

    torch.manual_seed(0)
    z = [torch.randn(2, 5, 6, 6) * 2, torch.randn(2, 3, 6, 6)]
    nll = -sum(norm.logpdf(x.double().numpy()).sum(axis=1, keepdims=True) for x in z)  # (2, 1, 6, 6)
    const = 0.5 * (5 + 3) * math.log(2 * math.pi)
    np.testing.assert_allclose(joint_score_map(z, 6).numpy(), nll - const, rtol=1e-6)


def test_mean_z2_of_standard_normal_is_one():
    torch.manual_seed(0)
    z = [torch.randn(3, 64, 16, 16), torch.randn(3, 32, 8, 8)]
    assert torch.allclose(mean_z2(z), torch.ones(3), atol=0.03)


def test_mean_z2_pools_every_entry_of_every_scale():
    """Hand-checked: the mean runs over all entries of all scales together, not over the per-scale means."""
    fine = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]],  # (3, 1, 2, 2): 4 entries per image
                         [[[2.0, 2.0], [2.0, 2.0]]],
                         [[[0.0, 1.0], [2.0, 3.0]]]])
    coarse = torch.tensor([[3.0, 3.0], [0.0, 0.0], [1.0, -2.0]]).view(3, 2, 1, 1)  # 2 entries per image
    # image 0: Σz² = 4 + 18 = 22 over 6 entries → 22/6 (per-scale means would give (1 + 9)/2 = 5)
    # image 1: Σz² = 16 + 0 = 16 over 6 entries → 16/6 (per-scale: (4 + 0)/2 = 2)
    # image 2: Σz² = (0 + 1 + 4 + 9) + (1 + 4) = 19 over 6 entries → 19/6 (per-scale: (14/4 + 5/2)/2 = 3)
    torch.testing.assert_close(mean_z2([fine, coarse]), torch.tensor([22 / 6, 16 / 6, 19 / 6]))
    torch.testing.assert_close(mean_z2([coarse, fine]), torch.tensor([22 / 6, 16 / 6, 19 / 6]))  # order-free
