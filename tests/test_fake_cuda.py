"""Device correctness without a GPU: every method's training step and inference on fake CUDA tensors.

PyTorch's ``FakeTensorMode`` runs operators on tensors that carry only metadata (shape, dtype, device). A fake
tensor may claim to live on ``cuda`` on a machine without one, and mixing it with a CPU tensor raises the
same "Expected all tensors to be on the same device" error a real GPU would (0-dim CPU tensors excepted, as on
a GPU). No arithmetic is done, so even MS-CaiT runs in seconds. Operators whose *result* depends on values
(``.item()``, ``.numpy()``, ``bool(tensor)``) cannot run on fake tensors; those steps (the NFA, the final
aggregation over a whole set) run on the CPU in the library anyway, after the device part tested here.
The backward pass is not run: PyTorch's autograd engine needs a CUDA runtime for CUDA tensors, even fake ones;
the tests check that the loss is attached to the graph.

The harness (:class:`FakeCuda`) moves a module built on the CPU to fake CUDA as ``module.to("cuda")`` would,
and refuses real tensors inside the mode, so a tensor left on the CPU by library code (a ``torch.arange``
without ``device=``, a plain tensor attribute that ``.to()`` does not move) is caught.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils.data import DataLoader

from uflow_lib.augmentation import ANOMALY_KINDS, synthesize_anomalies
from uflow_lib.data import MVTecDataset
from uflow_lib.features import build_extractor
from uflow_lib.methods import BASELINES, FLOWS, METHODS, ci_config, get_method, resolve
from uflow_lib.methods.msflow import msflow_anomaly_maps
from uflow_lib.methods.sanflow import sanflow_anomaly_maps
from uflow_lib.methods.uflow import anomaly_map, anomaly_score_map
from uflow_lib.scoring import image_scores, log_likelihood_maps, log_upsample, mean_z2
from uflow_lib.training import _batch_loss, _batches, _Run, _start

#: Small enough for seconds per method, large enough for MobileNetV2's stride-32 stage (3×3) and for synthetic
#: anomalies (at least 16×16); SANFlow's CPU recipe resizes it to 64 for its variance network.
INPUT_SIZE = 96
BATCH = 2


class FakeCuda:
    """A ``FakeTensorMode`` in which tensors live on a fake ``cuda`` device; use it as a context manager.

    Real tensors are refused inside the mode. A shape environment lets boolean-mask indexing (data-dependent
    sizes) run, as SANFlow's scar anomalies need.
    """

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=False, shape_env=ShapeEnv())
        self.device = torch.device("cuda")

    def __enter__(self) -> "FakeCuda":
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def tensor(self, t: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
        """Fake tensor of ``t``'s shape, strides and dtype (a real tensor, or a fake one), on ``t``'s device or on
        ``device``. Fake tensors hold no values, except 0-dim ones, which keep theirs so that Python control flow on
        a flag (``bool(buffer)``) works as on a GPU."""
        if isinstance(t, FakeTensor):
            if device is None:
                return t
            with self.mode:
                return t.to(device)
        with self.mode:
            fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device or t.device)
        if t.ndim == 0:
            with unset_fake_temporarily():
                fake.constant = t.detach().clone()
        return fake

    def module(self, module: nn.Module) -> nn.Module:
        """``module`` with every parameter and buffer moved to fake CUDA, in place (what ``.to("cuda")`` moves)."""
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    m._parameters[name] = nn.Parameter(self.tensor(p, self.device), requires_grad=p.requires_grad)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = self.tensor(b, self.device)
        return module


@pytest.fixture
def fake() -> FakeCuda:
    return FakeCuda()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from uflow_lib.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("fake_cuda_data"), seed=0, image_size=INPUT_SIZE, n_train=4,
                        n_test_good=1, n_test_defect=1)


@pytest.fixture(scope="module")
def cpu_run(tiny_data: Path, tmp_path_factory) -> Callable[[str], _Run]:
    """``cpu_run(method)``: the trainer's setup (:func:`uflow_lib.training._start`) of the book's CPU configuration
    of ``method`` (MobileNetV2, random weights) at a small input size, on the CPU: data loaded, features cached and
    fitted. Each call gives its own copy of the modules; the setup runs once per method."""
    runs: dict[str, _Run] = {}

    def get(method: str) -> _Run:
        if method not in runs:
            cfg = ci_config(tiny_data, tmp_path_factory.mktemp(method), method=method, input_size=INPUT_SIZE,
                            batch_size=BATCH)
            runs[method] = _start(resolve(cfg), progress=False)
        run = runs[method]
        return replace(run, model=copy.deepcopy(run.model), extractor=copy.deepcopy(run.extractor))

    return get


def _on_cuda(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


# ----------------------------------------------------------------------------------------------- the harness


def _add_cpu_ramp(x: torch.Tensor) -> torch.Tensor:
    return x + torch.arange(x.shape[-1])


def _add_device_ramp(x: torch.Tensor) -> torch.Tensor:
    return x + torch.arange(x.shape[-1], device=x.device)


def test_harness_catches_cpu_tensors(fake: FakeCuda) -> None:
    """A CPU tensor created by code (or a module not moved) meeting a CUDA tensor raises; device= passes."""
    with fake:
        x = torch.zeros(2, 5, device="cuda")
        with pytest.raises(RuntimeError, match="same device"):
            _add_cpu_ramp(x)
        assert _on_cuda(_add_device_ramp(x))
        assert _on_cuda(x * torch.tensor(2.0))  # a 0-dim CPU tensor is allowed with CUDA ones, as on a GPU
    linear = nn.Linear(5, 3)  # built on the CPU, never moved
    with fake:
        x = torch.zeros(2, 5, device="cuda")
        with pytest.raises(Exception, match="convert all Tensors to FakeTensors|same device"):
            linear(x)
        assert _on_cuda(fake.module(linear)(x))


def test_harness_module_keeps_flags(fake: FakeCuda) -> None:
    """Moved modules keep 0-dim values (flags read by Python) and which parameters are trainable."""
    m = nn.Linear(3, 2)
    m.weight.requires_grad_(False)
    m.register_buffer("fitted", torch.tensor(True))
    fake.module(m)
    with fake:
        assert bool(m.fitted) and _on_cuda(m.fitted)
    assert not m.weight.requires_grad and m.bias.requires_grad and _on_cuda(m.bias)


# ------------------------------------------------------------------------------------------------ the methods


@pytest.mark.parametrize("method", FLOWS)
def test_training_loss_on_fake_cuda(method: str, fake: FakeCuda, cpu_run: Callable[[str], _Run]) -> None:
    """One batch of the trainer's loss (its own setup and per-batch code) with the model on CUDA."""
    run = cpu_run(method)
    cfg = run.cfg
    fake.module(run.extractor)
    fake.module(run.model)
    run.device = fake.device
    # the training data stays on the CPU, as in training; the per-batch code moves each batch
    if run.features is not None:
        run.features = [fake.tensor(f) for f in run.features]
    if run.images is not None:
        run.images = fake.tensor(run.images)
    idx = fake.tensor(_batches(len(run.dataset), cfg.batch_size, cfg.seed)[0])
    run.model.train()
    with fake:
        loss = _batch_loss(run, idx, epoch=0, b=0)
    assert _on_cuda(loss) and loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.requires_grad, "the loss must reach the model's parameters"


