r"""SANFlow: split base distributions for synthetic anomalies and predicted variances (book chapter 7).

SANFlow (Kim et al.) builds on CFLOW-AD: per backbone layer a 1-D conditional flow maps each feature vector
("fibre") :math:`x \in \mathbb R^C` with its 2-D positional encoding to :math:`z` (:func:`build_fibre_flow`: 8
AllInOneBlocks, subnet Linear d→2d → ReLU → Linear, clamp 1.9). It changes two things:

1. **Split base distributions.** Training images get synthetic anomalies with a mask :math:`m`
   (:func:`uflow_lib.augmentation.synthesize_anomalies`). Normal positions go to :math:`\mathcal N(0, \sigma^2 I)`,
   anomalous ones to :math:`\mathcal N(\mathbf 1, \sigma^2 I)`: :math:`\log p = (1-m) \log p_n + m \log p_a`.
   (Augmented features change every step: they cannot be cached like U-Flow's.)
2. **Statistic-aware variances.** :class:`VarianceNet` maps the normalised image to per-pixel
   :math:`\log\alpha, \log\beta` (:mod:`uflow_lib.inverse_gamma`) of an inverse gamma :math:`\sigma^2 \sim IG(\alpha, \beta)`; one map serves all
   layers (sampled nearest at each grid, :func:`sample_at_grid`). :math:`\log\alpha \in [\ln 10^{-8}, \ln 10^4]`;
   the variance used is the mode :math:`\beta/(\alpha+1) \le 5`; the anomalous branch uses it detached.

Per position with :math:`C` channels (:func:`sanflow_loss_terms`):

.. math::

    \mathbb E_{IG}[\log p_n] &= -\tfrac C2 \log 2\pi - \tfrac C2 (\log\beta - \psi(\alpha))
        - \tfrac{\alpha}{2\beta} \textstyle\sum_c z_c^2, \\
    L_{KL} &= KL\big(IG(\alpha, \beta) \,\|\, IG(\alpha_0{=}59.5, \beta_0{=}6.05)\big), \qquad
    L_{BCE} = \mathrm{BCE}\big(s(z), 1 - m\big),\; s = \tfrac{p_n}{p_n + p_a}.

The library's default objective (:func:`sanflow_loss`) is the plain mean over positions of
:math:`\big[-(\log p + \log|\det J|) + L_{KL} + 0.2\, L_{BCE}\big] / C`.

Quirks of the authors' code, and the choice made here (:class:`SANFlowLossConfig`; ``.authors()`` keeps all):

- **C instead of C/2** on :math:`\log\beta - \psi(\alpha)`: *fixed* (default ``log_beta_coefficient="half"``).
  :math:`C/2` is the exact expectation of :math:`\log \mathcal N(z; 0, \sigma^2 I)` under the IG; with
  :math:`C` the term is no longer a likelihood, and its minimiser in :math:`\beta` halves the variance
  (:math:`\beta^* = \alpha \lVert z\rVert^2 / 2k`, so the mode is :math:`\approx \lVert z\rVert^2/2C` instead of
  :math:`\lVert z\rVert^2/C`). Offered as ``"full"``.
- **Double softmax**: the authors apply a softmax cross-entropy to :math:`[p_n, p_a]` that are already softmax
  probabilities, so the loss stays in [0.31, 1.31] and its gradient is small even for confident mistakes.
  *Fixed* (default): the BCE with logit :math:`\log p_n - \log p_a`, which *is* the cross-entropy of
  :math:`s(z)`, computed stably. Offered as ``double_softmax=True``.
- **Objective**: the authors train :math:`-\operatorname{logsigmoid}((\log p + \log|\det J| - L_{KL} -
  0.2\,L_{CE})/C)` (CFLOW-AD's form), which stops pushing positions whose per-dimension log-likelihood is already
  high. Default here: the plain weighted sum above, a negative log-likelihood plus two regularisers whose
  terms can be read off one by one. Offered as ``objective="logsigmoid"``.

Other choices: positional encoding of 128 channels (CFLOW-AD's default, used for the measurements here; the
authors' SANFlow code uses 512); FrEIA soft (random orthogonal) permutations as CFLOW-AD; the variance net's
output layer starts with zero weights and bias :math:`(\ln\alpha_0, \ln\beta_0)`, so training starts exactly at
the prior (mode 0.1 everywhere).

Anomaly score (:func:`sanflow_log_prob`, :func:`sanflow_anomaly_maps`): the normal-branch log-likelihood per
dimension with the predicted (mode) variance plus the log-det, :math:`(\log \mathcal N(z; 0, \sigma^2 I) +
\log|\det J|)/C`, aggregated as CFLOW-AD: per layer subtract its maximum over the whole test set, exponentiate,
upsample bilinearly, sum over layers; :math:`A = \max - \text{map}`; image score :math:`\max A`.

Trainable parameters (8 blocks, 128 positional channels; counted by hand in ``tests/test_sanflow.py``):

- MobileNetV2 strides 8/16/32 (32/96/320 channels): flows 408,576 + 771,072 + 2,813,952 = **3,993,600**;
- WRN50-2 layers 2–4 (512/1024/2048): 5,523,456 + 17,074,176 + 59,049,984 = **81,647,616**
  (137,502,720 with the authors' 512 positional channels);
- :class:`VarianceNet` (width 64): **114,114**.

References
----------
D. Kim, S. Baik, T. H. Kim, "SANFlow: Semantic-Aware Normalizing Flow for Anomaly Detection and
Localization", NeurIPS 2023. D. Gudovskiy, S. Ishizaka, K. Kozuka, "CFLOW-AD", WACV 2022.
C.-L. Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn

from ..augmentation import synthesize_anomalies
from ..config import TrainConfig
from ..flow_blocks import CLAMP, positional_encoding_2d
from ..inverse_gamma import expected_normal_log_likelihood, gaussian_log_likelihood, ig_kl, ig_mode_variance
from ..runtime import keep_freed_memory, numpy_global_seed
from .base import FlowMethod, Recipe, check_cnn_backbone

__all__ = [
    "FAST_PATHS", "BF16_VARIANCE_CONVS", "sample_at_grid", "VarianceNet", "batch_norm_relu", "conv3x3_rows",
    "conv3x3_at", "FactoredSubnet", "subnet_fc", "fused_coupling_applies", "fibre_flow_fused",
    "build_fibre_flow", "SANFlow",
    "split_bce", "SANFlowLossConfig",
    "SANFlowLossTerms", "sanflow_loss_terms", "sanflow_loss", "sanflow_log_prob", "sanflow_anomaly_maps", "RECIPE",
    "SANFlowMethod",
]

LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-8), math.log(1e4)
#: The faster computation of the same losses: the condition factored out of the subnets (:class:`FactoredSubnet`)
#: and, in the forward direction, each coupling block as one function (:func:`fibre_flow_fused`, bit for bit FrEIA's
#: values and gradients); in the variance network channels-last convolutions, batch norms with pairwise sums and the
#: ReLU fused (:func:`batch_norm_relu`), the input convolution as a matrix product (:func:`conv3x3_rows`) and the
#: output convolution only where the loss samples it (:meth:`VarianceNet.sampled`); a channels-last backbone; in
#: training, freed memory kept for reuse (:func:`uflow_lib.runtime.keep_freed_memory`). False: the plain computation,
#: kept so that benchmarks/bench_sanflow_speed.py measures the speed-up in one run.
FAST_PATHS = True
#: An option that does NOT compute the same losses: the variance network's w → w convolutions in bfloat16
#: (autocast; the batch norms stay in float32), faster on CPUs with AVX512-BF16 but with gradients far less precise
#: (benchmarks/bench_sanflow_speed.py measures both). Off by default; used only with :data:`FAST_PATHS`.
BF16_VARIANCE_CONVS = False

#: Widest layer that gets FrEIA's soft permutations by default (see :class:`SANFlow`)
SOFT_PERMUTATION_MAX_CHANNELS = 1024


def sample_at_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest sampling of a full-resolution map ``(B, k, H, W)`` at a feature grid → ``(B, k, h, w)``.

    Used for the α/β maps and for the masks: a feature position is anomalous where its sample is > 0,
    ``m = (sample_at_grid(masks, (h, w)) > 0).float()``.
    """
    return F.interpolate(x, size=size, mode="nearest")  # (B, k, h, w)


