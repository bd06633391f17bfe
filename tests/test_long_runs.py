"""Long-run safety: checkpoints every N epochs or on a timer, test features extracted once, MS-CaiT depth."""

from __future__ import annotations

import pytest
import torch

from uflow_lib import training
from uflow_lib.config import TrainConfig
from uflow_lib.feature_cache import ReplayExtractor
from uflow_lib.methods import architecture, build_extractor_for
from test_training import _cfg as tiny_config


def _cfg(root, out, **kw) -> TrainConfig:
    """The tiny run of tests/test_training.py, five epochs unless told otherwise."""
    return tiny_config(root, out, **{"epochs": 5, **kw})


def _saved_epochs(monkeypatch) -> list[int]:
    saved: list[int] = []
    real = training.save_checkpoint

    def spy(path, **kw):
        if path.name == "last.pt":
            saved.append(kw["epoch"])
        return real(path, **kw)

    monkeypatch.setattr(training, "save_checkpoint", spy)
    return saved


def test_checkpoint_every_n_epochs_and_at_the_end(tiny_root, tmp_path, monkeypatch):
    saved = _saved_epochs(monkeypatch)
    res = training.train(_cfg(tiny_root, tmp_path, checkpoint_every=2), progress=False)
    assert res.finished and saved == [2, 4, 5]


def test_checkpoint_timer_writes_between_the_every_n(tiny_root, tmp_path, monkeypatch):
    saved = _saved_epochs(monkeypatch)
    clock = iter(range(0, 10_000, 40))  # 40 s per call of time.monotonic: a minute passes within every epoch
    monkeypatch.setattr(training.time, "monotonic", lambda: next(clock))
    training.train(_cfg(tiny_root, tmp_path, checkpoint_every=100, checkpoint_minutes=1.0), progress=False)
    assert saved == [1, 2, 3, 4, 5]


def test_max_minutes_writes_the_epoch_it_stops_at(tiny_root, tmp_path, monkeypatch):
    saved = _saved_epochs(monkeypatch)
    res = training.train(_cfg(tiny_root, tmp_path, checkpoint_every=100, max_minutes=0.0), progress=False,
                         log=lambda *_: None)
    assert (res.epochs_done, res.finished, saved) == (1, False, [1])
    resumed = training.train(_cfg(tiny_root, tmp_path, checkpoint_every=100, epochs=2), progress=False,
                             log=lambda *_: None)
    assert resumed.epochs_done == 2 and saved == [1, 2]


@pytest.mark.parametrize("bad", [dict(checkpoint_every=0), dict(checkpoint_every=1.5),
                                 dict(checkpoint_minutes=0), dict(cait_blocks=[3]), dict(cait_blocks=[0, 2])])
def test_bad_long_run_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(data=".", category="bottle", out=".", **bad)


def test_replay_extractor_runs_the_backbone_once_per_batch():
    calls = []

    class Backbone(torch.nn.Module):
        channels, strides = [2], [4]

        def forward(self, x):
            calls.append(x.shape[0])
            return [x[:, :2, ::4, ::4] * 2]

    replay = ReplayExtractor(Backbone())
    batches = [torch.rand(3, 3, 8, 8), torch.rand(2, 3, 8, 8)]
    first = [replay(b) for b in batches]
    again = [replay.rewind()(b) for b in batches[:1]] + [replay(batches[1])]
    assert calls == [3, 2] and (replay.computed, replay.replayed) == (2, 2)
    for a, b in zip(first, again):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="differs from the one recorded"):
        replay.rewind()(batches[1])


def test_eval_every_extracts_the_test_set_once_with_the_same_metrics(tiny_root, tmp_path, monkeypatch):
    wrappers: list[ReplayExtractor] = []
    real = training.ReplayExtractor
    monkeypatch.setattr(training, "ReplayExtractor", lambda e: wrappers.append(real(e)) or wrappers[-1])
    replayed = training.train(_cfg(tiny_root, tmp_path / "a", epochs=3, eval_every=1), progress=False)
    (replay,) = wrappers
    n_batches = -(-6 // 5)  # 6 test images, predict_maps' batch of 5
    assert (replay.computed, replay.replayed) == (n_batches, 2 * n_batches)

    class Recompute(real):  # the same run with the backbone run at every evaluation
        def forward(self, images):
            return self.extractor(images)

    monkeypatch.setattr(training, "ReplayExtractor", Recompute)
    recomputed = training.train(_cfg(tiny_root, tmp_path / "b", epochs=3, eval_every=1), progress=False)
    for a, b in zip(replayed.history, recomputed.history, strict=True):
        assert (a["test_pixel_auroc"], a["test_image_auroc"]) == (b["test_pixel_auroc"], b["test_image_auroc"])


def test_cait_blocks_reach_the_extractor_and_the_architecture():
    cfg = TrainConfig(data=".", category="bottle", out=".", pretrained=False, cait_blocks=[2, 1])
    extractor = build_extractor_for(cfg)
    assert (len(extractor.fine.blocks), len(extractor.coarse.blocks)) == (2, 1)
    assert extractor.channels == [768, 384]
    assert architecture(cfg) != architecture(TrainConfig(data=".", category="bottle", out=".", pretrained=False))
    with torch.no_grad():
        feats = extractor(torch.rand(1, 3, 448, 448))
    assert [tuple(f.shape) for f in feats] == [(1, 768, 28, 28), (1, 384, 14, 14)]


def test_a_random_backbone_checkpoint_evaluates_with_the_backbone_it_was_trained_with(tiny_root, tmp_path):
    from uflow_lib.checkpoint import load_trained

    res = training.train(_cfg(tiny_root, tmp_path, epochs=1), progress=False)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    _, first, _, _ = load_trained(res.checkpoint)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    torch.manual_seed(456)
    _, second, _, _ = load_trained(res.checkpoint)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    from uflow_lib.runtime import seed_everything

    seed_everything(0)  # what train() does before it builds the extractor (the config's seed is 0)
    again = training.build_extractor_for(training.resolve(_cfg(tiny_root, tmp_path)))
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
