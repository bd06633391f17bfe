"""Chapter 3 exercise checks: they pass on correct answers and fail, with a useful hint, on wrong ones."""

from __future__ import annotations

import math

import pytest
import torch

from uflow_lib.exercises import ExerciseFailed
from uflow_lib.exercises.ch03 import (
    MSCAIT_PARAMETERS,
    _graph_latent_shapes,
    _summed_loss_std,
    check_latent_shapes,
    check_pixel_unshuffle,
    check_summed_loss_std,
    check_uflow_parameters,
)


def _stub(*args, **kwargs):
    raise NotImplementedError


# ------------------------------------------------------------------------------------------ 3.2 latent shapes
def latent_shapes_by_hand(channels, sizes):
    shapes, carried = [], 0
    for c, s in zip(channels[:0:-1], sizes[:0:-1]):  # coarsest → second finest
        v = c + carried
        up = v // 8 * 4
        shapes.append((v - up, s, s))
        carried = up // 4
    return [(channels[0] + carried, sizes[0], sizes[0])] + shapes[::-1]


def test_graph_reference_golden():
    # derived by hand from the split rule (chapter 3): MS-CaiT and resnet18
    assert _graph_latent_shapes([768, 384], [28, 14]) == [(816, 28, 28), (192, 14, 14)]
    assert _graph_latent_shapes([64, 128, 256], [64, 32, 16]) == [(84, 64, 64), (80, 32, 32), (128, 16, 16)]


def test_latent_shapes_passes_on_solution(capsys):
    check_latent_shapes(latent_shapes_by_hand)
    assert "Exercise 3.2" in capsys.readouterr().out


def _half_split(channels, sizes):  # splits v // 2 instead of v // 8 * 4: right for MS-CaiT, wrong for 9 channels
    shapes, carried = [], 0
    for c, s in zip(channels[:0:-1], sizes[:0:-1]):
        v = c + carried
        up = v // 2
        shapes.append((v - up, s, s))
        carried = up // 4
    return [(channels[0] + carried, sizes[0], sizes[0])] + shapes[::-1]


@pytest.mark.parametrize("wrong,match", [
    (lambda c, s: latent_shapes_by_hand(c, s)[::-1], "wrong order"),
    (_half_split, "coarsest scale to the finest"),
    (lambda c, s: [(ci, si, si) for ci, si in zip(c, s)], "the FrEIA graph gives"),
    (lambda c, s: None, "expected a list"),
    (None, "define `def latent_shapes_by_hand"),
    (_stub, "not written yet"),
])
def test_latent_shapes_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_latent_shapes(wrong)


# ------------------------------------------------------------------------------------------ 3.3 parameters
def _block(c, k):
    c1, c2 = c - c // 2, c // 2
    return c1 * c1 * k * k + c1 + c1 * 2 * c2 * k * k + 2 * c2 + 2 * c


def _stage_channels(channels):
    """Channels of each flow stage, coarsest first: own features + what the pixel shuffle brings up."""
    carried, stages = 0, []
    for c in channels[:0:-1]:
        v = c + carried
        stages.append(v)
        carried = v // 8 * 4 // 4
    return stages + [channels[0] + carried]


def uflow_parameters(channels, sizes, flow_steps=4):
    return sum(_block(v, 3 if i % 2 == 0 else 1) for v in _stage_channels(channels) for i in range(flow_steps))


def test_hand_count_golden():
    # the paper's numbers: stage at 384 ch 2,217,216; at 816 ch 9,999,264
    assert 2 * (_block(384, 3) + _block(384, 1)) == 2_217_216
    assert 2 * (_block(816, 3) + _block(816, 1)) == 9_999_264
    assert uflow_parameters([768, 384], [28, 14]) == MSCAIT_PARAMETERS == 12_216_480


def test_parameters_passes_on_solution(capsys):
    check_uflow_parameters(uflow_parameters)
    assert "Exercise 3.3" in capsys.readouterr().out


def _even_only(channels, sizes, flow_steps=4):  # c/2 halves: right for even channels only
    def block(c, k):
        h = c // 2
        return h * h * k * k + h + h * 2 * h * k * k + 2 * h + 2 * c
    return sum(block(v, 3 if i % 2 == 0 else 1) for v in _stage_channels(channels) for i in range(flow_steps))


def _no_global_affine(channels, sizes, flow_steps=4):
    return uflow_parameters(channels, sizes, flow_steps) - sum(2 * v * flow_steps for v in _stage_channels(channels))


@pytest.mark.parametrize("wrong,match", [
    (_no_global_affine, "global affine; mind odd"),
    (_even_only, "odd channel counts"),
    (lambda c, s, n=4: float(uflow_parameters(c, s, n)), "expected an int"),
    (None, "define `def uflow_parameters"),
    (_stub, "not written yet"),
])
def test_parameters_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_uflow_parameters(wrong)


# ------------------------------------------------------------------------------------------ 3.1 pixel unshuffle
def pixel_unshuffle(x):
    B, C, H2, W2 = x.shape
    return x.reshape(B, C, H2 // 2, 2, W2 // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H2 // 2, W2 // 2)


def test_pixel_unshuffle_passes_on_solution(capsys):
    check_pixel_unshuffle(pixel_unshuffle)
    check_pixel_unshuffle(lambda x: torch.nn.functional.pixel_unshuffle(x, 2))  # torch's order is FrEIA's
    assert "Exercise 3.1" in capsys.readouterr().out


def _wrong_order(x):  # legacy i-RevNet order: sub-pixel major, channel minor
    B, C, H2, W2 = x.shape
    return x.reshape(B, C, H2 // 2, 2, W2 // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(B, 4 * C, H2 // 2, W2 // 2)


@pytest.mark.parametrize("wrong,match", [
    (_wrong_order, "another order"),
    (lambda x: torch.nn.functional.avg_pool2d(x, 2).repeat(1, 4, 1, 1), "only moves entries"),
    (lambda x: x[:, :, ::2, ::2], "expected \\("),
    (lambda x: x.tolist(), "expected a tensor"),
    (None, "define `def pixel_unshuffle"),
    (_stub, "not written yet"),
])
def test_pixel_unshuffle_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_pixel_unshuffle(wrong)


# ------------------------------------------------------------------------------------------ 3.4 summed loss
def test_numerical_reference_golden():
    for b in (1, 8, 23):
        assert _summed_loss_std(b) == pytest.approx(1 / math.sqrt(b), rel=1e-6)


def test_summed_loss_passes_on_solution(capsys):
    check_summed_loss_std(lambda b: 1 / math.sqrt(b))
    assert "Exercise 3.4" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,match", [
    (lambda b: 1 / b, "variance"),
    (lambda b: math.sqrt(b), "upside down"),
    (lambda b: 1.0, "minimising the loss gives"),
    (lambda b: None, "expected a number"),
    (None, "define `def summed_loss_std"),
    (_stub, "not written yet"),
])
def test_summed_loss_fails_helpfully(wrong, match):
    with pytest.raises(ExerciseFailed, match=match):
        check_summed_loss_std(wrong)