# ------------------------------------------------------------------------------------- variance network + flows


def _fast_layout(images: torch.Tensor) -> torch.Tensor:
    """``images`` in channels-last memory (same values; convolutions run faster) when :data:`FAST_PATHS`."""
    return images.contiguous(memory_format=torch.channels_last) if FAST_PATHS else images


class VarianceNet(nn.Module):
    r"""Inverse-gamma statistic network: normalised image ``(B, 3, H, W)`` → ``(log α, log β)``, each
    ``(B, 1, H, W)``.

    Conv3×3 3→w → ReLU, residual [3 × (Conv3×3 → BN → ReLU)], Conv3×3 w→2; :math:`\log\alpha` clamped to
    :math:`[\ln 10^{-8}, \ln 10^4]`. Width 64: 1,792 + 3·(36,928 + 128) + 1,154 = 114,114 parameters.
    """

    def __init__(self, width: int = 64, n_blocks: int = 3, prior: tuple[float, float] = (59.5, 6.05)) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(n_blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 2, 3, padding=1)
        with torch.no_grad():  # start exactly at the prior everywhere: mode β0/(α0+1) = 0.1
            self.out.weight.zero_()
            self.out.bias.copy_(torch.tensor([math.log(prior[0]), math.log(prior[1])]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.out(self.trunk(images))  # (B, 2, H, W)
        return o[:, :1].clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX), o[:, 1:]

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Everything before the output convolution: ``(B, 3, H, W)`` → ``h + blocks(h)``, ``(B, w, H, W)``.

        With :data:`FAST_PATHS`: channels-last activations (the same convolutions, faster with oneDNN), the
        3-channel input convolution as one matrix product on 3×3 patches (:func:`conv3x3_rows`), each batch norm
        and its ReLU in one function with precise sums in training (:func:`batch_norm_relu`), ReLUs in place.
        """
        if not FAST_PATHS:
            h = F.relu(self.inp(images))  # (B, w, H, W)
            return h + self.blocks(h)
        B, _, H, W = images.shape
        h = conv3x3_rows(images, self.inp.weight, self.inp.bias).relu_()  # (B·H·W, w)
        h = h.view(B, H, W, -1).permute(0, 3, 1, 2)  # (B, w, H, W), channels-last
        t = h
        for i in range(0, len(self.blocks), 3):  # [Conv, BN, ReLU] × n_blocks
            if BF16_VARIANCE_CONVS:  # the option above: not the same losses
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.blocks[i](t)
                y = y.float()
            else:
                y = self.blocks[i](t)
            bn = self.blocks[i + 1]
            t = batch_norm_relu(y, bn) if bn.training else bn(y).relu_()
        return h + t

    def sampled(self, images: torch.Tensor,
                sizes: Sequence[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(log α, log β)`` sampled nearest at each grid of ``sizes``, each ``(B, h, w)``: the same values as
        :func:`sample_at_grid` applied to :meth:`forward`'s maps.

        With :data:`FAST_PATHS` the output convolution (w → 2 channels) is computed only where it is sampled: one
        matrix product gives every tap's contribution ``u = t W_tap`` (``(B, H, W, 9·2)``) and each sampled pixel
        sums its nine taps (:func:`conv3x3_at`).
        """
        if not FAST_PATHS:
            log_ab = torch.cat(self(images), dim=1)  # (B, 2, H, W)
            return [tuple(sample_at_grid(log_ab, tuple(s)).unbind(dim=1)) for s in sizes]
        t = self.trunk(images)  # (B, w, H, W)
        out = []
        for o in conv3x3_at(t, self.out.weight, self.out.bias, [tuple(s) for s in sizes]):  # each (B, 2, h, w)
            out.append((o[:, 0].clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX), o[:, 1]))
        return out


