"""Checks of the user's input made before any work: settings, input size, device, folders, weights files, and
whether an existing ``last.pt`` belongs to the run that asks to resume it.

Every check raises :class:`UserInputError` (a ``ValueError``) or one of its kinds, with a one-line message that
says what was received, what was expected and the fix. ``python -m uflow_lib`` prints such errors as one line
and exits with status 2 (``--debug`` shows the traceback); library callers can catch ``ValueError``.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = [
    "UserInputError", "CheckpointError", "DeviceError", "WeightsFileError",
    "check_train_settings", "input_size_multiple", "check_input_size", "check_device", "check_out_dir",
    "sha256_of", "check_state_dict_file", "data_fingerprint", "check_same_run", "short_reason",
    "why_unreadable",
]


class UserInputError(ValueError):
    """An expected error caused by the user's input or files (not a bug): the command line prints one line."""


class CheckpointError(UserInputError):
    """A checkpoint that cannot be read, or that belongs to another run."""


class DeviceError(UserInputError):
    """A ``--device`` that does not exist on this machine."""


class WeightsFileError(UserInputError):
    """A backbone weights file that is not the backbone's state dict."""


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (``limit`` characters at most), for a one-line report."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def why_unreadable(path: str | Path, err: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, in a reader's words (from the file's first bytes and the error).

    PyTorch files are zip archives (``PK\\x03\\x04``; before PyTorch 1.6, pickles starting with ``\\x80``).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"it cannot be opened ({e.strerror or short_reason(e)})"
    text = str(err)
    if not head:
        return "the file is empty"
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        kind = "a text file" if all(32 <= c < 127 or c in (9, 10, 13) for c in head) else "another format"
        return f"it is not a PyTorch file ({kind})"
    if isinstance(err, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "the file is truncated or damaged (an interrupted copy or download?)"
    if "Weights only load failed" in text:
        return "it holds Python objects that safe loading (weights_only=True) refuses"
    return short_reason(err, 120)


def _names(keys, limit: int = 4) -> str:
    """``a, b, c, d and 7 more`` for a collection of key names (sorted)."""
    keys = sorted(map(str, keys))
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# ------------------------------------------------------------------------------------------------- settings
def check_train_settings(cfg) -> None:
    """Refuse settings of a resolved :class:`~uflow_lib.config.TrainConfig` that would fail later or silently.

    Epochs, batch size, learning rate, flow steps must be positive (0 is refused, never replaced by a default);
    the input size must suit the backbone (:func:`check_input_size`); ``--weights`` with ``--random-weights`` is
    a contradiction; the weights file must exist.
    """
    def whole(name: str, option: str, value, low: int, example: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserInputError(f"{option} must be a whole number >= {low}, got {value!r}; pass e.g. "
                                 f"{option} {example}")

    whole("epochs", "--epochs", cfg.epochs, 1, 30)
    whole("batch_size", "--batch-size", cfg.batch_size, 1, 8)
    whole("flow_steps", "--flow-steps", cfg.flow_steps, 1, 4)
    whole("padim_channels", "--padim-channels", cfg.padim_channels, 1, 100)
    _check_uflow_options(cfg)
    if not (isinstance(cfg.coreset_ratio, (int, float)) and 0 < cfg.coreset_ratio <= 1):
        raise UserInputError(f"--coreset-ratio must be a fraction in (0, 1], got {cfg.coreset_ratio!r}; pass e.g. "
                             "--coreset-ratio 0.1 (1 keeps every patch feature)")
    whole("eval_every", "--eval-every", cfg.eval_every, 0, 5)
    whole("variance_size", "--variance-size", cfg.variance_size, 0, 128)
    whole("seed", "--seed", cfg.seed, 0, 0)
    if cfg.seed >= 2 ** 32:
        raise UserInputError(f"--seed must be below 2**32 (numpy's limit), got {cfg.seed}; pass e.g. --seed 0")
    from .methods import get_method

    trainable = get_method(cfg.method).trainable
    if trainable and not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserInputError(f"--lr must be a positive finite learning rate, got {cfg.lr!r}; pass e.g. --lr 1e-3")
    if cfg.max_minutes is not None and not (math.isfinite(cfg.max_minutes) and cfg.max_minutes >= 0):
        raise UserInputError(f"--max-minutes must be >= 0 minutes, got {cfg.max_minutes!r}; pass e.g. "
                             f"--max-minutes 60, or leave it out for no limit")
    check_input_size(cfg.method, cfg.backbone, cfg.input_size, cfg.strides)
    if cfg.weights is not None and not cfg.pretrained:
        raise UserInputError(f"--weights {cfg.weights} and --random-weights contradict each other (a weights file "
                             f"is not random); drop one of them")
    if cfg.weights is not None:
        weights = Path(cfg.weights)
        if weights.is_dir():
            raise WeightsFileError(f"--weights {weights} is a folder; pass the state-dict file itself (e.g. "
                                   f"{weights}/mobilenetv2_100_imagenet_from_tflite.pth)")
        if not weights.is_file():
            raise FileNotFoundError(f"weights file {weights} not found; pass an existing state dict, or omit "
                                    f"--weights to download ImageNet weights from the hub (needs internet)")


def _check_uflow_options(cfg) -> None:
    """``--subnet-kernels`` and ``--strides``: U-Flow's options, each refused with the fix where it cannot work."""
    for option, value in (("--subnet-kernels", cfg.subnet_kernels), ("--strides", cfg.strides)):
        if value is not None and cfg.method != "uflow":
            raise UserInputError(f"{option} is an option of --method uflow only (got --method {cfg.method}); drop it")
    k = cfg.subnet_kernels
    if k is not None and (len(k) != cfg.flow_steps or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                          or v % 2 == 0 for v in k)):
        raise UserInputError(f"--subnet-kernels needs {cfg.flow_steps} odd sides >= 1, one per flow step "
                             f"(--flow-steps {cfg.flow_steps}), got {list(k)}; pass e.g. --subnet-kernels "
                             + " ".join(["1"] * cfg.flow_steps))
    st = cfg.strides
    if st is None:
        return
    if cfg.backbone == "mcait":
        raise UserInputError("--strides applies to CNN backbones (MS-CaiT gives two fixed maps); use --backbone "
                             "mobilenetv2, resnet18 or wide_resnet50_2, or drop --strides")
    ok = (len(st) >= 2 and all(isinstance(v, int) and v in (2, 4, 8, 16, 32) for v in st)
          and all(b == 2 * a for a, b in zip(st, st[1:])))
    if not ok:
        raise UserInputError(f"--strides must be 2 or more of 2, 4, 8, 16, 32, each twice the previous (U-Flow "
                             f"joins each scale to the next coarser one), got {list(st)}; pass e.g. --strides 4 8 16")


def input_size_multiple(method: str, backbone: str, strides=None) -> int:
    """The number an input side must be a multiple of: the stride of the coarsest backbone stage the method reads.

    timm's CNN stage ``i`` has stride ``2**(i + 1)`` (resnet18, wide_resnet50_2, mobilenetv2), so U-Flow and
    MSFlow need multiples of 16 and SANFlow (stage 4) multiples of 32. Other sizes give latent maps whose
    sides do not halve from scale to scale. MS-CaiT has one fixed size (448), returned here.
    """
    from .features import BACKBONES
    from .methods import get_method

    if backbone == "mcait":
        return BACKBONES["mcait"].default_input_size
    if strides is not None:  # U-Flow's option
        return max(strides)
    indices = get_method(method).out_indices(backbone) or BACKBONES[backbone].out_indices
    return 2 ** (max(indices) + 1)


def check_input_size(method: str, backbone: str, size, strides=None) -> None:
    """Refuse an input side the backbone's strides do not divide; the message lists working sizes near it."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise UserInputError(f"--input-size must be a whole number of pixels, got {size!r}")
    if backbone == "mcait":
        if size != 448:
            raise UserInputError(f"--input-size {size} does not work with --backbone mcait: MS-CaiT's position "
                                 f"embeddings are fixed at 448 px; pass --input-size 448 (or leave it out), or "
                                 f"use a CNN backbone (mobilenetv2, resnet18) for other sizes")
        return
    m = input_size_multiple(method, backbone, strides)
    if size >= m and size % m == 0:
        return
    below = (size // m) * m
    near = [s for s in (below - m, below, below + m, below + 2 * m) if s >= m][:3]
    raise UserInputError(
        f"--input-size {size} does not work with --backbone {backbone} and --method {method}: the side must be a "
        f"positive multiple of {m} (the stride of the coarsest backbone stage used); sizes near it that work: "
        f"{', '.join(map(str, near))} (the usual one is 256)")


def check_device(name: str) -> torch.device:
    """``name`` as a torch device that exists here (``"auto"``: CUDA when available, else the CPU).

    Refused before anything loads: an unknown device string, CUDA (or ``cuda:i``) without such a GPU, MPS
    where it is unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise DeviceError(f"--device {name!r} is not a device name ({short_reason(err)}); use auto, cpu, cuda or "
                          f"cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is visible here (torch.cuda.is_available() is False; "
                              f"torch {torch.__version__}); use --device cpu, or --device auto to pick what exists")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto")
    return device


# ------------------------------------------------------------------------------------------------- folders
def _probe_write(folder: Path) -> None:
    """Create and delete a temporary file in ``folder`` (raises OSError when it cannot be written)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def check_out_dir(path: str | Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file, or whose nearest existing folder cannot be written.

    Nothing is created: a missing folder is made later, by the first write. The probe of writability creates
    and removes one temporary file (``os.access`` alone says yes to root on a read-only mount).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{option} {p} is a file, not a folder; pass a folder (it is created if missing)")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"{option} {p} cannot be created: {existing} is a file; pass another folder")
    try:
        _probe_write(existing)
    except OSError as err:
        raise UserInputError(f"{option} {p} is not writable ({existing}: {err.strerror or short_reason(err)}); "
                             f"pass a folder you can write to") from err


# ------------------------------------------------------------------------------------------------ weights
def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a weights file holds, unwrapped and cleaned as timm does (``state_dict``/``model`` keys,
    ``module.`` prefixes), loaded with ``weights_only=True``."""
    from timm.models import clean_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise WeightsFileError(f"cannot read weights file {path}: {why_unreadable(path, err)}; pass the "
                               f"backbone's .pth state dict") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"weights file {path} holds a {type(obj).__name__}, not a state dict (a dict of "
                               f"parameter names to tensors); pass the backbone's .pth state dict")
    return clean_state_dict(dict(obj))