@pytest.mark.parametrize("method", METHODS)
def test_inference_on_fake_cuda(method: str, fake: FakeCuda, cpu_run: Callable[[str], _Run]) -> None:
    """The evaluation's per-batch step (:meth:`FlowMethod.infer`, as ``predict_maps`` calls it) on CUDA; what it
    returns is on the CPU, where ``predict_maps`` turns it into numpy and computes the NFA."""
    run = cpu_run(method)
    cfg = run.cfg
    flow_method, model, extractor = get_method(method), fake.module(run.model), fake.module(run.extractor)
    model.eval()
    dataset = MVTecDataset(cfg.data, cfg.category, "test", input_size=cfg.input_size, mask_size=64)
    batch = next(iter(DataLoader(dataset, batch_size=BATCH, shuffle=False)))
    images = fake.tensor(batch["image"])
    with fake, torch.no_grad():
        latents, parts = flow_method.infer(model, extractor, images.to(fake.device), out_size=64)
        z2 = [("mean_z2", mean_z2(latents))] if flow_method.has_latents else []
    assert [z.shape[-1] for z in latents] == flow_method.latent_sides(model)
    assert (len(latents) > 0) == flow_method.has_latents
    for name, t in [*(("latent", z) for z in latents), *parts.items(), *z2]:
        assert t.device.type == "cpu", f"{method}: {name} is on {t.device}; predict_maps needs it on the CPU"
        assert t.shape[0] == BATCH, f"{method}: {name} has shape {tuple(t.shape)}"


