"""U-Flow's two options beside the paper: the subnets' kernel sides and the feature strides."""

from __future__ import annotations

import pytest
import torch

from uflow_lib import build_uflow
from uflow_lib.cli import build_parser
from uflow_lib.config import TrainConfig
from uflow_lib.flow_blocks import count_trainable_parameters
from uflow_lib.methods import architecture as architecture_of, build_extractor_for, build_model, resolve
from uflow_lib.methods.uflow import paper_kernels
from uflow_lib.validation import UserInputError, check_train_settings


def _changed_positions(kernels, which: int) -> list[set[tuple[int, int]]]:
    """Positions of each latent (fine, coarse) that move when input ``which`` changes at one position (3, 3)."""
    flow = build_uflow([8, 16], [8, 4], flow_steps=4, kernels=kernels).double().eval()
    torch.manual_seed(0)
    x = [torch.randn(1, 8, 8, 8, dtype=torch.float64), torch.randn(1, 16, 4, 4, dtype=torch.float64)]
    y = [t.clone() for t in x]
    y[which][0, :, 3, 3] += 1.0
    with torch.no_grad():
        za, _ = flow(x)
        zb, _ = flow(y)
    return [{tuple(p) for p in ((a - b).abs().amax(dim=(0, 1)) > 1e-9).nonzero().tolist()} for a, b in zip(za, zb)]


def test_paper_kernels_alternate_three_and_one():
    assert paper_kernels(4) == [3, 1, 3, 1]
    assert paper_kernels(3) == [3, 1, 3]
    # the option's default is the paper's flow, parameter for parameter
    assert count_trainable_parameters(build_uflow([8, 16], [8, 4])) == \
        count_trainable_parameters(build_uflow([8, 16], [8, 4], kernels=[3, 1, 3, 1]))


def test_one_by_one_subnets_keep_a_change_where_it_is():
    # all 1×1: a change of the fine features at (3, 3) moves the fine latent there only, never the coarse one
    assert _changed_positions([1, 1, 1, 1], which=0) == [{(3, 3)}, set()]
    # a change of the coarse features at (3, 3) moves the coarse latent there and, through the pixel shuffle,
    # the 2×2 block (6..7, 6..7) of the fine latent
    assert _changed_positions([1, 1, 1, 1], which=1) == [{(6, 6), (6, 7), (7, 6), (7, 7)}, {(3, 3)}]


def test_paper_subnets_spread_a_change_to_the_neighbours():
    fine, coarse = _changed_positions(None, which=0)
    assert coarse == set()
    # two steps with subnets Conv3×3 → ReLU → Conv3×3: each reaches two positions further, so the change
    # spreads beyond its position, and no further than four positions
    radius = max(max(abs(i - 3), abs(j - 3)) for i, j in fine)
    assert (3, 3) in fine and 2 <= radius <= 4


def test_one_by_one_flow_is_invertible():
    flow = build_uflow([8, 16], [8, 4], kernels=[1, 1, 1, 1]).double().eval()
    x = [torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 16, 4, 4, dtype=torch.float64)]
    with torch.no_grad():
        z, log_det = flow(x)
        back, inv_log_det = flow(list(z), rev=True)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(x, back))
    assert torch.allclose(log_det, -inv_log_det, atol=1e-9)


def test_strides_option_reads_three_stages_and_builds_three_latents():
    cfg = resolve(TrainConfig(data="x", category="bottle", out="o", backbone="mobilenetv2", pretrained=False,
                              strides=[4, 8, 16], subnet_kernels=[1, 1, 1, 1]))
    check_train_settings(cfg)
    extractor = build_extractor_for(cfg)
    assert extractor.channels == [24, 32, 96]
    assert extractor.feature_sizes(256) == [64, 32, 16]
    model = build_model(cfg, extractor)
    assert model.kernels == [1, 1, 1, 1]
    assert [s[1:] for s in model.latent_shapes] == [(64, 64), (32, 32), (16, 16)]
    # the options are part of the architecture a resumed run must match; unset, they are absent (older
    # checkpoints resume unchanged)
    arch = architecture_of(cfg)
    assert arch["strides"] == [4, 8, 16] and arch["subnet_kernels"] == [1, 1, 1, 1]
    plain = architecture_of(TrainConfig(data="x", category="bottle", out="o", backbone="mobilenetv2"))
    assert "strides" not in plain and "subnet_kernels" not in plain


def test_cli_passes_the_options():
    args = build_parser().parse_args(["train", "--data", "d", "--category", "c", "--out", "o", "--subnet-kernels",
                                      "1", "1", "1", "1", "--strides", "4", "8", "16"])
    assert args.subnet_kernels == [1, 1, 1, 1] and args.strides == [4, 8, 16]


@pytest.mark.parametrize("changes, message", [
    (dict(subnet_kernels=[1, 2, 1, 1]), "--subnet-kernels needs 4 odd sides"),
    (dict(subnet_kernels=[1, 1]), "--subnet-kernels needs 4 odd sides"),
    (dict(strides=[4, 16]), "each twice the previous"),
    (dict(strides=[16]), "2 or more"),
    (dict(strides=[8, 16], method="msflow"), "--method uflow only"),
    (dict(strides=[8, 16], backbone="mcait"), "CNN backbones"),
])
def test_bad_options_are_refused_in_one_line(changes, message):
    base = dict(data="x", category="bottle", out="o", backbone="mobilenetv2", pretrained=False)
    cfg = resolve(TrainConfig(**{**base, **changes}))
    with pytest.raises(UserInputError, match=message) as err:
        check_train_settings(cfg)
    assert "\n" not in str(err.value)