def check_state_dict_file(path: str | Path, full: Mapping[str, torch.Tensor], used: Mapping[str, torch.Tensor],
                          backbone: str) -> None:
    """Refuse a weights file unless it holds every tensor the backbone uses, with the right shapes.

    Parameters
    ----------
    path : path
        The ``--weights`` file.
    full : mapping
        State dict (or shapes on the meta device) of the whole classification model: the keys the file may hold.
    used : mapping
        State dict of the features-only model: the keys the file must hold.
    backbone : str
        Name for the message.

    timm loads features-only models with ``strict=False``, so without this check a file of other keys (or none
    of the right ones) would leave the backbone silently random.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    bad_values = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in used if k not in sd]
    unexpected = [k for k in sd if k not in full]
    if missing or unexpected or bad_values:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(used)} tensors {backbone} needs are missing ({_names(missing)})")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        if bad_values and not unexpected:
            parts.append(f"non-tensor values: {_names(bad_values)}")
        raise WeightsFileError(f"weights file {path} is not a {backbone} state dict: {'; '.join(parts)}; pass "
                               f"the backbone's own weights, or --random-weights")
    wrong = [k for k in used if tuple(sd[k].shape) != tuple(used[k].shape)]
    if wrong:
        k = wrong[0]
        raise WeightsFileError(f"weights file {path} does not fit {backbone}: {len(wrong)} tensors have other "
                               f"shapes, e.g. {k} is {tuple(sd[k].shape)} in the file but {tuple(used[k].shape)} "
                               f"in the model (another variant?); pass the backbone's own weights")


# ------------------------------------------------------------------------------------------------- resume
def data_fingerprint(paths: Sequence[str | Path]) -> str:
    """Hex SHA-256 of what identifies a training set wherever it lies: each file's folder name, name and byte
    size, in the given order. The same images moved to another root give the same fingerprint."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_same_run(ckpt: Mapping, cfg, weights_sha256: str | None, last: str | Path,
                   fingerprint: Callable[[], str] | None = None) -> list[str]:
    """Refuse to resume ``last`` (its dict ``ckpt``) with a run that differs in what its weights depend on.

    Refused (:class:`CheckpointError`): another architecture (method, backbone, input size, seed, flow
    settings), another pretrained flag, another weights file (compared by SHA-256, stored in the checkpoint as
    ``weights_sha256``). Returned as warnings: another data root or category (a deliberate fine-tuning is
    possible, an accident is likely), unless ``fingerprint()`` (called only then) equals the checkpoint's
    ``data_fingerprint``: the same training images, moved.
    """
    from .config import TrainConfig
    from .methods import architecture

    saved_cfg = TrainConfig.from_dict(ckpt["config"])
    fix = f"use another --out folder, or delete {last} to start over"
    saved, now = architecture(saved_cfg), architecture(cfg)
    if saved != now:
        diff = [f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)]
        raise CheckpointError(f"{last} was trained with {', '.join(diff)}; {fix}")
    if saved_cfg.pretrained != cfg.pretrained:
        what = {True: "pretrained backbone weights", False: "--random-weights"}
        raise CheckpointError(f"{last} was trained with {what[saved_cfg.pretrained]}, this run asks for "
                              f"{what[cfg.pretrained]}; resuming would continue another model: {fix}")
    if cfg.pretrained:
        saved_sha = ckpt.get("weights_sha256", "unknown")
        if saved_sha == "unknown":  # a checkpoint from before the hash was stored: compare what is known
            changed = (saved_cfg.weights is None) != (cfg.weights is None)
        else:
            changed = saved_sha != weights_sha256
        if changed:
            src = lambda w, h: "the hub's weights" if w is None else f"{w} (sha256 {str(h)[:12]})"  # noqa: E731
            raise CheckpointError(f"{last} was trained with backbone weights {src(saved_cfg.weights, saved_sha)}, "
                                  f"this run passes {src(cfg.weights, weights_sha256)}; {fix}")
    warnings = []
    moved = False
    if fingerprint is not None and ckpt.get("data_fingerprint") is not None:
        try:
            moved = ckpt["data_fingerprint"] == fingerprint()
        except (OSError, ValueError):  # the new data cannot be listed: the warning stands, training will say why
            moved = False
    if (not _same_path(saved_cfg.data, cfg.data) or saved_cfg.category != cfg.category) and not moved:
        warnings.append(f"{last} was trained on --data {saved_cfg.data} --category {saved_cfg.category}; this run "
                        f"reads --data {cfg.data} --category {cfg.category} and continues that model on it "
                        f"(use another --out for a separate run)")
    return warnings