@pytest.mark.parametrize("method", BASELINES)
def test_baseline_fit_on_fake_cuda(method: str, fake: FakeCuda, cpu_run: Callable[[str], _Run]) -> None:
    """A baseline's fit (memory bank, Gaussians) with the training features on the CPU, as training keeps them,
    and the model on CUDA: what it fits lands on CUDA."""
    run = cpu_run(method)
    model = fake.module(run.model)
    features = [fake.tensor(f) for f in run.features]  # on the CPU, as training keeps them
    assert not any(_on_cuda(f) for f in features)
    with fake:
        get_method(method).fit(model, features)
    for name, buf in model.named_buffers():
        assert _on_cuda(buf), f"{method}: buffer {name} is on {buf.device}"


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_synthetic_anomalies_on_fake_cuda(kind: str, fake: FakeCuda) -> None:
    """Every kind of synthetic anomaly (SANFlow's training input) is made on the images' device."""
    with fake:
        images = torch.rand(3, 3, 64, 64, device="cuda")
        out, masks = synthesize_anomalies(images, rng=0, p=1.0, kinds=(kind,))
        blended, _ = synthesize_anomalies(images, rng=1, p=1.0, sources=images.flip(0), kinds=(kind,))
    assert all(_on_cuda(t) for t in (out, masks, blended))
    assert out.shape == images.shape and masks.shape == (3, 1, 64, 64)


