"""The command line's parser: shared options declared once (same definition and help in every subcommand), help
texts that state what the code does, parse results that callers rely on. No training here (see test_training.py
and test_methods.py for end-to-end runs)."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from uflow_lib.cli import EPILOG, build_parser
from uflow_lib.config import DEFAULT_INPUT_SIZE, TrainConfig
from uflow_lib.methods import resolve

RUNS = ("train", "evaluate", "predict", "download", "reproduce")

#: Options that several subcommands share, and where each must appear (among RUNS).
SHARED = {
    "--device": {"train", "evaluate", "predict", "reproduce"},
    "--weights": {"train", "evaluate", "predict", "reproduce"},
    "--method": {"train", "evaluate", "predict", "reproduce"},
    "--no-progress": {"train", "evaluate", "reproduce"},
    "--checkpoint": {"evaluate", "predict"},
    "--nfa-scales": {"evaluate", "predict"},
    "--backbone": {"train", "reproduce"},
    "--random-weights": {"train", "reproduce"},
    "--epochs": {"train", "reproduce"},
    "--max-minutes": {"train", "reproduce"},
    "--eval-every": {"train", "reproduce"},
    "--cache-dir": {"train", "reproduce"},
    "--checkpoint-every": {"train", "reproduce"},
    "--checkpoint-minutes": {"train", "reproduce"},
    "--categories": {"download", "reproduce"},
    "--archive": {"download", "reproduce"},
    "--url": {"download", "reproduce"},
    "--copy-to-local": {"download", "reproduce"},
    "--no-copy-to-local": {"download", "reproduce"},
    "--layout": {"train", "evaluate", "reproduce"},
    "--normal-dir": {"train", "evaluate", "reproduce"},
    "--abnormal-dir": {"train", "evaluate", "reproduce"},
    "--mask-dir": {"train", "evaluate", "reproduce"},
    "--normal-test-dir": {"train", "evaluate", "reproduce"},
    "--normal-split": {"train", "evaluate", "reproduce"},
    "--split-seed": {"train", "evaluate", "reproduce"},
    "--debug": set(RUNS),  # added to every subcommand in one place (build_parser)
}

#: The parse result of the data-layout options when none is given (train, evaluate, reproduce).
NO_LAYOUT = dict(layout=None, normal_dir=None, abnormal_dir=None, mask_dir=None, normal_test_dir=None,
                 normal_split=None, split_seed=None)

#: Options whose meaning deliberately differs between subcommands: the groups that share one definition.
DELIBERATELY_DIFFERENT = {
    # train/reproduce: which method to train (default uflow); evaluate/predict: only a check of the checkpoint
    "--method": [{"train", "reproduce"}, {"evaluate", "predict"}],
    # required where the run reads its data; evaluate defaults to the checkpoint's
    "--data": [{"train"}, {"reproduce"}, {"evaluate"}, {"download"}],
    "--category": [{"train"}, {"evaluate"}],
    # what each subcommand writes there
    "--out": [{"train"}, {"predict"}, {"reproduce"}],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = parser._subparsers._group_actions
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _definition(a: argparse.Action) -> tuple:
    return (type(a).__name__, a.dest, a.type, a.choices, a.default, a.required, a.nargs, a.const, a.help)


def _by_option() -> dict[str, dict[str, argparse.Action]]:
    """option string → {subcommand: its action}, over RUNS."""
    subs = _subparsers(build_parser())
    out: dict[str, dict[str, argparse.Action]] = {}
    for name in RUNS:
        for opt, action in _options(subs[name]).items():
            out.setdefault(opt, {})[name] = action
    return out




@pytest.mark.parametrize("command", [None, "train", "evaluate", "predict", "make-dataset", "download", "reproduce"])
def test_every_help_parses(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m uflow_lib") and "--help" in out


def test_shared_options_appear_where_expected():
    by_option = _by_option()
    for opt, expected in SHARED.items():
        assert set(by_option.get(opt, {})) == expected, opt


def test_shared_options_have_identical_definitions_and_help():
    """One definition per shared option: same dest, type, choices, default, nargs and help text everywhere."""
    checked = 0
    for opt, actions in _by_option().items():
        if len(actions) < 2 or opt in DELIBERATELY_DIFFERENT:
            continue
        assert opt in SHARED, f"{opt} appears in {sorted(actions)}: declare it in a parent and list it in SHARED"
        definitions = {name: _definition(a) for name, a in actions.items()}
        first = next(iter(definitions.values()))
        for name, d in definitions.items():
            assert d == first, f"{opt} differs in {name}: {d} != {first}"
        assert first[-1], f"{opt} has no help text"
        checked += 1
    assert checked == len(SHARED) - 1  # all but --method


def test_deliberately_different_options_differ_only_between_their_groups():
    by_option = _by_option()
    for opt, groups in DELIBERATELY_DIFFERENT.items():
        actions = by_option[opt]
        assert set().union(*groups) == set(actions), opt
        per_group = []
        for group in groups:
            defs = {_definition(actions[name]) for name in group}
            assert len(defs) == 1, f"{opt} drifted within {sorted(group)}"
            per_group.append(defs.pop())
            assert per_group[-1][-1], f"{opt} has no help text in {sorted(group)}"
        helps = [d[-1] for d in per_group]
        assert len(set(helps)) == len(helps), f"{opt}: groups {groups} should say what differs"
        assert len({d[1] for d in per_group}) == 1, f"{opt} must keep one dest"
    method = by_option["--method"]
    assert method["train"].default == method["reproduce"].default == "uflow"
    assert method["evaluate"].default is None and method["predict"].default is None


def test_nfa_scales_help_states_the_default_rule():
    from uflow_lib.evaluation import default_nfa_scales

    text = " ".join(_by_option()["--nfa-scales"]["evaluate"].help.split())
    assert "0 = finest" in text
    assert "all scales for mcait" in text
    assert "nearest 16 (the coarser on a tie)" in text
    assert "coarsest" not in text  # the rule before MSFlow/SANFlow's 8² scales
    # ... and the rule is the code's
    assert default_nfa_scales("mcait", 2, [28, 14]) is None
    assert default_nfa_scales("mobilenetv2", 3, [32, 16, 8]) == [1]  # not the coarsest
    assert default_nfa_scales("resnet18", 2, [24, 8]) == [1]  # |24-16| = |8-16|: the coarser
    assert default_nfa_scales("mobilenetv2", 2, [32, 16]) == [1]


def test_default_settings_in_help_match_the_code():
    subs = _subparsers(build_parser())
    outside = resolve(TrainConfig(data="d", category="not_in_the_table", out="o", backbone="resnet18"))
    for method in ("uflow", "msflow", "sanflow"):  # with mobilenetv2: the values chosen on validation
        r = resolve(TrainConfig(data="d", category="bottle", out="o", backbone="mobilenetv2", method=method))
        for name in ("train", "reproduce"):
            assert (f"{method} {r.epochs} epochs, batch {r.batch_size}, lr {r.lr:g}"
                    in " ".join(subs[name].description.split())), (name, method)
    for name in ("train", "reproduce"):
        stated = re.search(r"(\d+) epochs, batch (\d+), lr (\S+) for a category outside it",
                           " ".join(subs[name].description.split()))
        assert stated, name
        assert (int(stated[1]), int(stated[2]), float(stated[3])) == (outside.epochs, outside.batch_size, outside.lr)
    size_help = _options(subs["train"])["--input-size"].help
    for backbone in DEFAULT_INPUT_SIZE:
        side = resolve(TrainConfig(data="d", category="bottle", out="o", backbone=backbone)).input_size
        assert f"{side} for {'mcait' if backbone == 'mcait' else 'CNN backbones'}" in size_help, backbone
    norm_help = _options(subs["train"])["--norm"].help
    for backbone, norm in (("mcait", "identity"), ("resnet18", "standardize")):
        assert resolve(TrainConfig(data="d", category="bottle", out="o", backbone=backbone)).norm == norm
        assert norm in norm_help


PARSES = [
    (["train", "--data", "D", "--category", "bottle", "--out", "O"],
     dict(command="train", data="D", category="bottle", out="O", method="uflow", backbone="mcait", weights=None,
          random_weights=False, epochs=None, batch_size=None, lr=None, input_size=None, flow_steps=4, subnet_kernels=None, strides=None,
          variance_size=64, norm=None, max_minutes=None, eval_every=0, cache_dir=None, checkpoint_every=1, checkpoint_minutes=None, seed=0, device="auto",
          no_progress=False, coreset_ratio=0.1, padim_channels=100, **NO_LAYOUT)),
    (["train", "--method", "sanflow", "--data", "D", "--category", "texture", "--backbone", "mobilenetv2",
      "--weights", "W.pth", "--random-weights", "--epochs", "3", "--batch-size", "4", "--lr", "1e-3",
      "--input-size", "128", "--flow-steps", "2", "--variance-size", "0", "--norm", "layernorm",
      "--max-minutes", "1.5", "--eval-every", "1", "--cache-dir", "C", "--seed", "7", "--device", "cpu",
      "--out", "O", "--no-progress", "--coreset-ratio", "0.5", "--padim-channels", "50"],
     dict(command="train", data="D", category="texture", out="O", method="sanflow", backbone="mobilenetv2",
          weights="W.pth", random_weights=True, epochs=3, batch_size=4, lr=1e-3, input_size=128, flow_steps=2, subnet_kernels=None, strides=None,
          variance_size=0, norm="layernorm", max_minutes=1.5, eval_every=1, cache_dir="C", checkpoint_every=1, checkpoint_minutes=None, seed=7, device="cpu",
          no_progress=True, coreset_ratio=0.5, padim_channels=50, **NO_LAYOUT)),
    (["train", "--normal-dir", "N", "--abnormal-dir", "A", "--mask-dir", "M", "--normal-split", "0.25",
      "--split-seed", "3", "--layout", "folder", "--out", "O"],
     dict(command="train", data=None, category=None, out="O", method="uflow", backbone="mcait", weights=None,
          random_weights=False, epochs=None, batch_size=None, lr=None, input_size=None, flow_steps=4, subnet_kernels=None, strides=None,
          variance_size=64, norm=None, max_minutes=None, eval_every=0, cache_dir=None, checkpoint_every=1,
          checkpoint_minutes=None, seed=0, device="auto", no_progress=False, coreset_ratio=0.1, padim_channels=100,
          layout="folder", normal_dir="N",
          abnormal_dir="A", mask_dir="M", normal_test_dir=None, normal_split=0.25, split_seed=3)),
    (["evaluate", "--checkpoint", "r/last.pt"],
     dict(command="evaluate", checkpoint="r/last.pt", method=None, data=None, category=None, weights=None,
          nfa_bound="valid", nfa_scales=None, no_nfa=False, device="auto", json=False, no_progress=False,
          **NO_LAYOUT)),
    (["evaluate", "--checkpoint", "r/last.pt", "--method", "msflow", "--data", "D", "--category", "bottle",
      "--weights", "W", "--nfa-bound", "paper", "--nfa-scales", "0", "2", "--no-nfa", "--device", "cuda:1",
      "--json", "--no-progress"],
     dict(command="evaluate", checkpoint="r/last.pt", method="msflow", data="D", category="bottle", weights="W",
          nfa_bound="paper", nfa_scales=[0, 2], no_nfa=True, device="cuda:1", json=True, no_progress=True,
          **NO_LAYOUT)),
    (["evaluate", "--checkpoint", "r/last.pt", "--layout", "btad", "--data", "B"],
     dict(command="evaluate", checkpoint="r/last.pt", method=None, data="B", category=None, weights=None,
          nfa_bound="valid", nfa_scales=None, no_nfa=False, device="auto", json=False, no_progress=False,
          **(NO_LAYOUT | dict(layout="btad")))),
    (["predict", "--checkpoint", "c.pt", "--input", "img.png", "--out", "P", "--nfa-scales", "1"],
     dict(command="predict", checkpoint="c.pt", method=None, input="img.png", out="P", weights=None,
          nfa_scales=[1], device="auto", out_size=None, overwrite=False)),
    (["predict", "--checkpoint", "c.pt", "--input", "in", "--out", "P", "--out-size", "640x480", "--overwrite",
      "--debug"],
     dict(command="predict", checkpoint="c.pt", method=None, input="in", out="P", weights=None,
          nfa_scales=None, device="auto", out_size="640x480", overwrite=True, debug=True)),
    (["make-dataset", "--out", "G"], dict(command="make-dataset", out="G", seed=0, category="texture")),
    (["make-validation", "--data", "D", "--category", "bottle", "--out", "V"],
     dict(command="make-validation", data="D", category="bottle", out="V", fraction=0.2, seed=0)),
    (["reproduce", "--data", "D", "--out", "R"],
     dict(command="reproduce", data="D", out="R", categories=None, method="uflow", backbone="mcait", weights=None,
          random_weights=False, epochs=None, max_minutes=None, eval_every=0, cache_dir=None, checkpoint_every=1, checkpoint_minutes=None, download=False,
          archive=None, url=None, copy_to_local=None, device="auto", no_progress=False, workers=1, **NO_LAYOUT)),
    (["reproduce", "--data", "D", "--out", "R", "--categories", "bottle", "wood", "--method", "msflow",
      "--backbone", "resnet18", "--random-weights", "--epochs", "2", "--max-minutes", "30", "--eval-every", "5",
      "--cache-dir", "C", "--archive", "a.tar.xz", "--download", "--device", "cpu", "--no-progress",
      "--url", "http://h/a.tar.xz", "--no-copy-to-local", "--workers", "2",
      "--checkpoint-every", "10", "--checkpoint-minutes", "5"],
     dict(command="reproduce", data="D", out="R", categories=["bottle", "wood"], method="msflow",
          backbone="resnet18", weights=None, random_weights=True, epochs=2, max_minutes=30.0, eval_every=5,
          cache_dir="C", checkpoint_every=10, checkpoint_minutes=5.0, download=True, archive="a.tar.xz", url="http://h/a.tar.xz", copy_to_local=False,
          device="cpu", no_progress=True, workers=2, **NO_LAYOUT)),
    (["download", "--data", "D"],
     dict(command="download", data="D", categories=None, archive=None, url=None, copy_to_local=None)),
    (["download", "--data", "D", "--categories", "bottle", "--archive", "/content/drive/a.tar.xz", "--url", "U",
      "--copy-to-local"],
     dict(command="download", data="D", categories=["bottle"], archive="/content/drive/a.tar.xz", url="U",
          copy_to_local=True)),
]


@pytest.mark.parametrize("argv, expected", PARSES, ids=[f"{i}-{argv[0]}" for i, (argv, _) in enumerate(PARSES)])
def test_parse_results(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert args == expected
    for k, v in expected.items():  # == would let 3.0 stand for 3
        assert type(args[k]) is type(v), k


@pytest.mark.parametrize("argv", [
    ["train", "--data", "D", "--category", "c"],  # no --out
    ["train", "--data", "D", "--category", "c", "--out", "O", "--method", "cflow"],
    ["evaluate"],  # no --checkpoint
    ["predict", "--checkpoint", "c.pt", "--input", "x", "--out", "P", "--nfa-scales"],
    ["reproduce", "--data", "D", "--out", "R", "--backbone", "vit"],
])
def test_bad_command_lines_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_epilog_examples_parse_and_render_one_per_line():
    lines = EPILOG.splitlines()
    # each backslash continuation is a real line break, followed by an indented option line
    for i, line in enumerate(lines):
        if line.endswith("\\"):
            assert lines[i + 1].startswith("      --"), lines[i + 1]
    assert not re.search(r"\S {3,}--", EPILOG), "a continuation was swallowed: use \\\\ in the non-raw string"
    assert max(map(len, lines)) <= 120
    commands = EPILOG.replace("\\\n", " ").splitlines()
    examples = [c.strip() for c in commands if c.strip().startswith("python -m uflow_lib ")]
    assert len(examples) == 11
    for example in examples:
        argv = shlex.split(example)[3:]
        args = build_parser().parse_args(argv)
        assert args.command == argv[0]