def batch_norm_relu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(bn(x))`` in training mode for channels-last ``x`` ``(B, C, H, W)`` (updates ``bn``'s running
    statistics as it does) → ``(B, C, H, W)``, channels-last.

    PyTorch's channels-last batch norm accumulates its per-channel sums pixel after pixel in float32, so over the
    B·H·W pixels of the variance network its statistics and gradients lose precision (about a hundred times the
    contiguous kernel's error), which the backward pass of the convolutions before it amplifies. Here the sums are
    torch's pairwise ones over rows ``(B·H·W, C)`` (:class:`_BatchNormReLUFunction`); one (B·H·W, C) buffer in the
    forward pass and two in the backward pass, as batch norm + ReLU.
    """
    B, C, H, W = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # a view when x is channels-last
    y, mean, var = _BatchNormReLUFunction.apply(rows, bn.weight, bn.bias, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = rows.shape[0]
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(var * (n / max(n - 1, 1)), alpha=m)  # unbiased, as PyTorch
    return y.view(B, H, W, C).permute(0, 3, 1, 2)


class _BatchNormReLUFunction(torch.autograd.Function):
    """Training-mode batch norm over rows ``x`` ``(n, C)`` followed by a ReLU → ``(relu(y), mean, biased var)``;
    the statistics are pairwise sums over the rows, the backward pass is the batch norm's, written out."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        n = x.shape[0]
        mean = x.sum(dim=0) / n  # (C,)
        buf = (x - mean).square_()  # (n, C): the only (n, C) buffer of the forward pass
        var = buf.sum(dim=0) / n
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight
        y = torch.addcmul(bias, torch.sub(x, mean, out=buf), scale, out=buf).clamp_min_(0)
        ctx.save_for_backward(x, y, mean, invstd, scale)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, y, mean, invstd, scale = ctx.saved_tensors
        n = x.shape[0]
        g = torch.ops.aten.threshold_backward(grad, y, 0)  # the ReLU's: zero where y = 0
        g_bias = g.sum(dim=0)
        buf = (x - mean).mul_(g)
        g_weight = buf.sum(dim=0) * invstd  # sum of g · x_hat
        # dL/dx = scale · (g - mean(g) - x_hat · mean(g · x_hat)), x_hat = (x - mean) · invstd
        g_x = torch.addcmul(-g_bias / n * scale, torch.sub(x, mean, out=buf), -g_weight / n * invstd * scale,
                            out=buf).addcmul_(g, scale)
        return g_x, g_weight, g_bias, None


def conv3x3_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3×3 kernel as one matrix product on the 3×3 patches (faster
    than oneDNN for few input channels), one row per pixel. ``x`` ``(B, c, H, W)``, ``weight`` ``(k, c, 3, 3)`` →
    ``(B·H·W, k)``, rows in (b, y, x) order: ``.view(B, H, W, k).permute(0, 3, 1, 2)`` is the convolution's
    ``(B, k, H, W)`` in channels-last memory."""
    B, c, H, W = x.shape
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H+2, W+2, c)
    cols = torch.stack([xp[:, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], dim=3)  # (B,H,W,9,c)
    return F.linear(cols.view(B * H * W, 9 * c), weight.permute(0, 2, 3, 1).reshape(len(weight), 9 * c), bias)


def conv3x3_at(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """``sample_at_grid(F.conv2d(x, weight, bias, padding=1), size)`` for each size, computing the convolution
    only at the sampled pixels. ``x`` ``(B, c, H, W)``, ``weight`` ``(k, c, 3, 3)`` → list of ``(B, k, h, w)``.

    One matrix product gives every tap's contribution at every pixel, ``u = x W_tap`` (``(B, H, W, 9 k)``, cheap for
    few output channels); a sampled pixel's output is the sum of its nine taps' entries (zero outside the image).
    """
    B, c, H, W = x.shape
    k = len(weight)
    u = F.linear(x.permute(0, 2, 3, 1).reshape(B * H * W, c), weight.permute(2, 3, 0, 1).reshape(9 * k, c))
    up = F.pad(u.view(B, H, W, 9 * k), (0, 0, 1, 1, 1, 1)).view(B, (H + 2) * (W + 2), 9, k)  # zero border
    grid = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    flat = torch.cat([sample_at_grid(grid, tuple(s)).long().view(-1) for s in sizes])  # sampled pixels, y·W + x
    taps = torch.tensor([dy * (W + 2) + dx for dy in range(3) for dx in range(3)])  # (9,) offsets, padded map
    at = ((flat // W) * (W + 2) + flat % W)[:, None] + taps  # (P, 9): each tap's pixel in the padded map
    v = up[:, at, torch.arange(9)].sum(dim=2) + bias  # (B, P, k)
    return [o.view(B, h, w, k).permute(0, 3, 1, 2) for o, (h, w) in
            zip(v.split([h * w for h, w in sizes], dim=1), sizes)]


class FactoredSubnet(nn.Sequential):
    r"""CFLOW-AD's coupling subnet, Linear c_in → 2 c_in → ReLU → Linear → c_out, computed with its condition
    factored out (same parameters and state-dict keys as the plain ``nn.Sequential``).

    The input of a fibre flow's subnet is ``[x₁, pe]``: half the fibre and the positional encoding of its position,
    and the encoding is the same for every image of the batch. With ``period`` = h·w set (:meth:`SANFlow.flow_layer`
    does) and rows ordered image-major, :math:`W [x_1; pe] = W_x x_1 + W_{pe}\, pe` computes the second term once per
    position instead of once per fibre: for MobileNetV2's 32-channel layer, 128 of the first layer's 144 inputs.
    Without ``period`` (or rows that are not a whole number of periods) it is the plain product.
    """

    def __init__(self, c_in: int, c_out: int, cond_channels: int) -> None:
        super().__init__(nn.Linear(c_in, 2 * c_in), nn.ReLU(), nn.Linear(2 * c_in, c_out))
        self.cond_channels = cond_channels
        self.period: int | None = None

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        n, p = inp.shape[0], self.period
        if not p or n % p or self.cond_channels == 0:
            return super().forward(inp)
        return _FactoredSubnetFunction.apply(inp, self[0].weight, self[0].bias, self[2].weight, self[2].bias,
                                             inp.shape[1] - self.cond_channels, p)


class _FactoredSubnetFunction(torch.autograd.Function):
    r"""``Linear₂(ReLU(Linear₁([x₁, pe])))`` for rows ``[x₁, pe]`` ``(n, k + P)`` whose ``pe`` repeats every ``p``
    rows → ``(n, c_out)``, with its backward written out: :math:`W_{pe} pe + b` once per position, one
    ``(n, 2 c_in)`` buffer for the hidden layer in the forward pass and one (the ReLU's mask applied in place) in
    the backward pass. The gradient is that of the plain ``nn.Sequential`` (the rows ``p..n`` of ``pe``, never
    read, get zero)."""

    @staticmethod
    def hidden_and_output(inp, w1, b1, w2, b2, k, p):
        """The forward pass → (output ``(n, c_out)``, hidden layer ``(n, 2 c_in)`` after the ReLU)."""
        n = inp.shape[0]
        per_position = torch.addmm(b1, inp[:p, k:], w1[:, k:].t())  # (p, 2 c_in)
        h = per_position.repeat(n // p, 1).addmm_(inp[:, :k], w1[:, :k].t()).relu_()  # (n, 2 c_in)
        return torch.addmm(b2, h, w2.t()), h  # (n, c_out)

    @staticmethod
    def weights_and_input_grads(grad, inp, h, w1, w2, k, p, input_grad=True, cond_grad=True):
        """The backward pass for the output's gradient ``grad`` ``(n, c_out)`` → gradients of ``inp`` (None without
        ``input_grad``; without ``cond_grad`` only its first ``k`` columns, ``(n, k)``), ``w1``, ``b1``, ``w2``,
        ``b2``."""
        n = inp.shape[0]
        g_h = grad.mm(w2)  # (n, 2 c_in)
        torch.ops.aten.threshold_backward.grad_input(g_h, h, 0, grad_input=g_h)  # ReLU's mask, in place
        g_pos = g_h.view(n // p, p, -1).sum(dim=0)  # (p, 2 c_in): the per-position term's gradient
        g_w1 = torch.cat([g_h.t().mm(inp[:, :k]), g_pos.t().mm(inp[:p, k:])], dim=1)  # (2 c_in, k + P)
        g_inp = None
        if input_grad and cond_grad:
            g_inp = inp.new_zeros(inp.shape)  # (n, k + P)
            g_inp[:, :k] = g_h.mm(w1[:, :k])
            g_inp[:p, k:] = g_pos.mm(w1[:, k:])
        elif input_grad:
            g_inp = g_h.mm(w1[:, :k])  # (n, k)
        return g_inp, g_w1, g_pos.sum(dim=0), grad.t().mm(h), grad.sum(dim=0)

    @staticmethod
    def forward(ctx, inp, w1, b1, w2, b2, k, p):
        out, h = _FactoredSubnetFunction.hidden_and_output(inp, w1, b1, w2, b2, k, p)
        ctx.save_for_backward(inp, h, w1, w2)
        ctx.k, ctx.p = k, p
        return out

    @staticmethod
    def backward(ctx, grad):
        inp, h, w1, w2 = ctx.saved_tensors
        return (*_FactoredSubnetFunction.weights_and_input_grads(grad, inp, h, w1, w2, ctx.k, ctx.p,
                                                                  input_grad=ctx.needs_input_grad[0]), None, None)


def fused_coupling_applies(block: nn.Module, rows: int, period: int) -> bool:
    """Whether :func:`fibre_flow_fused` computes ``block`` (a FrEIA ``AllInOneBlock``) exactly: this library's
    configuration (conditional, :class:`FactoredSubnet`, SOFTPLUS global affine with β = 0.5, a fixed permutation,
    no GIN, Householder or reverse permutation) on rows that are a whole number of ``period``s."""
    return (isinstance(block, Fm.AllInOneBlock) and isinstance(block.subnet, FactoredSubnet) and block.conditional
            and block.input_rank == 0 and not block.GIN and not block.householder and not block.reverse_pre_permute
            and getattr(getattr(block, "softplus", None), "beta", None) == 0.5
            and block.subnet.cond_channels == block.condition_channels and period > 0 and rows % period == 0)


def fibre_flow_fused(flow: Ff.SequenceINN, fibres: torch.Tensor, cond: torch.Tensor,
                     period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fibre flow's forward pass, one :class:`_FusedCouplingFunction` per block: ``fibres`` ``(n, C)`` and the
    condition ``cond`` ``(n, P)`` (rows image-major, the condition repeating every ``period`` rows) →
    ``(z, log_det)``, ``(n, C)`` and ``(n,)``: bit for bit FrEIA's ``flow(fibres, c=[cond])`` with the subnets'
    :class:`FactoredSubnet` path, and the same gradients (check :func:`fused_coupling_applies` first)."""
    x, log_det = fibres, 0
    for block in flow.module_list:
        sub = block.subnet
        x, log_jac = _FusedCouplingFunction.apply(x, cond, sub[0].weight, sub[0].bias, sub[2].weight, sub[2].bias,
                                                  block.global_scale, block.global_offset, block.w_perm,
                                                  block.clamp, period)
        log_det = log_jac + log_det  # as SequenceINN adds them
    return x, log_det


