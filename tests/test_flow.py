"""The U-shaped flow: exact parameter counts and shapes, invertibility, log-det against autograd."""

from __future__ import annotations

import pytest
import torch

from uflow_lib import build_uflow
from uflow_lib.flow_blocks import count_trainable_parameters
from uflow_lib.methods.uflow import latent_shapes


def test_mcait_parameter_count_and_latent_shapes():
    flow = build_uflow([768, 384], [28, 14], flow_steps=4)
    assert count_trainable_parameters(flow) == 12_216_480
    z, log_det = flow([torch.randn(1, 768, 28, 28), torch.randn(1, 384, 14, 14)])
    assert [tuple(t.shape) for t in z] == [(1, 816, 28, 28), (1, 192, 14, 14)]
    assert log_det.shape == (1,)
    # a bijection keeps the dimension: 816·784 + 192·196 = 768·784 + 384·196
    assert sum(t[0].numel() for t in z) == 677_376


def test_stage_parameter_counts_match_the_spec():
    # stage at 384 channels: 2,217,216; stage at 816 channels: 9,999,264 (counted by hand in chapter 3)
    coarse_only = build_uflow([384], [14])
    assert count_trainable_parameters(coarse_only) == 2_217_216
    fine_only = build_uflow([816], [28])
    assert count_trainable_parameters(fine_only) == 9_999_264


def test_resnet18_and_wrn_latent_shapes():
    assert latent_shapes([64, 128, 256], [64, 32, 16]) == [(84, 64, 64), (80, 32, 32), (128, 16, 16)]
    assert latent_shapes([256, 512, 1024], [64, 32, 16]) == [(336, 64, 64), (320, 32, 32), (512, 16, 16)]
    flow = build_uflow([64, 128, 256], [64, 32, 16])
    z, _ = flow([torch.randn(2, 64, 64, 64), torch.randn(2, 128, 32, 32), torch.randn(2, 256, 16, 16)])
    assert [tuple(t.shape[1:]) for t in z] == latent_shapes([64, 128, 256], [64, 32, 16])


def _perturbed_flow(channels, sizes, steps=2, dtype=torch.float64, amount=0.3):
    torch.manual_seed(0)
    flow = build_uflow(channels, sizes, flow_steps=steps).to(dtype)
    with torch.no_grad():  # move away from the initialisation so the test means something
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(amount * torch.randn_like(p))
    return flow


def test_round_trip_is_exact():
    # amount 0.1 moves the log-det by ~2x from its initial value: a trained-like flow, well conditioned
    flow = _perturbed_flow([16, 32], [8, 4], steps=4, dtype=torch.float32, amount=0.1)
    x = [torch.randn(3, 16, 8, 8), torch.randn(3, 32, 4, 4)]
    z, log_det = flow(x)
    x_back, log_det_rev = flow(z, rev=True)
    for a, b in zip(x, x_back):
        assert (a - b).norm() / a.norm() <= 1e-5
    torch.testing.assert_close(log_det_rev, -log_det, rtol=1e-5, atol=1e-4)


def test_log_det_matches_autograd_jacobian():
    channels, sizes = [4, 8], [4, 2]
    flow = _perturbed_flow(channels, sizes)
    n0, n1 = 4 * 4 * 4, 8 * 2 * 2
    x = torch.randn(n0 + n1, dtype=torch.float64)

    def f(v: torch.Tensor) -> torch.Tensor:
        z, _ = flow([v[:n0].view(1, 4, 4, 4), v[n0:].view(1, 8, 2, 2)])
        return torch.cat([t.flatten() for t in z])

    jac = torch.autograd.functional.jacobian(f, x)  # (96, 96)
    _, expected = torch.linalg.slogdet(jac)
    _, log_det = flow([x[:n0].view(1, 4, 4, 4), x[n0:].view(1, 8, 2, 2)])
    assert abs(log_det.item() - expected.item()) < 1e-8 * max(1.0, abs(expected.item()))
    assert abs(expected.item()) > 1.0  # the perturbation made the Jacobian far from volume-preserving


def test_permutations_are_seeded():
    a = build_uflow([8, 16], [4, 2], seed=1).state_dict()
    b = build_uflow([8, 16], [4, 2], seed=1).state_dict()
    c = build_uflow([8, 16], [4, 2], seed=2).state_dict()
    key = next(k for k in a if k.endswith("w_perm"))
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@pytest.mark.parametrize("channels,sizes,match", [
    ([8, 16], [4, 4], "twice the size"),
    ([8], [], "equal length"),
    ([8, 6], [4, 2], "at least 8"),
])
def test_bad_scales_are_explained(channels, sizes, match):
    with pytest.raises(ValueError, match=match):
        build_uflow(channels, sizes)