def _latents(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    return [torch.randn(BATCH, *s, device="cuda") for s in shapes]


SCORERS: dict[str, Callable[[], torch.Tensor | tuple]] = {
    "uflow anomaly_map": lambda: anomaly_map(_latents([(4, 8, 8), (6, 4, 4)]), 32),
    "uflow anomaly_score_map mean": lambda: anomaly_score_map(_latents([(4, 8, 8), (6, 4, 4)]), 32),
    "uflow anomaly_score_map product": lambda: anomaly_score_map(_latents([(4, 8, 8)]), 32, combine="product"),
    "msflow_anomaly_maps": lambda: msflow_anomaly_maps(_latents([(4, 8, 8), (6, 4, 4), (8, 2, 2)]), 32),
    "sanflow_anomaly_maps": lambda: sanflow_anomaly_maps([torch.randn(BATCH, 8, 8, device="cuda"),
                                                          torch.randn(BATCH, 4, 4, device="cuda")], 32),
    "log_likelihood_maps": lambda: log_likelihood_maps(_latents([(4, 8, 8)])),
    "log_upsample": lambda: log_upsample(torch.randn(BATCH, 1, 5, 7, device="cuda"), 32),
    "image_scores": lambda: image_scores(torch.randn(BATCH, 1, 32, 32, device="cuda")),
    "mean_z2": lambda: mean_z2(_latents([(4, 8, 8), (6, 4, 4)])),
}


@pytest.mark.parametrize("name", SCORERS)
def test_scoring_on_fake_cuda(name: str, fake: FakeCuda) -> None:
    """The score-map functions stay on the device of their input."""
    with fake:
        out = SCORERS[name]()
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    assert outs and all(_on_cuda(t) for t in outs), [t.device for t in outs]


# --------------------------------------------------------------------------------------------------- MS-CaiT


def test_mcait_on_fake_cuda(fake: FakeCuda) -> None:
    """MS-CaiT with random weights, on CUDA: one 448 batch gives 768×28×28 and 384×14×14.

    Built in fake mode, nothing is allocated. Only the first blocks are built (``cait_blocks``): every block
    runs the same code, and the paper's 41 + 21 blocks take about 9 s to build and 9 s to run even in fake
    mode (a real random CaiT-M48 takes ~40 s and 2 GB to build on a CPU).
    """
    with fake:
        extractor = build_extractor("mcait", pretrained=False, cait_blocks=(2, 2))
    fake.module(extractor)
    with fake:
        feats = extractor(torch.rand(BATCH, 3, 448, 448, device="cuda"))
    assert [tuple(f.shape) for f in feats] == [(BATCH, 768, 28, 28), (BATCH, 384, 14, 14)]
    assert all(_on_cuda(f) for f in feats)
    assert extractor.channels == [768, 384] and extractor.strides == [16, 32]


class _Ctx:
    """Stands in for autograd's context, to call a Function's forward and backward by hand (the autograd engine
    needs a real CUDA device for a backward pass on CUDA tensors)."""

    needs_input_grad = (True,) * 12

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors: torch.Tensor) -> None:
        pass


def test_hand_written_backward_passes_on_fake_cuda(fake: FakeCuda) -> None:
    """SANFlow's hand-written autograd functions (fused coupling block, factored subnet, batch norm + ReLU) make
    every tensor of their forward and backward passes on the input's device."""
    from uflow_lib.methods import sanflow as sf

    n, C, P, p, H = 12, 5, 4, 6, 2 * (5 - 5 // 2 + 4)
    with fake:
        cuda = dict(device="cuda")
        x, cond = torch.randn(n, C, **cuda), torch.randn(n, P, **cuda)
        w1, b1 = torch.randn(H, C - C // 2 + P, **cuda), torch.randn(H, **cuda)
        w2, b2 = torch.randn(2 * (C // 2), H, **cuda), torch.randn(2 * (C // 2), **cuda)
        gamma, offset, w_perm = torch.randn(1, C, **cuda), torch.randn(1, C, **cuda), torch.randn(C, C, **cuda)
        ctx = _Ctx()
        out, log_jac = sf._FusedCouplingFunction.forward(ctx, x, cond, w1, b1, w2, b2, gamma, offset, w_perm, 1.9, p)
        grads = sf._FusedCouplingFunction.backward(ctx, torch.randn_like(out), torch.randn_like(log_jac))
        inp = torch.cat([x[:, :C - C // 2], cond], 1)
        ctx2 = _Ctx()
        y = sf._FactoredSubnetFunction.forward(ctx2, inp, w1, b1, w2, b2, C - C // 2, p)
        grads += sf._FactoredSubnetFunction.backward(ctx2, torch.randn_like(y))
        ctx3 = _Ctx()
        outs = sf._BatchNormReLUFunction.forward(ctx3, x, torch.rand(C, **cuda), torch.randn(C, **cuda), 1e-5)
        grads += sf._BatchNormReLUFunction.backward(ctx3, torch.randn_like(outs[0]), None, None)
    tensors = [out, log_jac, y, *outs, *(g for g in grads if g is not None)]
    assert len(tensors) == 3 + 3 + 7 + 5 + 3 and all(_on_cuda(t) for t in tensors)