class _FusedCouplingFunction(torch.autograd.Function):
    r"""One FrEIA ``AllInOneBlock`` as this library configures it, its forward and backward passes written out.

    Rows ``x = [x_1, x_2]`` ``(n, C)``, :math:`C_1 = C - \lfloor C/2 \rfloor`; the subnet (:class:`FactoredSubnet`)
    :math:`a = 0.1\,(W_2\,\mathrm{relu}(W_1 [x_1; c] + b_1) + b_2)`; :math:`s = \mathrm{clamp} \cdot \tanh(a_s)`,
    :math:`u = [x_1,\; x_2 e^{s} + a_t]`; global affine :math:`g = 0.1\,\mathrm{softplus}_{\beta=0.5}(\gamma)`;
    output :math:`(u g + o) P^\top` for the permutation :math:`P`; log-det :math:`\sum s + \sum \log g` per row.

    The same operations as FrEIA's block in the same order, so the values are bit for bit FrEIA's; the backward
    pass computes autograd's formulas in autograd's order but as one node instead of about twenty, without the
    zero-filled buffers of the slices' and concatenations' backward passes and without the condition's gradient
    (a constant here). Saved: the fibres, ``[x_1; c]``, the subnet's hidden layer, :math:`\tanh(a_s)`, :math:`e^s`
    and :math:`u`.
    """

    @staticmethod
    def forward(ctx, x, cond, w1, b1, w2, b2, gamma, offset, w_perm, clamp, period):
        n, C = x.shape
        c1, c2 = C - C // 2, C // 2
        x1c = torch.cat([x[:, :c1], cond], 1)  # (n, c1 + P)
        a, h = _FactoredSubnetFunction.hidden_and_output(x1c, w1, b1, w2, b2, c1, period)  # (n, 2 c2), (n, H)
        a *= 0.1
        t = torch.tanh(a[:, :c2])  # (n, c2)
        s = clamp * t
        es = torch.exp(s)
        u = torch.cat((x[:, :c1], x[:, c1:] * es + a[:, c2:]), 1)  # (n, C): the coupling's output
        scale = 0.1 * F.softplus(gamma, beta=0.5)  # (1, C)
        log_jac = s.sum(dim=1) + torch.log(scale).sum()  # (n,)
        out = F.linear(u * scale + offset, w_perm)  # (n, C)
        ctx.save_for_backward(x, x1c, h, w1, w2, t, es, u, scale, gamma, w_perm)
        ctx.clamp, ctx.period = clamp, period
        return out, log_jac

    @staticmethod
    def backward(ctx, g_out, g_log_jac):
        x, x1c, h, w1, w2, t, es, u, scale, gamma, w_perm = ctx.saved_tensors
        n, C = x.shape
        c1, c2 = C - C // 2, C // 2
        g_v = g_out.mm(w_perm)  # (n, C): the permutation's backward
        g_offset = g_v.sum(0, keepdim=True)
        g_scale = (g_v * u).sum(0, keepdim=True) + g_log_jac.sum() / scale  # both uses of the scale
        g_gamma = torch.ops.aten.softplus_backward(g_scale * 0.1, gamma, 0.5, 20)
        g_u = g_v * scale  # (n, C)
        g_t = x.new_empty((n, 2 * c2))  # gradient of the subnet's output (before the 0.1)
        g_s = g_u[:, c1:] * x[:, c1:] * es + g_log_jac[:, None]  # exp's and the log-det's
        torch.ops.aten.tanh_backward.grad_input(g_s * ctx.clamp, t, grad_input=g_t[:, :c2])
        g_t[:, c2:] = g_u[:, c1:]
        g_a = g_t * 0.1
        g_x1c, g_w1, g_b1, g_w2, g_b2 = _FactoredSubnetFunction.weights_and_input_grads(
            g_a, x1c, h, w1, w2, c1, ctx.period, input_grad=ctx.needs_input_grad[0], cond_grad=False)
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = torch.cat((g_u[:, :c1] + g_x1c, g_u[:, c1:] * es), 1)
        return g_x, None, g_w1, g_b1, g_w2, g_b2, g_gamma, g_offset, None, None, None


