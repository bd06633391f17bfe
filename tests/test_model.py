"""UFlow model, feature normalisation and the per-sample loss."""

from __future__ import annotations

import pytest
import torch

from uflow_lib.flow_blocks import nll_loss
from uflow_lib.methods.uflow import ChannelStandardizer, UFlow


def test_loss_is_per_sample_mean_not_batch_sum():
    torch.manual_seed(0)
    z = [torch.randn(4, 3, 2, 2), torch.randn(4, 5, 1, 1)]
    log_det = torch.randn(4)
    per_sample = [0.5 * (z[0][b] ** 2).sum() + 0.5 * (z[1][b] ** 2).sum() - log_det[b] for b in range(4)]
    torch.testing.assert_close(nll_loss(z, log_det), torch.stack(per_sample).mean())
    # the batch-size independence that makes latents calibrated: same samples, batch of 1 vs 4
    single = torch.stack([nll_loss([t[b : b + 1] for t in z], log_det[b : b + 1]) for b in range(4)]).mean()
    torch.testing.assert_close(nll_loss(z, log_det), single)


def test_hand_checked_loss():
    z = [torch.full((2, 2, 1, 1), 2.0)]  # ½‖z‖² = ½·(4+4) = 4 per sample
    assert nll_loss(z, torch.tensor([1.0, 3.0])).item() == pytest.approx(4 - 2)


def test_standardizer_statistics_and_floor():
    torch.manual_seed(0)
    x = torch.randn(50, 4, 3, 3) * torch.tensor([1.0, 2.0, 3.0, 1e-6]).view(1, 4, 1, 1) + 5
    s = ChannelStandardizer(4).fit(x)
    y = s(x)
    torch.testing.assert_close(y[:, :3].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, :3].std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    # the near-dead channel's std is floored at 0.1 × median std = 0.1 × median(1e-6, 1, 2, 3) = 0.15, not 1e-6
    assert s.std[0, 3].item() == pytest.approx(0.1 * 1.5, rel=0.05)


def test_standardizer_must_be_fitted():
    with pytest.raises(RuntimeError, match="fit"):
        ChannelStandardizer(2)(torch.zeros(1, 2, 1, 1))


@pytest.mark.parametrize("norm,trainable_extra", [("standardize", 0), ("layernorm", 2 * (8 * 16 + 16 * 4)),
                                                   ("layernorm_noaffine", 0)])
def test_norm_options(norm, trainable_extra):
    m = UFlow([8, 16], [4, 2], flow_steps=2, norm=norm)
    bare = UFlow([8, 16], [4, 2], flow_steps=2, norm="identity")
    count = lambda mod: sum(p.numel() for p in mod.parameters() if p.requires_grad)  # noqa: E731
    assert count(m) - count(bare) == trainable_extra
    feats = [torch.randn(6, 8, 4, 4), torch.randn(6, 16, 2, 2)]
    m.fit_normalisation(feats)
    z, log_det = m(feats)
    assert [tuple(t.shape) for t in z] == [(6, 10, 4, 4), (6, 8, 2, 2)] and log_det.shape == (6,)


def test_wrong_feature_shapes_are_explained():
    m = UFlow([8, 16], [4, 2], flow_steps=1, norm="identity")
    with pytest.raises(ValueError, match="do not match"):
        m([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])
