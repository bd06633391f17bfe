"""MSFlow: hand-counted parameters, invertibility, log-det against autograd, clamp, encoding, loss, aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from uflow_lib.flow_blocks import count_trainable_parameters, nll_loss, positional_encoding_2d
from uflow_lib.methods.msflow import (RECIPE, FusionCoupling, MSFlow, MSFlowMethod, msflow_anomaly_maps,
                                      msflow_lr_lambda, pool_features, soft_clamp)


def _parallel_params(c: int, blocks: int, pos: int = 64) -> int:
    """AllInOneBlocks by hand: Conv3×3 d→d, LN(d), Conv3×3 d→2⌊c/2⌋ (d = ⌈c/2⌉ + pos), global affine 2c."""
    d, out = c - c // 2 + pos, 2 * (c // 2)
    return blocks * ((9 * d * d + d) + 2 * d + (9 * d * out + out) + 2 * c)


def _fusion_params(channels: list[int]) -> int:
    """Two cross-scale subnets: Conv3×3 H→H/4, LN, Conv3×3 H/4→H, per-scale heads Conv3×3 c_in→2 c_out."""
    total = 0
    for cin, cout in (([c - c // 2 for c in channels], [c // 2 for c in channels]),
                      ([c // 2 for c in channels], [c - c // 2 for c in channels])):
        h = sum(cin)
        q = h // 4
        total += (9 * h * q + q) + 2 * q + (9 * q * h + h)
        total += sum(9 * a * 2 * b + 2 * b for a, b in zip(cin, cout))
    return total


def test_hand_counts_match_the_docstring_numbers():
    # MobileNetV2 strides 4/8/16 at 256, pooled: 24/32/96 channels
    assert [_parallel_params(c, n) for c, n in zip([24, 32, 96], [2, 5, 8])] == [137_400, 404_880, 1_682_304]
    assert _fusion_params([24, 32, 96]) == 149_898
    # WRN50-2: 256/512/1024 channels
    assert [_parallel_params(c, n) for c, n in zip([256, 512, 1024], [2, 5, 8])] == [1_550_976, 11_993_280, 66_393_600]
    assert _fusion_params([256, 512, 1024]) == 19_618_368


def test_mobilenetv2_parameter_count_and_shapes():
    model = MSFlow([24, 32, 96], [32, 16, 8])
    assert [count_trainable_parameters(p) for p in model.parallel] == [137_400, 404_880, 1_682_304]
    assert count_trainable_parameters(model.fusion) == 149_898
    assert count_trainable_parameters(model) == 2_374_482
    x = [torch.randn(2, 24, 32, 32), torch.randn(2, 32, 16, 16), torch.randn(2, 96, 8, 8)]
    z, log_det = model(x)
    assert [tuple(t.shape) for t in z] == [tuple(t.shape) for t in x]
    assert log_det.shape == (2,) and torch.isfinite(log_det).all()


def test_wrn50_parameter_count_without_allocating():
    with torch.device("meta"):  # ~100 M parameters: count them without memory
        model = MSFlow([256, 512, 1024], [64, 32, 16])
    assert count_trainable_parameters(model) == 99_556_224


def test_odd_channel_counts_are_counted_by_the_same_rule():
    model = MSFlow([5, 7], [4, 2], blocks=(1, 2), pos_channels=8)
    expected = _parallel_params(5, 1, 8) + _parallel_params(7, 2, 8) + _fusion_params([5, 7])
    assert count_trainable_parameters(model) == expected


def _perturbed(model: torch.nn.Module, amount: float = 0.2, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move away from the initialisation so the checks mean something
        for p in model.parameters():
            if p.requires_grad:
                p.add_(amount * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def test_round_trip_and_inverse_log_det():
    model = _perturbed(MSFlow([8, 12, 16], [8, 4, 2], blocks=(2, 2, 3), pos_channels=8), amount=0.1)
    x = [torch.randn(3, 8, 8, 8), torch.randn(3, 12, 4, 4), torch.randn(3, 16, 2, 2)]
    z, log_det = model(x)
    x_back, log_det_rev = model.inverse(z)
    for a, b in zip(x, x_back):
        assert (a - b).norm() / a.norm() <= 1e-5
    torch.testing.assert_close(log_det_rev, -log_det, rtol=1e-5, atol=1e-4)
    assert log_det.abs().min() > 1.0  # not volume-preserving: the log-det is really tested


def test_log_det_matches_autograd_jacobian():
    channels, sizes = [4, 6], [4, 2]
    model = _perturbed(MSFlow(channels, sizes, blocks=(1, 2), pos_channels=4).double(), amount=0.3)
    n0 = 4 * 4 * 4
    v = torch.randn(n0 + 6 * 2 * 2, dtype=torch.float64)

    def split(u: torch.Tensor) -> list[torch.Tensor]:
        return [u[:n0].view(1, 4, 4, 4), u[n0:].view(1, 6, 2, 2)]

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.flatten() for t in model(split(u))[0]])

    _, expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, v))  # (88, 88)
    _, log_det = model(split(v))
    assert abs(log_det.item() - expected.item()) < 1e-9 * max(1.0, abs(expected.item()))
    assert abs(expected.item()) > 1.0


def test_fusion_log_det_is_the_sum_of_clamped_log_scales():
    # Heads with zero weights and bias (s = b, t = 0): s' = soft_clamp(b) everywhere, so the coupling scales by e^{s'}
    fusion = FusionCoupling([4, 6], seed=1).double()
    b = 3.0
    with torch.no_grad():
        for sub in (fusion.subnet_a, fusion.subnet_b):
            for head in sub.heads:
                head.weight.zero_()
                head.bias.zero_()
                head.bias[: head.out_channels // 2] = b
    x = [torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.randn(2, 6, 2, 2, dtype=torch.float64)]
    y, log_det = fusion(x)
    s = 1.9 * (2 / math.pi) * math.atan(b / 1.9)
    torch.testing.assert_close(log_det, torch.full((2,), s * (4 * 16 + 6 * 4), dtype=torch.float64))
    for xi, yi, perm in zip(x, y, (fusion.perm0, fusion.perm1)):  # y = permuted x · e^{s'}
        torch.testing.assert_close(yi, xi[:, perm] * math.exp(s))


def test_soft_clamp_bound_and_golden_values():
    s = torch.tensor([-1e6, -1.9, 0.0, 1.9, 1e6], dtype=torch.float64)
    out = soft_clamp(s)
    torch.testing.assert_close(out[1:4], torch.tensor([-0.95, 0.0, 0.95], dtype=torch.float64))  # 1.9·(2/π)·(π/4)
    assert (out.abs() < 1.9).all() and out[-1] > 1.9 - 1e-5
    grad = torch.autograd.functional.jacobian(soft_clamp, torch.zeros(1, dtype=torch.float64))
    assert abs(grad.item() - 2 / math.pi) < 1e-12  # slope 2/π at 0 (not 1)


def test_positional_encoding_properties():
    pe = positional_encoding_2d(16, 5, 7).double()
    assert pe.shape == (16, 5, 7) and pe.abs().max() <= 1.0
    # sin² + cos² = 1 for each (sin, cos) pair
    torch.testing.assert_close(pe[0::2] ** 2 + pe[1::2] ** 2, torch.ones(8, 5, 7, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # first half depends on the column only, second half on the row only
    assert torch.equal(pe[:8], pe[:8, :1].expand(-1, 5, -1)) and torch.equal(pe[8:], pe[8:, :, :1].expand(-1, -1, 7))
    # golden values: channel 0 = sin(x), channel 1 = cos(x); channel 2 = sin(x / 10000^(1/2)) (C/2 = 8, k = 1)
    assert abs(pe[0, 3, 2] - math.sin(2)) < 1e-6 and abs(pe[1, 0, 4] - math.cos(4)) < 1e-6
    assert abs(pe[2, 0, 5] - math.sin(5 / 10000 ** (2 / 8))) < 1e-6 and abs(pe[8, 3, 0] - math.sin(3)) < 1e-6
    # every position gets its own code
    codes = pe.flatten(1).T  # (35, 16)
    assert torch.cdist(codes, codes).add(torch.eye(35, dtype=torch.float64)).min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_2d(6, 2, 2)


def test_pool_features_halves_and_averages_with_zero_padding():
    x = torch.ones(1, 2, 64, 64)
    (p,) = pool_features([x])
    assert p.shape == (1, 2, 32, 32)
    assert p[0, 0, 0, 0] == pytest.approx(4 / 9) and p[0, 0, 5, 5] == pytest.approx(1.0)  # corner sees 5 zeros
    assert [t.shape[-1] for t in pool_features([torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 8, 8)])] == [16, 4]


def test_loss_by_hand():
    z = [torch.ones(2, 3, 2, 2), torch.full((2, 1, 1, 1), 2.0)]
    log_det = torch.tensor([1.0, -3.0])
    # per sample: ½(12·1 + 4) = 8; minus log-det → 7 and 11; mean 9
    assert nll_loss(z, log_det).item() == pytest.approx(9.0)


def test_aggregation_by_hand():
    # two scales already at the evaluation size (4×4): upsampling is the identity
    z1 = torch.zeros(1, 2, 4, 4)
    z1[0, :, 0, 0] = 2.0  # log p1 = -½·mean_c z² = -2 at (0, 0), 0 elsewhere
    z2 = torch.zeros(1, 1, 4, 4)
    z2[0, 0, 3, 3] = 1.0  # log p2 = -0.5 at (3, 3)
    maps = msflow_anomaly_maps([z1, z2], out_size=4, top_k=2 / 16)
    prod = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    prod[0, 0, 0, 0], prod[0, 0, 3, 3] = 1 - math.exp(-2), 1 - math.exp(-0.5)
    torch.testing.assert_close(maps.product_map, prod)
    assert maps.image_scores.item() == pytest.approx((2 - math.exp(-2) - math.exp(-0.5)) / 2)  # top 2 pixels
    # sum map: Q = e^{log p1 - 0} + e^{log p2 - 0}; max Q = 2
    summ = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    summ[0, 0, 0, 0], summ[0, 0, 3, 3] = 1 - math.exp(-2), 1 - math.exp(-0.5)
    torch.testing.assert_close(maps.sum_map, summ)
    torch.testing.assert_close(maps.product_score_map, -torch.log1p(-prod))
    # both scales unlikely at the same pixel: the product adds log-likelihoods, the sum adds probabilities
    z2[0, 0] = 0.0
    z2[0, 0, 0, 0] = 1.0
    maps = msflow_anomaly_maps([z1, z2], out_size=4, top_k=1 / 16)
    assert maps.product_map[0, 0, 0, 0].item() == pytest.approx(1 - math.exp(-2.5))
    assert maps.image_scores.item() == pytest.approx(1 - math.exp(-2.5))
    assert maps.sum_map[0, 0, 0, 0].item() == pytest.approx(2 - math.exp(-2) - math.exp(-0.5))
    assert maps.sum_map[0, 0, 1:].abs().max() == 0


def test_aggregation_normalises_each_image_and_upsamples():
    z = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]
    maps = msflow_anomaly_maps(z, out_size=32)
    assert maps.product_map.shape == maps.sum_map.shape == (3, 1, 32, 32) and maps.image_scores.shape == (3,)
    assert torch.all(maps.product_map.flatten(1).amin(dim=1) == 0)  # per-image normalisation: min A× = 0
    assert torch.all(maps.sum_map.flatten(1).amin(dim=1) == 0)
    shifted = msflow_anomaly_maps([z[0] * 0.5, z[1]], out_size=32)  # other likelihoods → other maps
    assert not torch.allclose(shifted.sum_map, maps.sum_map)


def test_learning_rate_schedule_golden_values():
    got = [msflow_lr_lambda(e) for e in (0, 6, 12, 69, 70, 89, 90, 99)]
    want = [0.1, 0.55, 1.0, 1.0, 0.33, 0.33, 0.33**2, 0.33**2]
    assert got == pytest.approx(want)
    assert (RECIPE.lr, RECIPE.batch_size, RECIPE.epochs, MSFlowMethod.grad_clip) == (1e-4, 8, 100, 2.0)
    assert MSFlowMethod().recipe("bottle") == MSFlowMethod().recipe("screw") == RECIPE  # one recipe for all
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=RECIPE.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, msflow_lr_lambda)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    for _ in range(70):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3.3e-5)


def test_bad_input_is_explained():
    model = MSFlow([4, 6], [4, 2], blocks=(1, 1), pos_channels=4)
    with pytest.raises(ValueError, match="pool_features"):
        model([torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)])
    with pytest.raises(ValueError, match="one entry per scale"):
        MSFlow([4, 6], [4, 2])  # default blocks (2, 5, 8) are for three scales