def subnet_fc(c_in: int, c_out: int, cond_channels: int = 0) -> nn.Module:
    """CFLOW-AD's coupling subnet: Linear c_in → 2 c_in → ReLU → Linear → c_out (:class:`FactoredSubnet`, whose
    last ``cond_channels`` inputs are the condition)."""
    return FactoredSubnet(c_in, c_out, cond_channels)


def build_fibre_flow(channels: int, cond_channels: int = 128, n_blocks: int = 8, clamp: float = CLAMP,
                     permute_soft: bool = True) -> Ff.SequenceINN:
    """Conditional 1-D flow over fibres: ``flow(x, c=[pe])`` with ``x`` ``(N, C)`` and ``pe`` ``(N, P)`` returns
    ``(z, log_det)``, ``z`` ``(N, C)`` and ``log_det`` ``(N,)``.

    Soft permutations are random rotations drawn from numpy's global RNG (slow above ~1000 channels:
    ``permute_soft=False`` gives hard permutations with the same parameter count). FrEIA 0.2 stores them in
    float32, so they are orthogonal (and log-det-free, as FrEIA assumes) only to about 1e-7, also in float64.
    """
    flow = Ff.SequenceINN(channels)
    for _ in range(n_blocks):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(cond_channels,),
                    subnet_constructor=lambda c_in, c_out: subnet_fc(c_in, c_out, cond_channels),
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=permute_soft)
    return flow


