"""SANFlow: parameter counts, fibre flows, IG formulas against scipy, losses and scores by hand, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special, stats

from uflow_lib.augmentation import synthesize_anomalies
from uflow_lib.flow_blocks import count_trainable_parameters
from uflow_lib.inverse_gamma import expected_normal_log_likelihood, gaussian_log_likelihood, ig_kl, ig_mode_variance
from uflow_lib.methods.sanflow import (SANFlow, SANFlowLossConfig, VarianceNet, sample_at_grid, sanflow_anomaly_maps,
                                       sanflow_log_prob, sanflow_loss, sanflow_loss_terms)

D = torch.float64


def _fibre_flow_params(c: int, blocks: int = 8, pos: int = 128) -> int:
    """By hand: d = ⌈c/2⌉ + pos; Linear d→2d, Linear 2d→2⌊c/2⌋, global affine scale and offset (2c)."""
    d, out = c - c // 2 + pos, 2 * (c // 2)
    return blocks * ((2 * d * d + 2 * d) + (2 * d * out + out) + 2 * c)


def test_hand_counts_match_the_docstring_numbers():
    assert [_fibre_flow_params(c) for c in (32, 96, 320)] == [408_576, 771_072, 2_813_952]
    assert [_fibre_flow_params(c) for c in (512, 1024, 2048)] == [5_523_456, 17_074_176, 59_049_984]
    assert sum(_fibre_flow_params(c, pos=512) for c in (512, 1024, 2048)) == 137_502_720
    # variance net: 3→64 conv, 3 × (64→64 conv + BN), 64→2 conv, all 3×3 with bias
    assert (27 * 64 + 64) + 3 * (576 * 64 + 64 + 128) + (576 * 2 + 2) == 114_114


def test_mobilenetv2_parameter_counts_and_shapes():
    model = SANFlow([32, 96, 320])
    assert [count_trainable_parameters(f) for f in model.flows] == [408_576, 771_072, 2_813_952]
    assert count_trainable_parameters(model.variance_net) == 114_114
    assert count_trainable_parameters(model) == 3_993_600 + 114_114
    x = [torch.randn(2, 32, 8, 8), torch.randn(2, 96, 4, 4), torch.randn(2, 320, 2, 2)]
    z, log_det = model(x)
    assert [t.shape for t in z] == [t.shape for t in x]
    assert [tuple(t.shape) for t in log_det] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]


@pytest.mark.parametrize("pos,total", [(128, 81_647_616), (512, 137_502_720)])
def test_wrn50_parameter_counts_without_allocating(pos, total):
    with torch.device("meta"):  # hard permutations: same count, no slow 2048-d random rotations
        model = SANFlow([512, 1024, 2048], cond_channels=pos, permute_soft=False)
    assert sum(count_trainable_parameters(f) for f in model.flows) == total


def _perturbed_model(amount: float = 0.3, permute_soft: bool = False) -> SANFlow:
    with torch.random.fork_rng():  # the layers' own init must not depend on which tests ran before
        torch.manual_seed(0)
        model = SANFlow([6], cond_channels=4, n_blocks=3, permute_soft=permute_soft).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.flows.parameters():
            if p.requires_grad:
                p.add_(amount * torch.randn(p.shape, generator=gen, dtype=D))
    return model


def test_fibre_log_det_matches_autograd_jacobian_and_round_trip():
    model = _perturbed_model()
    x = torch.randn(1, 6, 2, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    z, log_det = model.flow_layer(0, x)
    for i, j in [(0, 0), (1, 2)]:  # each fibre with its own positional condition

        def f(v: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[0, :, i, j] = v
            return model.flow_layer(0, y)[0][0, :, i, j]

        _, expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, x[0, :, i, j]))  # (6, 6)
        assert abs(log_det[0, i, j].item() - expected.item()) < 1e-9 * max(1.0, abs(expected.item()))
        assert abs(expected.item()) > 0.2  # not volume-preserving: the log-det is really tested
    x_back, log_det_rev = model.flow_layer(0, z, rev=True)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_det_rev, -log_det)
    assert not torch.allclose(log_det[0, 0, 0], log_det[0, 1, 2])  # the condition matters


def test_soft_permutations_are_orthogonal_to_float32_precision():
    # FrEIA 0.2 stores the random rotation in float32: orthogonal, and log-det-free, only to ~1e-7
    model = _perturbed_model(permute_soft=True)
    w = model.flows[0][0].w_perm.detach()  # (6, 6)
    err = (w @ w.T - torch.eye(6, dtype=D)).abs().max().item()
    assert 0 < err < 1e-6
    x = torch.randn(1, 6, 2, 3, dtype=D)
    z, log_det = model.flow_layer(0, x)

    def f(v: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[0, :, 1, 1] = v
        return model.flow_layer(0, y)[0][0, :, 1, 1]

    _, expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, x[0, :, 1, 1]))
    assert abs(log_det[0, 1, 1].item() - expected.item()) < 1e-5
    torch.testing.assert_close(model.flow_layer(0, z, rev=True)[0], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha,beta", [(3.0, 2.0), (59.5, 7.5), (80.0, 4.0), (1.5, 0.3)])
def test_kl_matches_numerical_integration(alpha, beta):
    q, p = stats.invgamma(alpha, scale=beta), stats.invgamma(59.5, scale=6.05)

    def integrand(u: float) -> float:  # KL = ∫ q (log q - log p) dσ², integrated over u = log σ² (heavy tails)
        v = math.exp(u)
        return q.pdf(v) * v * (q.logpdf(v) - p.logpdf(v))

    lo, hi = math.log(q.ppf(1e-15)), math.log(q.isf(1e-15))
    expected, _ = integrate.quad(integrand, lo, hi, limit=500, points=[math.log(q.median())])
    got = ig_kl(torch.tensor(math.log(alpha), dtype=D), torch.tensor(math.log(beta), dtype=D)).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_kl_is_nonnegative_and_zero_at_the_prior():
    la, lb = torch.meshgrid(torch.linspace(-2, 8, 41, dtype=D), torch.linspace(-4, 6, 41, dtype=D), indexing="ij")
    assert (ig_kl(la, lb) >= -1e-12).all()
    assert ig_kl(torch.tensor(math.log(59.5), dtype=D), torch.tensor(math.log(6.05), dtype=D)).abs() < 1e-10


def test_expected_log_likelihood_matches_monte_carlo():
    alpha, beta = 4.0, 3.0
    z = torch.tensor([[0.5, -1.5, 2.0]], dtype=D)  # one position, C = 3
    var = stats.invgamma(alpha, scale=beta).rvs(400_000, random_state=np.random.default_rng(0))
    samples = -1.5 * np.log(2 * np.pi * var) - float((z**2).sum()) / (2 * var)
    got = expected_normal_log_likelihood(z, torch.tensor([math.log(alpha)], dtype=D),
                                         torch.tensor([math.log(beta)], dtype=D)).item()
    assert abs(got - samples.mean()) < 4 * samples.std() / math.sqrt(len(samples))
    # the authors' coefficient C instead of C/2 changes only the log β - ψ(α) term
    full = expected_normal_log_likelihood(z, torch.tensor([math.log(alpha)], dtype=D),
                                          torch.tensor([math.log(beta)], dtype=D), log_beta_coefficient=3.0).item()
    assert full - got == pytest.approx(-1.5 * (math.log(beta) - special.digamma(alpha)))


def test_variance_net_shapes_start_at_prior_and_clamps():
    net = VarianceNet()
    log_a, log_b = net(torch.randn(2, 3, 16, 16))
    assert log_a.shape == log_b.shape == (2, 1, 16, 16)
    torch.testing.assert_close(ig_mode_variance(log_a, log_b), torch.full_like(log_a, 6.05 / 60.5))
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([100.0, 100.0]))
    log_a, log_b = net(torch.randn(1, 3, 8, 8))
    torch.testing.assert_close(log_a, torch.full_like(log_a, math.log(1e4)))  # log α clamped to [ln 1e-8, ln 1e4]
    assert torch.all(ig_mode_variance(log_a, log_b) == 5.0)  # mode variance clamped to 5
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([-100.0, 0.0]))
    torch.testing.assert_close(net(torch.randn(1, 3, 8, 8))[0], torch.full((1, 1, 8, 8), math.log(1e-8)))
    lv = ig_mode_variance(torch.tensor([math.log(3.0)]), torch.tensor([math.log(2.0)]))
    assert lv.item() == pytest.approx(0.5)  # β/(α+1)


def _hand_terms(z, la, lb, m, coef_full=False, double_softmax=False):
    """The loss terms written out with scipy, position by position."""
    out = []
    for zi, a, b, mi in zip(z, np.exp(la), np.exp(lb), m):
        C = len(zi)
        var = b / (a + 1)
        k = C if coef_full else C / 2
        e_log_pn = -C / 2 * np.log(2 * np.pi) - k * (np.log(b) - special.digamma(a)) - a / (2 * b) * np.sum(zi**2)
        pn = np.prod(stats.norm.pdf(zi, 0.0, np.sqrt(var)))
        pa = np.prod(stats.norm.pdf(zi, 1.0, np.sqrt(var)))
        log_p = (1 - mi) * e_log_pn + mi * np.log(pa)
        s = pn / (pn + pa)
        if double_softmax:
            probs = np.array([s, 1 - s])
            ce = -np.log(np.exp(probs[int(mi)]) / np.exp(probs).sum())
        else:
            ce = -((1 - mi) * np.log(s) + mi * np.log(1 - s))
        out.append((log_p, ce))
    return np.array(out)


def test_loss_by_hand_default_and_authors_form():
    z = np.array([[0.5, -1.0], [1.2, 0.8], [0.1, 0.3]])
    la, lb = np.log([3.0, 4.0, 59.5]), np.log([2.0, 0.5, 6.05])
    m, log_det = np.array([0.0, 1.0, 0.0]), np.array([0.3, -0.2, 0.1])
    kl = ig_kl(torch.tensor(la), torch.tensor(lb)).numpy()  # checked against quad above
    t = lambda a: torch.tensor(a, dtype=D)  # noqa: E731
    hand = _hand_terms(z, la, lb, m)
    terms = sanflow_loss_terms(t(z), t(la), t(lb), t(m))
    np.testing.assert_allclose(terms.log_p.numpy(), hand[:, 0], rtol=1e-12)
    np.testing.assert_allclose(terms.bce.numpy(), hand[:, 1], rtol=1e-10)
    expected = np.mean((-(hand[:, 0] + log_det) + kl + 0.2 * hand[:, 1]) / 2)
    assert sanflow_loss(t(z), t(log_det), t(la), t(lb), t(m)).item() == pytest.approx(expected, rel=1e-12)
    # the authors' form: C on log β - ψ(α), cross-entropy on softmaxed values, -logsigmoid of the sum
    hand = _hand_terms(z, la, lb, m, coef_full=True, double_softmax=True)
    x = (hand[:, 0] + log_det - kl - 0.2 * hand[:, 1]) / 2
    expected = np.mean(np.log1p(np.exp(-x)))
    got = sanflow_loss(t(z), t(log_det), t(la), t(lb), t(m), SANFlowLossConfig.authors())
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_anomalous_branch_uses_detached_variance():
    z = torch.randn(4, 3, dtype=D)
    for m, should_have_grad in ((1.0, False), (0.0, True)):
        lb = torch.zeros(4, dtype=D, requires_grad=True)
        terms = sanflow_loss_terms(z, torch.zeros(4, dtype=D), lb, torch.full((4,), m, dtype=D))
        (grad,) = torch.autograd.grad(terms.log_p.sum(), lb, allow_unused=True)
        assert (grad is not None and grad.abs().sum() > 0) == should_have_grad


def test_training_step_reaches_flows_and_variance_net():
    torch.manual_seed(0)
    model = SANFlow([8], cond_channels=4, n_blocks=2)
    images, masks = synthesize_anomalies(torch.rand(2, 3, 32, 32), 0, p=1.0)
    (z,), (log_det,) = model([torch.randn(2, 8, 4, 4)])
    ((la, lb),) = model.statistics(images, [(4, 4)])
    m = (sample_at_grid(masks, (4, 4)) > 0).float()[:, 0]  # (2, 4, 4)
    fib = z.permute(0, 2, 3, 1).reshape(-1, 8)  # (32, 8)
    loss = sanflow_loss(fib, log_det.flatten(), la.flatten(), lb.flatten(), m.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.flows[0][0].subnet[0].weight.grad.abs().sum() > 0
    assert model.variance_net.out.weight.grad.abs().sum() > 0


def test_score_and_cflow_aggregation_by_hand():
    z = torch.randn(2, 3, 2, 2, dtype=D)
    log_det = torch.randn(2, 2, 2, dtype=D)
    var = torch.rand(2, 2, 2, dtype=D) + 0.05
    expected = (stats.norm.logpdf(z.numpy(), 0.0, np.sqrt(var.numpy())[:, None]).sum(axis=1) + log_det.numpy()) / 3
    np.testing.assert_allclose(sanflow_log_prob(z, log_det, var).numpy(), expected, rtol=1e-12)
    # two layers at the evaluation size: exp(lp - max over the set), summed; A = max - map
    lp1 = torch.tensor([[[0.0, -1.0], [-2.0, -3.0]], [[-1.0, -1.0], [-1.0, -5.0]]], dtype=D) + 7.0
    lp2 = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]]], dtype=D) - 4.0
    maps, scores = sanflow_anomaly_maps([lp1, lp2], out_size=2)
    q = np.exp(lp1.numpy() - 7.0) + np.exp(lp2.numpy() + 4.0)
    np.testing.assert_allclose(maps[:, 0].numpy(), q.max() - q, rtol=1e-12)
    np.testing.assert_allclose(scores.numpy(), (q.max() - q).reshape(2, -1).max(axis=1))
    # corners-aligned bilinear upsampling: the centre of a 3×3 map is the mean of the 2×2 corners
    maps3, _ = sanflow_anomaly_maps([lp1[:1]], out_size=3)
    p = np.exp(lp1[0].numpy() - 7.0)
    assert maps3[0, 0, 1, 1].item() == pytest.approx(1.0 - p.mean())


# ------------------------------------------------------------------------------------------ synthetic anomalies


def test_augmentation_is_deterministic_and_touches_only_the_mask():
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a1, m1 = synthesize_anomalies(images, np.random.default_rng(3))
    a2, m2 = synthesize_anomalies(images, 3)
    a3, m3 = synthesize_anomalies(images, torch.Generator().manual_seed(5))
    a4, _ = synthesize_anomalies(images, torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2) and torch.equal(m1, m2) and torch.equal(a3, a4)
    assert not torch.equal(m1, synthesize_anomalies(images, 4)[1])
    for aug, mask in ((a1, m1), (a3, m3)):
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.shape == (8, 1, 64, 64)
        changed = (aug != images).any(dim=1, keepdim=True)
        assert not (changed & (mask == 0)).any()  # outside the mask: byte-identical
        assert changed[mask == 1].float().mean() > 0.95  # inside: (almost) every pixel changed


@pytest.mark.parametrize("kind", ["rectangle", "circle"])
def test_blend_mask_is_exactly_where_the_source_shows(kind):
    images, sources = torch.zeros(6, 3, 48, 48), torch.ones(1, 3, 48, 48)
    aug, mask = synthesize_anomalies(images, 1, p=1.0, sources=sources, kinds=[kind])
    assert torch.equal((aug > 0).all(dim=1, keepdim=True), mask == 1)
    assert aug.max() <= 1.0 and (mask.flatten(1).sum(dim=1) > 0).all()
    assert ((aug > 0) & (aug < 0.999)).any()  # soft edges: partial blends exist


def test_scar_is_thin_and_from_the_same_image():
    images = torch.rand(6, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    aug, mask = synthesize_anomalies(images, 2, p=1.0, kinds=["scar"])
    area = mask.flatten(1).sum(dim=1)
    assert ((area >= 2 * 10 * 0.5) & (area <= 16 * 25 * 1.2)).all()  # width 2–16, length 10–25 at 256²


def test_fraction_of_augmented_images():
    _, masks = synthesize_anomalies(torch.rand(400, 3, 32, 32), 0)
    frac = (masks.flatten(1).amax(dim=1) > 0).float().mean().item()
    assert 0.68 < frac < 0.82  # p = 0.75, binomial sd ≈ 0.022
    unchanged, none = synthesize_anomalies(torch.rand(4, 3, 32, 32), 0, p=0.0)
    assert none.sum() == 0


def test_mask_sampled_at_grid_points():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0, 0] = 1.0  # grid point (0, 0) of a 4×4 grid samples pixel (0, 0)
    mask[0, 0, 3, 3] = 1.0  # ... pixel (3, 3) is between grid points 1 (pixel 2) and 2 (pixel 4): not sampled
    m = sample_at_grid(mask, (4, 4))
    assert m[0, 0, 0, 0] == 1.0 and m.sum() == 1.0


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        synthesize_anomalies(torch.rand(3, 32, 32), 0)
    with pytest.raises(ValueError, match="too small"):
        synthesize_anomalies(torch.rand(1, 3, 6, 6), 0, p=1.0, kinds=["scar"])
    with pytest.raises(TypeError, match="Generator"):
        synthesize_anomalies(torch.rand(1, 3, 32, 32), 0.5)
    with pytest.raises(ValueError, match="objective"):
        SANFlowLossConfig(objective="mean")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        sanflow_loss(torch.randn(4, 3), torch.zeros(4), torch.zeros(4), torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="expects"):
        SANFlow([4], cond_channels=4, n_blocks=1)([torch.randn(1, 5, 2, 2)])
    assert gaussian_log_likelihood(torch.zeros(1, 2), torch.ones(1)).item() == pytest.approx(-math.log(2 * math.pi))


def test_soft_permutations_only_up_to_1024_channels_by_default():
    model = SANFlow([6, 1030], cond_channels=4, n_blocks=1)
    narrow, wide = (flow.module_list[0].w_perm.detach().flatten() for flow in model.flows)
    assert not set(narrow.unique().tolist()) <= {0.0, 1.0}  # a random rotation (CFLOW-AD's)
    assert set(wide.unique().tolist()) == {0.0, 1.0}  # a hard permutation: scipy's O(C³) draw skipped


def test_fast_paths_compute_the_same_loss_and_gradients(monkeypatch):
    """The factored condition and channels-last convolutions (FAST_PATHS) change the computation, not the loss:
    the same loss and gradients as the plain path on one batch, and the same latents in both directions."""
    from uflow_lib.features import build_extractor
    from uflow_lib.methods import sanflow as sf

    torch.manual_seed(0)
    extractor = build_extractor("mobilenetv2", pretrained=False, out_indices=(2, 3, 4))
    model = sf.SANFlow(extractor.channels, seed=0, sizes=[8, 4, 2], variance_size=32)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    method = sf.SANFlowMethod()

    def loss_and_grads(fast: bool):
        monkeypatch.setattr(sf, "FAST_PATHS", fast)
        model.zero_grad()
        loss = method.loss(model, extractor, dict(images=images, rng=np.random.default_rng(5)))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (l_fast, g_fast), (l_plain, g_plain) = loss_and_grads(True), loss_and_grads(False)
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) == sum(p.requires_grad for p in model.parameters())
    for name in g_fast:
        err = (g_fast[name] - g_plain[name]).abs().max().item()
        assert err <= 1e-4 * g_plain[name].abs().max().item() + 1e-7, (name, err, g_plain[name].abs().max().item())
    x = torch.randn(2, extractor.channels[0], 8, 8)
    for fast in (True, False):
        monkeypatch.setattr(sf, "FAST_PATHS", fast)
        z, log_det = model.flow_layer(0, x)
        back, _ = model.flow_layer(0, z, rev=True)
        torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)
    subnet = next(m for m in model.modules() if isinstance(m, sf.FactoredSubnet))
    assert subnet.period is None  # the plain path was the last one run
    assert list(dict(subnet.named_parameters())) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # nn.Sequential's keys


# ------------------------------------------------------------------- the fast paths' pieces, one by one (float64)


@pytest.mark.parametrize("channels,soft", [(5, True), (6, False)])
def test_fused_coupling_is_freia_with_its_exact_gradient(channels, soft):
    """fibre_flow_fused = FrEIA's SequenceINN of AllInOneBlocks with the factored subnets (odd and even channels,
    soft and hard permutations): bit for bit the same latents, log-dets and gradients of every parameter and of the
    fibres, in float32 and float64."""
    from uflow_lib.flow_blocks import positional_encoding_2d
    from uflow_lib.methods import sanflow as sf

    torch.manual_seed(0)
    P, (B, h, w) = 4, (3, 2, 3)
    flow = sf.build_fibre_flow(channels, cond_channels=P, n_blocks=3, permute_soft=soft)
    with torch.no_grad():  # move every parameter off its initial value (the last layers start at zero)
        for prm in flow.parameters():
            if prm.requires_grad:
                prm.add_(0.3 * torch.randn_like(prm))
    for sub in (m for m in flow.modules() if isinstance(m, sf.FactoredSubnet)):
        sub.period = h * w  # FrEIA's path with the factored subnets, as SANFlow.flow_layer sets it
    pe = positional_encoding_2d(P, h, w).permute(1, 2, 0).reshape(h * w, P)  # (p, P)
    for dtype in (torch.float32, D):
        flow.to(dtype)
        cond = pe.to(dtype).repeat(B, 1)  # (n, P): image-major rows
        fibres = torch.randn(B * h * w, channels, dtype=dtype, requires_grad=True)
        assert all(sf.fused_coupling_applies(b, len(fibres), h * w) for b in flow.module_list)
        assert not sf.fused_coupling_applies(flow.module_list[0], len(fibres) + 1, h * w)  # not whole images
        params = [prm for prm in flow.parameters() if prm.requires_grad]

        def run(fused):
            z, log_det = sf.fibre_flow_fused(flow, fibres, cond, h * w) if fused else flow(fibres, c=[cond])
            loss = (z.sin() * torch.arange(channels, dtype=dtype)).sum() + (log_det * log_det.cos()).sum()
            return [z, log_det, *torch.autograd.grad(loss, [fibres, *params])]

        for got, want in zip(run(True), run(False)):
            assert torch.equal(got, want)
    pe = pe.double()
    x = torch.randn(2 * h * w, channels, dtype=D, requires_grad=True)
    blk = flow.module_list[0]
    sub = blk.subnet
    args = (x, sub[0].weight, sub[0].bias, sub[2].weight, sub[2].bias, blk.global_scale, blk.global_offset)

    def both_outputs(x, *a):
        z, log_jac = sf._FusedCouplingFunction.apply(x, pe.repeat(2, 1), *a, blk.w_perm, blk.clamp, h * w)
        return z.sin().sum(dim=1) + log_jac  # (n,)

    assert torch.autograd.gradcheck(both_outputs, args)


def test_fused_coupling_is_used_only_where_it_is_exact(monkeypatch):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    from uflow_lib.methods import sanflow as sf

    flow = Ff.SequenceINN(4)
    flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(4,), subnet_constructor=lambda i, o: sf.subnet_fc(i, o, 4),
                global_affine_type="SIGMOID")
    assert not sf.fused_coupling_applies(flow.module_list[0], 6, 3)  # another global affine
    model = SANFlow([4], cond_channels=4, n_blocks=2)
    real, calls = sf.fibre_flow_fused, []
    monkeypatch.setattr(sf, "fibre_flow_fused", lambda *a: calls.append(a[-1]) or real(*a))
    x = torch.randn(2, 4, 3, 3)
    z, _ = model.flow_layer(0, x)  # the forward direction goes through it, one image (9 positions) per period
    assert calls == [9]
    back, _ = model.flow_layer(0, z, rev=True)  # the inverse does not
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(sf, "FAST_PATHS", False)
    model.flow_layer(0, x)  # nor the plain path
    assert calls == [9]


def test_factored_subnet_function_is_the_plain_subnet_with_its_exact_gradient():
    from uflow_lib.methods import sanflow as sf

    torch.manual_seed(0)
    k, P, p, B = 3, 4, 5, 3
    inp = torch.randn(B * p, k + P, dtype=D)
    inp[:, k:] = torch.randn(p, P, dtype=D).repeat(B, 1)  # the condition repeats every p rows
    inp.requires_grad_()
    net = sf.FactoredSubnet(k + P, 6, P).double()
    args = (inp, net[0].weight, net[0].bias, net[2].weight, net[2].bias)
    assert torch.autograd.gradcheck(lambda *a: sf._FactoredSubnetFunction.apply(*a, k, p), args)
    net.period = p
    torch.testing.assert_close(net(inp), torch.nn.Sequential.forward(net, inp), rtol=1e-12, atol=1e-12)
    # gradients of the weights equal the plain subnet's (the condition's rows p.. are never read: zero there)
    g_fast = torch.autograd.grad(net(inp).square().sum(), [*net.parameters(), inp])
    g_plain = torch.autograd.grad(torch.nn.Sequential.forward(net, inp).square().sum(), [*net.parameters(), inp])
    for a, b in zip(g_fast[:-1], g_plain[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fast[-1][:, :k], g_plain[-1][:, :k], rtol=1e-12, atol=1e-12)


def test_batch_norm_relu_matches_torch_and_updates_running_statistics():
    from uflow_lib.methods.sanflow import _BatchNormReLUFunction, batch_norm_relu

    torch.manual_seed(0)
    x = (torch.randn(3, 5, 6, 7, dtype=D) * 2 + 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, ref = torch.nn.BatchNorm2d(5).double(), torch.nn.BatchNorm2d(5).double()
    weight, bias = torch.rand(5) + 0.5, torch.randn(5)
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    y = batch_norm_relu(x, ours)
    y_ref = torch.relu(ref(x))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, ours.weight, ours.bias], g)
    want = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
    rows = torch.randn(6, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, w, b: _BatchNormReLUFunction.apply(r, w, b, 1e-5)[0],
                                    (rows, torch.rand(2, dtype=D, requires_grad=True) + 0.5,
                                     torch.randn(2, dtype=D, requires_grad=True)))


def test_batch_norm_relu_sums_precisely_in_float32():
    """Over 32,768 channels-last pixels, its float32 output and gradients are within 2e-6 of float64 (PyTorch's
    channels-last kernel, which sums pixel after pixel, is off by about 1e-5 here)."""
    from uflow_lib.methods.sanflow import batch_norm_relu

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 16, 64, 64, generator=gen) * 0.5 + 3.0).contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 16, 64, 64, generator=gen) * (torch.rand(8, 1, 64, 64, generator=gen) < 0.06)

    def run(x, g):
        x = x.detach().requires_grad_()
        bn = torch.nn.BatchNorm2d(16).to(x.dtype)
        y = batch_norm_relu(x, bn)
        return [y, *torch.autograd.grad(y, [x, bn.weight], g)]

    for got, want in zip(run(x, g), run(x.double(), g.double())):
        assert (got.double() - want).abs().max() <= 2e-6 * want.abs().max()


@pytest.mark.parametrize("size,grids", [(16, [(4, 4), (2, 2)]), (20, [(7, 5), (20, 20), (3, 9)])])
def test_convolution_pieces_equal_conv2d(size, grids):
    from uflow_lib.methods.sanflow import conv3x3_at, conv3x3_rows

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=gen, dtype=D)
    w, b = torch.randn(4, 3, 3, 3, generator=gen, dtype=D), torch.randn(4, generator=gen, dtype=D)
    full = F.conv2d(x, w, b, padding=1)  # (2, 4, size, size)
    rows = conv3x3_rows(x, w, b)
    torch.testing.assert_close(rows.view(2, size, size, 4).permute(0, 3, 1, 2), full, rtol=1e-12, atol=1e-12)
    for got, grid in zip(conv3x3_at(x, w, b, grids), grids):
        torch.testing.assert_close(got, sample_at_grid(full, grid), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_variance_net_fast_and_plain_agree(monkeypatch, training):
    from uflow_lib.methods import sanflow as sf

    torch.manual_seed(0)
    net = sf.VarianceNet(width=8).double().train(training)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.3)  # (zero at the start: nothing would reach the trunk)
    x = torch.randn(2, 3, 24, 24, dtype=D, generator=torch.Generator().manual_seed(1))
    sizes = [(6, 6), (3, 3), (5, 7)]

    def run(fast):
        monkeypatch.setattr(sf, "FAST_PATHS", fast)
        net.zero_grad()
        stats = net.sampled(x, sizes)
        full = net(x)
        loss = sum((a * (i + 1)).sin().sum() + b.cos().sum() for i, (a, b) in enumerate(stats))
        loss.backward()
        return [t for s in stats for t in s] + list(full) + [p.grad.clone() for p in net.parameters()]

    buffers = [b.clone() for b in net.buffers()]
    fast = run(True)
    buffers_fast = [b.clone() for b in net.buffers()]
    for b, saved in zip(net.buffers(), buffers):
        b.copy_(saved)
    plain = run(False)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for a, b in zip(buffers_fast, net.buffers()):  # running statistics updated alike (twice: sampled + forward)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bf16_option_is_off_by_default_and_not_exact(monkeypatch):
    from uflow_lib.methods import sanflow as sf

    assert sf.BF16_VARIANCE_CONVS is False
    torch.manual_seed(0)
    net = sf.VarianceNet(width=16)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.3)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(sf, "FAST_PATHS", True)
    exact = net.sampled(x, [(4, 4)])[0][1]
    monkeypatch.setattr(sf, "BF16_VARIANCE_CONVS", True)
    rounded = net.sampled(x, [(4, 4)])[0][1]
    assert 0 < (rounded - exact).abs().max() < 0.1 * exact.abs().max()