class SANFlow(nn.Module):
    """One fibre flow per backbone layer, plus the variance network.

    Parameters
    ----------
    channels : sequence of int
        Channels per layer, fine → coarse (WRN50-2 layers 2–4: 512, 1024, 2048).
    cond_channels : int
        Positional-encoding channels (CFLOW-AD: 128; the authors' SANFlow code: 512).
    n_blocks, clamp, seed
        Blocks per flow (8), clamp (1.9), seed of the permutations.
    sizes : sequence of int or (int, int), optional
        Feature grid per layer at the training input size (recorded for the NFA and the scores; the fibre
        flows themselves run at any size).
    variance_size : int
        Side of the image the variance network sees (0: the input as it is; 128 keeps a CPU epoch short).
    permute_soft : bool, optional
        Soft (random orthogonal, CFLOW-AD's) or hard permutations; ``None``: soft for layers of at most
        :data:`SOFT_PERMUTATION_MAX_CHANNELS` channels, hard above (FrEIA draws a soft one with scipy's
        ``special_ortho_group``, O(C³): over a minute per model for WRN50-2's 2048-channel layer, at every build).
    """

    def __init__(self, channels: Sequence[int], cond_channels: int = 128, n_blocks: int = 8, clamp: float = CLAMP,
                 permute_soft: bool | None = None, seed: int = 0, sizes: Sequence[int | Sequence[int]] | None = None,
                 variance_size: int = 0) -> None:
        super().__init__()
        if len(channels) == 0 or any(c < 2 for c in channels):
            raise ValueError(f"channels must list >= 2 channels per layer, got {list(channels)}")
        if sizes is not None and len(sizes) != len(channels):
            raise ValueError(f"sizes needs one entry per layer, got sizes={list(sizes)} for channels={list(channels)}")
        if variance_size < 0:
            raise ValueError(f"variance_size must be >= 0 (0: the full input), got {variance_size}")
        positional_encoding_2d(cond_channels, 1, 1)  # validates cond_channels
        self.channels, self.cond_channels, self.variance_size = list(channels), cond_channels, variance_size
        self.sizes = None if sizes is None else [(s, s) if isinstance(s, int) else tuple(s) for s in sizes]
        with numpy_global_seed(seed):
            self.flows = nn.ModuleList(
                build_fibre_flow(c, cond_channels, n_blocks, clamp,
                                 c <= SOFT_PERMUTATION_MAX_CHANNELS if permute_soft is None else permute_soft)
                                       for c in channels)
        self.variance_net = VarianceNet()

    def _fibres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, h, w = x.shape
        pe = positional_encoding_2d(self.cond_channels, h, w).to(x)  # (P, h, w)
        cond = pe.permute(1, 2, 0).reshape(1, h * w, -1).expand(B, -1, -1).reshape(B * h * w, -1)  # (B·h·w, P)
        return x.permute(0, 2, 3, 1).reshape(B * h * w, C), cond  # (B·h·w, C)

    def flow_layer(self, layer: int, x: torch.Tensor, rev: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (latents if ``rev``) ``(B, C, h, w)`` → ``(B, C, h, w)`` and per-position log-det ``(B, h, w)``."""
        if x.ndim != 4 or x.shape[1] != self.channels[layer]:
            raise ValueError(f"layer {layer} expects (B, {self.channels[layer]}, h, w), got {tuple(x.shape)}")
        B, C, h, w = x.shape
        fibres, cond = self._fibres(x)
        flow = self.flows[layer]
        if FAST_PATHS and not rev and all(fused_coupling_applies(b, len(fibres), h * w) for b in flow.module_list):
            z, log_det = fibre_flow_fused(flow, fibres, cond, h * w)  # (B·h·w, C), (B·h·w,)
            return z.view(B, h, w, C).permute(0, 3, 1, 2), log_det.view(B, h, w)
        for m in flow.modules():  # rows are image-major: the condition repeats every h·w rows
            if isinstance(m, FactoredSubnet):
                m.period = h * w if FAST_PATHS else None
        z, log_det = flow(fibres, c=[cond], rev=rev)  # (B·h·w, C), (B·h·w,)
        return z.view(B, h, w, C).permute(0, 3, 1, 2), log_det.view(B, h, w)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features (list of ``(B, C_l, h_l, w_l)``) → (latents, same shapes; log-dets, list of ``(B, h_l, w_l)``)."""
        if len(features) != len(self.flows):
            raise ValueError(f"got {len(features)} feature maps for {len(self.flows)} flows")
        out = [self.flow_layer(i, f) for i, f in enumerate(features)]
        return [z for z, _ in out], [ld for _, ld in out]

    def statistics(self, images: torch.Tensor,
                   sizes: Sequence[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised images ``(B, 3, H, W)`` → per layer ``(log α, log β)``, each ``(B, h_l, w_l)``.

        One variance-net pass at full resolution, sampled nearest at each layer's grid.
        """
        return self.variance_net.sampled(images, sizes)  # each (B, h, w)

    def features_and_statistics(self, extractor: nn.Module, images: torch.Tensor):
        """Images ``(B, 3, S, S)`` in [0, 1] → backbone maps (list of ``(B, C_l, h_l, w_l)``, frozen) and per layer
        ``(log α, log β)``, each ``(B, h_l, w_l)``, from one variance-net pass on the normalised image resized to
        ``variance_size``."""
        with torch.no_grad():  # channels-last (FAST_PATHS): the same convolutions, faster on CPUs (oneDNN)
            feats = [f.contiguous() for f in extractor(_fast_layout(images))]
        x = extractor.normalise(images)  # (B, 3, S, S)
        if self.variance_size and self.variance_size != x.shape[-1]:
            size = (self.variance_size, self.variance_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)  # (B, 3, s, s)
        return feats, self.statistics(x, [f.shape[-2:] for f in feats])


# ---------------------------------------------------------------------------------------------- losses, scores


def split_bce(log_pn: torch.Tensor, log_pa: torch.Tensor, m: torch.Tensor,
              double_softmax: bool = False) -> torch.Tensor:
    r"""Cross-entropy of :math:`s = p_n / (p_n + p_a) = \operatorname{sigmoid}(\log p_n - \log p_a)` against
    :math:`1 - m`, elementwise (any equal shapes). ``double_softmax=True``: the authors' cross-entropy applied to
    ``softmax([log p_n, log p_a])`` (already probabilities), i.e. a second softmax."""
    if double_softmax:
        probs = torch.softmax(torch.stack([log_pn, log_pa], dim=-1), dim=-1)  # (..., 2): [p(normal), p(anomalous)]
        return F.cross_entropy(probs.reshape(-1, 2), m.reshape(-1).long(), reduction="none").view_as(m)
    return F.binary_cross_entropy_with_logits(log_pn - log_pa, 1.0 - m, reduction="none")


@dataclass(frozen=True)
class SANFlowLossConfig:
    """Loss settings; defaults are the library's fixed form (module docstring), :meth:`authors` keeps the quirks."""

    bce_weight: float = 0.2  #: weight of the BCE (paper)
    prior_alpha: float = 59.5  #: IG prior, mode β0/(α0+1) = 0.1 (paper)
    prior_beta: float = 6.05
    max_variance: float = 5.0  #: clamp of the mode variance (authors' code)
    objective: str = "sum"  #: "sum": (NLL + KL + w·BCE)/C; "logsigmoid": the authors' -logsigmoid(...)
    log_beta_coefficient: str = "half"  #: "half": C/2 (exact); "full": the authors' C
    double_softmax: bool = False  #: True: the authors' cross-entropy on softmaxed values

    def __post_init__(self) -> None:
        if self.objective not in ("sum", "logsigmoid") or self.log_beta_coefficient not in ("half", "full"):
            raise ValueError(f"objective must be 'sum' or 'logsigmoid' and log_beta_coefficient 'half' or 'full'; "
                             f"got {self.objective!r}, {self.log_beta_coefficient!r}")

    @classmethod
    def authors(cls, **changes) -> "SANFlowLossConfig":
        """The authors' form: -logsigmoid objective, C on log β - ψ(α), double softmax."""
        return replace(cls(objective="logsigmoid", log_beta_coefficient="full", double_softmax=True), **changes)


class SANFlowLossTerms(NamedTuple):
    """Per-position terms of the loss, each ``(N,)``."""

    log_p: torch.Tensor  #: (1-m)·E_IG[log p_n] + m·log p_a
    kl: torch.Tensor  #: KL(IG(α, β) ‖ IG(α0, β0))
    bce: torch.Tensor  #: cross-entropy of s(z) against 1 - m


def sanflow_loss_terms(z: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor, m: torch.Tensor,
                       config: SANFlowLossConfig = SANFlowLossConfig()) -> SANFlowLossTerms:
    """Loss terms for fibres ``z`` ``(N, C)`` with ``log_alpha``, ``log_beta``, mask ``m`` ``(N,)`` in {0, 1}."""
    C = z.shape[1]
    var = ig_mode_variance(log_alpha, log_beta, config.max_variance)  # (N,)
    coef = 0.5 * C if config.log_beta_coefficient == "half" else float(C)
    log_pn_expected = expected_normal_log_likelihood(z, log_alpha, log_beta, coef)
    log_pa = gaussian_log_likelihood(z, var.detach(), mean=1.0)  # anomalous branch: mode variance, detached
    log_pn = gaussian_log_likelihood(z, var)  # normal branch with the mode variance, for s(z)
    return SANFlowLossTerms(
        (1.0 - m) * log_pn_expected + m * log_pa,
        ig_kl(log_alpha, log_beta, config.prior_alpha, config.prior_beta),
        split_bce(log_pn, log_pa, m, config.double_softmax),
    )


def sanflow_loss(z: torch.Tensor, log_det: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor,
                 m: torch.Tensor, config: SANFlowLossConfig = SANFlowLossConfig()) -> torch.Tensor:
    r"""Scalar loss, mean over positions. ``z`` ``(N, C)``; ``log_det``, ``log_alpha``, ``log_beta``, ``m`` ``(N,)``.

    ``"sum"``: :math:`[-(\log p + \log|\det J|) + KL + w\,BCE]/C`; ``"logsigmoid"``:
    :math:`-\operatorname{logsigmoid}((\log p + \log|\det J| - KL - w\,CE)/C)`.
    """
    if z.ndim != 2 or any(t.shape != z.shape[:1] for t in (log_det, log_alpha, log_beta, m)):
        raise ValueError(f"expected fibres z (N, C) and (N,) log_det/log_alpha/log_beta/m; got {tuple(z.shape)}, "
                         f"{[tuple(t.shape) for t in (log_det, log_alpha, log_beta, m)]}")
    C = z.shape[1]
    t = sanflow_loss_terms(z, log_alpha, log_beta, m, config)
    if config.objective == "sum":
        return ((-(t.log_p + log_det) + t.kl + config.bce_weight * t.bce) / C).mean()
    return -F.logsigmoid((t.log_p + log_det - t.kl - config.bce_weight * t.bce) / C).mean()


def sanflow_log_prob(z: torch.Tensor, log_det: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    r"""Score input :math:`(\log \mathcal N(z; 0, \sigma^2 I) + \log|\det J|)/C`: ``z`` ``(B, C, h, w)``,
    ``log_det`` and ``variance`` ``(B, h, w)`` → ``(B, h, w)`` (higher = more normal)."""
    return (gaussian_log_likelihood(z, variance) + log_det) / z.shape[1]


def sanflow_anomaly_maps(log_probs: Sequence[torch.Tensor], out_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """CFLOW-AD aggregation over a whole test set: per layer ``exp(log p - max over the set)``, bilinear upsampling
    (corners aligned, as the authors), sum over layers, ``A = max - map``.

    log_probs: list (one per layer) of ``(N, h_l, w_l)`` → maps ``(N, 1, S, S)`` float64 and image scores ``(N,)``
    (max of each map). The scores depend on the set through the per-layer maxima: score the whole test set at once.
    """
    if len(log_probs) == 0 or any(lp.ndim != 3 for lp in log_probs):
        raise ValueError(f"log_probs must be a non-empty list of (N, h, w) tensors, got "
                         f"{[tuple(lp.shape) for lp in log_probs]}")
    total = 0.0
    for lp in log_probs:
        prob = torch.exp(lp.double() - lp.double().max())[:, None]  # (N, 1, h, w) in (0, 1]
        total = total + F.interpolate(prob, size=(out_size, out_size), mode="bilinear", align_corners=True)
    maps = total.max() - total  # (N, 1, S, S)
    return maps, maps.flatten(1).amax(dim=1)


# ----------------------------------------------------------------------------------------- recipe, adapter

#: SANFlow's recipe, the same for every category: batch 8, Adam at 5e-4, the authors' 25 × 8 = 200 epochs.
RECIPE = Recipe(200, 8, 5e-4)


class SANFlowMethod(FlowMethod):
    """SANFlow: fibre flows on strides 8/16/32, synthetic anomalies, inverse-gamma variances.

    One optimiser step on the sum of the layers' losses (the authors step once per layer; the flows share no
    parameters, so only the variance network sees a different update). Loss: :class:`SANFlowLossConfig`'s
    defaults (the authors' quirks fixed, see the module docstring). Warm-up + cosine schedule (CFLOW-AD's).
    """

    name = "sanflow"
    model_class = SANFlow
    cacheable = False
    loss_config = SANFlowLossConfig()
    #: 10× the recipe's lr for a few hundred CPU steps; the variance network sees 64-px images, most of a step's cost
    cpu_recipe = Recipe(10, 8, 2e-3)
    cpu_overrides = {"variance_size": 64}
    #: MobileNetV2: of the recipe's lr and 4× it (25 epochs at batch 8: 8.9 CPU minutes), validation chose 4×
    #: (benchmarks/results/recipe_validation.md)
    validated_recipe = Recipe(25, 8, 2e-3)

    def recipe(self, category):
        return RECIPE

    def architecture(self, cfg):
        return {**super().architecture(cfg), "variance_size": cfg.variance_size}

    def out_indices(self, backbone):
        check_cnn_backbone(self.name, backbone)
        return (2, 3, 4)

    def build(self, cfg: TrainConfig, channels, sizes):
        torch.manual_seed(cfg.seed)
        return SANFlow(channels, seed=cfg.seed, sizes=sizes, variance_size=cfg.variance_size)

    def lr_factor(self, epoch, epochs):
        """Linear warm-up from 0.1× over the first 10 % of the run, then cosine down to 10⁻³× (CFLOW-AD's)."""
        warm = 0.1 * epochs
        if epoch < warm:
            return 0.1 + 0.9 * epoch / warm
        t = (epoch - warm) / max(epochs - warm, 1e-9)
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def loss(self, model, extractor, batch):
        if FAST_PATHS:
            keep_freed_memory()
        images, masks = synthesize_anomalies(batch["images"], batch["rng"])  # (B, 3, S, S), (B, 1, S, S)
        feats, stats = model.features_and_statistics(extractor, images)
        total = 0.0
        for layer, (f, (log_a, log_b)) in enumerate(zip(feats, stats)):
            z, log_det = model.flow_layer(layer, f)  # (B, C, h, w), (B, h, w)
            m = (sample_at_grid(masks, tuple(f.shape[-2:])) > 0).float()[:, 0]  # (B, h, w)
            C = z.shape[1]
            total = total + sanflow_loss(z.permute(0, 2, 3, 1).reshape(-1, C), log_det.reshape(-1),
                                         log_a.reshape(-1), log_b.reshape(-1), m.reshape(-1), self.loss_config)
        return total

    @torch.no_grad()
    def infer(self, model, extractor, images, out_size):
        feats, stats = model.features_and_statistics(extractor, images)
        latents, parts = [], {}
        for layer, (f, (log_a, log_b)) in enumerate(zip(feats, stats)):
            z, log_det = model.flow_layer(layer, f)  # (B, C, h, w), (B, h, w)
            var = ig_mode_variance(log_a, log_b, self.loss_config.max_variance)  # (B, h, w)
            parts[f"log_prob{layer}"] = sanflow_log_prob(z, log_det, var).float().cpu()
            parts[f"variance{layer}"] = var.float().cpu()
            latents.append((z / var.sqrt()[:, None]).float().cpu())  # N(0, I) where the model says normal
        return latents, parts

    def finalize(self, parts, out_size):
        n_layers = sum(k.startswith("log_prob") for k in parts)
        log_probs = [torch.from_numpy(parts[f"log_prob{i}"]) for i in range(n_layers)]
        maps, scores = sanflow_anomaly_maps(log_probs, out_size)  # depend on the whole set's maxima
        return {**parts, "score": maps[:, 0].float().numpy(), "image_score": scores.numpy()}
