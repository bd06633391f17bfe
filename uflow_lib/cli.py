"""Command line: ``python -m uflow_lib {train,evaluate,predict,make-dataset,make-validation,download,reproduce}``;
``--help`` for details.

``train`` and ``reproduce`` take ``--method uflow|msflow|sanflow`` or a baseline, ``patchcore|padim`` (fitted in
one pass; no NFA); ``evaluate`` and ``predict`` read the method
from the checkpoint (``--method`` there only checks it). ``train``, ``evaluate`` and ``reproduce`` read MVTec AD,
BTAD or a folder of normal and abnormal images (``--layout``, :mod:`uflow_lib.layouts`).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

from .config import DEFAULT_INPUT_SIZE, LAYOUTS, TrainConfig
from .download import URL_ENV, DownloadError
from .methods import BASELINES, METHODS
from .validation import UserInputError

__all__ = ["main", "build_parser"]

EPILOG = """\
examples:
  # a small dataset that needs no download, then a CPU run with the offline MobileNetV2
  python -m uflow_lib make-dataset --out data/generated
  python -m uflow_lib train --data data/generated --category texture --backbone mobilenetv2 \\
      --weights ../shared/weights/mobilenetv2_100_imagenet_from_tflite.pth --epochs 30 --lr 1e-3 --out runs/texture
  python -m uflow_lib evaluate --checkpoint runs/texture/last.pt --json
  python -m uflow_lib predict --checkpoint runs/texture/last.pt --input some/image.png --out predictions/

  # your own images: BTAD's layout (<data>/<product>/train/ok, test/ok, test/ko), or two folders
  python -m uflow_lib train --data btad --category 01 --backbone mobilenetv2 --epochs 30 --out runs/btad01
  python -m uflow_lib train --normal-dir photos/ok --abnormal-dir photos/defect --normal-split 0.2 \\
      --backbone mobilenetv2 --epochs 30 --out runs/photos

  # the same data with MSFlow or SANFlow (book chapter 7; CNN backbones only)
  python -m uflow_lib train --method msflow --data data/generated --category texture --backbone mobilenetv2 \\
      --weights ../shared/weights/mobilenetv2_100_imagenet_from_tflite.pth --epochs 30 --lr 1e-3 --out runs/msflow

  # the baselines on the same features: fitted in one pass (no epochs, no NFA)
  python -m uflow_lib train --method patchcore --data data/generated --category texture --backbone mobilenetv2 \\
      --weights ../shared/weights/mobilenetv2_100_imagenet_from_tflite.pth --out runs/patchcore

  # MVTec AD (4.9 GB): download it, or unpack a copy downloaded by hand (e.g. kept on Google Drive)
  python -m uflow_lib download --data mvtec_ad --categories bottle
  python -m uflow_lib download --data mvtec_ad --archive /content/drive/MyDrive/mvtec_anomaly_detection.tar.xz

  # the paper's setting on a GPU (MS-CaiT weights download from the Hugging Face hub)
  python -m uflow_lib train --data mvtec_ad --category bottle --backbone mcait --out runs/bottle
"""

def _settings_source() -> str:
    """Where unset epochs, batch size and learning rate come from, with the validated MobileNetV2 values."""
    from .methods import FLOWS, get_method
    from .methods.base import VALIDATED_BACKBONE

    chosen = "; ".join(f"{m} {r.epochs} epochs, batch {r.batch_size}, lr {r.lr:g}" for m in FLOWS
                       if (r := get_method(m).validated_recipe) is not None)
    return ("the paper's per-category table for uflow (200 epochs, batch 8, lr 1e-4 for a category outside it), the "
            "method's own recipe for msflow/sanflow"
            + (f"; with --backbone {VALIDATED_BACKBONE}, the settings chosen on a validation set ({chosen})"
               if chosen else ""))


_SETTINGS_SOURCE = _settings_source()

# Options shared by several subcommands are declared once, in these parent parsers (argparse ``parents=``), so
# their names, defaults and help texts cannot drift apart. Each function returns a fresh parent. A subcommand's
# own required options go in a first, local parent so that ``--help`` lists them first.


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _device_parent() -> argparse.ArgumentParser:
    """``--device``: train, evaluate, predict, reproduce."""
    p = _parent()
    p.add_argument("--device", default="auto",
                   help="torch device: auto (the default: CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    return p


def _progress_parent() -> argparse.ArgumentParser:
    """``--no-progress``: train, evaluate, reproduce."""
    p = _parent()
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _weights_parent() -> argparse.ArgumentParser:
    """``--weights``: train, evaluate, predict, reproduce."""
    p = _parent()
    p.add_argument("--weights",
                   help="local weights file of a CNN backbone, for offline use (mcait always loads from the hub). "
                        "Default: train/reproduce download ImageNet weights from the hub; evaluate/predict use "
                        "the file the checkpoint was trained with (pass --weights if it moved)")
    return p


def _method_select_parent() -> argparse.ArgumentParser:
    """``--method`` that chooses what to train: train, reproduce."""
    p = _parent()
    p.add_argument("--method", default="uflow", choices=METHODS,
                   help="method to train (default: uflow, the paper's; msflow and sanflow need a CNN backbone "
                        "and use their own recipes); the baselines patchcore and padim (padim: CNN backbones) are "
                        "fitted in one pass, without epochs or learning rate, and have no NFA")
    return p


def _method_check_parent() -> argparse.ArgumentParser:
    """``--method`` that only checks a checkpoint (which records its own method): evaluate, predict."""
    p = _parent()
    p.add_argument("--method", choices=METHODS,
                   help="only check that the checkpoint holds a model of this method (it records its own; "
                        "default: no check)")
    return p


def _checkpoint_parent() -> argparse.ArgumentParser:
    """``--checkpoint``: evaluate, predict."""
    p = _parent()
    p.add_argument("--checkpoint", required=True,
                   help="a last.pt (or best_on_test.pt) written by train or reproduce")
    return p


def _nfa_scales_parent() -> argparse.ArgumentParser:
    """``--nfa-scales``: evaluate, predict (the rule is uflow_lib.evaluation.default_nfa_scales)."""
    p = _parent()
    p.add_argument("--nfa-scales", type=int, nargs="+",
                   help="latent scale indices (0 = finest) that enter the tree NFA. Default: all scales for mcait; "
                        "for CNN backbones the one scale whose latent side is nearest 16 (the coarser on a tie)")
    return p


def _training_run_parent() -> argparse.ArgumentParser:
    """What a training run needs beyond its data and output: train, reproduce."""
    p = _parent()
    p.add_argument("--backbone", default="mcait", choices=sorted(DEFAULT_INPUT_SIZE),
                   help="feature extractor (default: mcait, the paper's, at 448 px; CPU users: mobilenetv2 or "
                        "resnet18, at 256 px; msflow and sanflow need a CNN)")
    p.add_argument("--random-weights", action="store_true",
                   help="random backbone weights instead of ImageNet ones (only for tests; results are poor)")
    p.add_argument("--epochs", type=int,
                   help="number of epochs (default: the paper's per-category table for uflow, the method's own "
                        "recipe for msflow/sanflow; see the description)")
    p.add_argument("--max-minutes", type=float,
                   help="stop cleanly at the first epoch boundary after this many minutes of training (reproduce: "
                        "per category); running the same command again resumes")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate on the test set every N epochs and keep best_on_test.pt, the epoch of highest "
                        "test pixel AUROC, or image AUROC without masks (NOT the paper's last-epoch protocol; "
                        "reproduce reports it in separate columns); the test set is opened before the first epoch; "
                        "default 0 = never")
    p.add_argument("--cache-dir",
                   help="folder to cache the training images' backbone features between runs (unused by sanflow, "
                        "which augments the images at every step)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="write last.pt every N epochs (and at the end, and when --max-minutes stops the run); a "
                        "crash loses fewer than N epochs (default 1; on a slow disk such as Google Drive use e.g. 10)")
    p.add_argument("--checkpoint-minutes", type=float, metavar="M",
                   help="also write last.pt when M minutes have passed since the last write (default: only every N "
                        "epochs)")
    return p


def _layout_parent() -> argparse.ArgumentParser:
    """The data's layout and the folder layout's options: train, evaluate, reproduce (uflow_lib.layouts)."""
    p = _parent()
    p.add_argument("--layout", choices=LAYOUTS,
                   help="mvtec (<data>/<category>/train/good, test/<good|defect>, optional ground_truth/<defect>/"
                        "<stem>_mask.png), btad (<data>/<product>/train/ok, test/ok, test/ko, optional ground_truth/"
                        "ko/<stem>.png|.bmp) or folder (--normal-dir, --abnormal-dir, ...). Default: folder when "
                        "--normal-dir (or another folder option) is given, else detected from <data>/<category> "
                        "(train/good: mvtec; train/ok with test/ko: btad); evaluate: the checkpoint's")
    p.add_argument("--normal-dir",
                   help="folder layout: the normal images (training, and the held-out part of --normal-split for "
                        "testing); the run is named after this folder unless --category/--categories names it")
    p.add_argument("--abnormal-dir", help="folder layout: the anomalous test images")
    p.add_argument("--mask-dir",
                   help="folder layout: masks of the anomalous images, <stem>.<ext> or <stem>_mask.<ext> for image "
                        "<stem>.<ext> (default: none, image AUROC only; pixel metrics n/a)")
    p.add_argument("--normal-test-dir", help="folder layout: the normal test images (or --normal-split)")
    p.add_argument("--normal-split", type=float, metavar="FRACTION",
                   help="folder layout: hold out this fraction of --normal-dir as normal test images, e.g. 0.2 "
                        "(seeded by --split-seed; no image is in both parts)")
    p.add_argument("--split-seed", type=int,
                   help="folder layout: seed of the --normal-split hold-out (default 0; evaluate: the checkpoint's)")
    return p


def _layout_options(a) -> dict:
    """The data options of ``train``/``reproduce``, as TrainConfig fields."""
    return dict(layout=a.layout or "auto", normal_dir=a.normal_dir, abnormal_dir=a.abnormal_dir, mask_dir=a.mask_dir,
                normal_test_dir=a.normal_test_dir, normal_split=a.normal_split,
                split_seed=0 if a.split_seed is None else a.split_seed)


def _mvtec_parent() -> argparse.ArgumentParser:
    """Which MVTec AD categories, and where the archive comes from: download, reproduce."""
    p = _parent()
    p.add_argument("--categories", nargs="+", help="default: all 15 MVTec AD categories")
    p.add_argument("--archive",
                   help="an mvtec_anomaly_detection.tar.xz (e.g. on Google Drive) to unpack into --data instead "
                        "of downloading (a missing file is downloaded to this path); reproduce: implies --download")
    p.add_argument("--url",
                   help=f"where to download the archive from (default: ${URL_ENV} if set, else MVTec's share link, "
                        "which MVTec rotates: if it fails, download the archive by hand and pass --archive); "
                        "reproduce: implies --download")
    p.add_argument("--copy-to-local", action=argparse.BooleanOptionalAction,
                   help="copy an existing --archive to --data before checking and unpacking it, so that a slow "
                        "mount is read once; the copy is kept and reused (default: only for archives under "
                        "/content/drive)")
    return p


def _add_train(sub) -> None:
    head = _parent()
    head.add_argument("--data",
                      help="dataset root folder (contains <category>/train/good, or <category>/train/ok for btad); "
                           "not with --layout folder")
    head.add_argument("--category",
                      help="category folder name, e.g. bottle (folder layout: the run's name, default the normal "
                           "folder's name)")
    head.add_argument("--out", required=True, help="output folder for last.pt (and best_on_test.pt)")
    p = sub.add_parser(
        "train", parents=[head, _layout_parent(), _method_select_parent(), _training_run_parent(), _weights_parent(),
                          _device_parent(), _progress_parent()],
        help="train U-Flow (or MSFlow, SANFlow) on the normal images of one category (resumable)",
        description="Train U-Flow (or --method msflow/sanflow) on <data>/<category>/train/good (or the normal "
        "images of another --layout). Writes "
        "<out>/last.pt after every epoch (see --checkpoint-every); running the same command again resumes from it. "
        "Unset epochs/batch "
        f"size/lr come from {_SETTINGS_SOURCE}.",
    )
    p.add_argument("--batch-size", type=int, help="batch size (default: as for --epochs)")
    p.add_argument("--lr", type=float,
                   help="Adam learning rate: constant for uflow, the peak of the msflow/sanflow schedules "
                        "(default: as for --epochs)")
    p.add_argument("--input-size", type=int,
                   help=f"image side in pixels (default: {DEFAULT_INPUT_SIZE['mcait']} for mcait, which needs it; "
                        f"{DEFAULT_INPUT_SIZE['mobilenetv2']} for CNN backbones)")
    p.add_argument("--flow-steps", type=int, default=4, help="U-Flow: coupling blocks per flow stage (default: 4)")
    p.add_argument("--subnet-kernels", type=int, nargs="+", metavar="K",
                   help="U-Flow option (not the paper's): kernel side of each flow step's subnet, e.g. 1 1 1 1 "
                        "(default: the paper's 3 1 3 1); benchmarks/results/uflow_options.md measures it")
    p.add_argument("--strides", type=int, nargs="+", metavar="S",
                   help="U-Flow option on CNN backbones: feature strides, fine → coarse, e.g. 4 8 16 (default: the "
                        "backbone's, 8 16 for mobilenetv2)")
    p.add_argument("--coreset-ratio", type=float, default=0.1,
                   help="PatchCore: fraction of the training patch features kept in the memory bank by the greedy "
                        "coreset (default 0.1; 1 keeps them all)")
    p.add_argument("--padim-channels", type=int, default=100,
                   help="PaDiM: size of the random channel subset (default 100, the paper's for ResNet18)")
    p.add_argument("--variance-size", type=int, default=64,
                   help="SANFlow: image side the variance network sees (0 = the full input; default 64)")
    p.add_argument("--norm", choices=["standardize", "layernorm", "layernorm_noaffine", "identity"],
                   help="U-Flow: feature normalisation (default: standardize for CNNs, identity for mcait)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, the shuffling and SANFlow's synthetic anomalies (default: 0)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", parents=[_checkpoint_parent(), _method_check_parent(), _layout_parent(),
                                            _weights_parent(), _nfa_scales_parent(), _device_parent(),
                                            _progress_parent()],
                       help="metrics of a checkpoint on the test split",
                       description="Evaluate a checkpoint at 256×256: pixel/image AUROC, AUPRO, mIoU of the "
                                   "automatic NFA threshold and of the oracle threshold, mean z² of normal images. "
                                   "A test set without ground-truth masks gives image AUROC only (pixel metrics "
                                   "n/a). --data or folder options replace the checkpoint's data as a whole.")
    p.add_argument("--data", help="dataset root (default: the one used for training; the layout is detected again "
                                  "unless --layout is given)")
    p.add_argument("--category", help="category (default: the one used for training)")
    p.add_argument("--nfa-bound", default="valid", choices=["valid", "paper"],
                   help="Chernoff bound form for the tree NFA: valid (clamped at the χ² mean; the default) or "
                        "paper (the authors' unclamped form)")
    p.add_argument("--no-nfa", action="store_true", help="skip the NFA segmentation and its mIoU metrics (faster)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_predict(sub) -> None:
    head = _parent()
    head.add_argument("--input", required=True, help="an image file or a folder of images")
    head.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("predict", parents=[_checkpoint_parent(), head, _method_check_parent(), _weights_parent(),
                                           _nfa_scales_parent(), _device_parent()],
                       help="anomaly map and NFA mask PNGs for an image or a folder",
                       description="Write <stem>_anomaly.png (the method's score map as gray levels, one scale "
                                   "for all the given images) and <stem>_nfa_mask.png (automatic a contrario "
                                   "segmentation, valid bound) for each image, at the image's own size (see "
                                   "--out-size). Names that clash (x.png, x.jpg) keep their extension (x_png_...). "
                                   "Hidden (.*) and unreadable files are skipped and reported. SANFlow's maps "
                                   "depend on the set of images: pass a folder.")
    p.add_argument("--out-size", metavar="N|WxH",
                   help="size of the written maps: N (square) or WxH pixels (default: each input's own size)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files already in --out (default: refuse before any work)")


def _add_make_dataset(sub) -> None:
    p = sub.add_parser("make-dataset", help="write the generated MVTec-layout dataset (offline)",
                       description="Write a small MVTec-layout dataset of textures with planted defects and exact "
                                   "masks, deterministic from the seed.")
    p.add_argument("--out", required=True, help="root folder to write (<out>/<category>/...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--category", default="texture")


def _add_make_validation(sub) -> None:
    p = sub.add_parser("make-validation",
                       help="write a validation set from the training images: held-out normal images plus "
                            "synthetic anomalies (choose settings on it, not on the test set)",
                       description="From <data>/<category>/train/good, write <out>/<category>/ in MVTec's layout: "
                                   "train/good (the images not held out, linked), test/good (the held-out ones) and "
                                   "test/synthetic with ground_truth/synthetic (each held-out image with one synthetic "
                                   "anomaly and its mask). Train and evaluate on it with --data <out>.")
    p.add_argument("--data", required=True, help="MVTec-layout root holding <category>/train/good")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, help="root folder to write (<out>/<category>/...)")
    p.add_argument("--fraction", type=float, default=0.2, help="fraction of train/good held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the anomalies (default 0)")


def _add_download(sub) -> None:
    head = _parent()
    head.add_argument("--data", required=True, help="folder to unpack MVTec AD into (<data>/<category>/...)")
    sub.add_parser("download", parents=[head, _mvtec_parent()],
                   help="download MVTec AD (or use a copy on disk), check its SHA-256 and unpack categories",
                   description="Make the --categories of MVTec AD available under --data: nothing to do if they "
                               "are there; else check the archive's SHA-256 (--archive, or a download to "
                               "<data>/mvtec_anomaly_detection.tar.xz, resumed if interrupted) and unpack them. "
                               "MVTec rotates its download links: if the download fails, get the archive from "
                               "https://www.mvtec.com/company/research/datasets/mvtec-ad after accepting the "
                               f"licence and pass --archive, or give a working link with --url (or ${URL_ENV}).")


def _add_reproduce(sub) -> None:
    head = _parent()
    head.add_argument("--data",
                      help="MVTec AD root (with --download: where to unpack it), or a BTAD-layout root with "
                           "--categories 01 02 03; not with --layout folder")
    head.add_argument("--out", required=True, help="output folder (one subfolder per category + the tables)")
    p = sub.add_parser("reproduce", parents=[head, _layout_parent(), _method_select_parent(), _training_run_parent(),
                                             _weights_parent(), _device_parent(), _progress_parent(), _mvtec_parent()],
                       help="train + evaluate many categories and write the paper's table",
                       description="Train each category (resumable), evaluate its last epoch and write "
                                   "<out>/results.md and results.csv beside the paper's numbers (U-Flow's on MVTec "
                                   "AD; blank for other methods and categories). Unset epochs/batch size/lr come "
                                   f"from {_SETTINGS_SOURCE}.")
    p.add_argument("--download", action="store_true",
                   help="first make the --categories available under --data: download MVTec AD (4.9 GB, SHA-256 "
                        "checked) and unpack them, unless they are already there")
    p.add_argument("--workers", type=int, default=1,
                   help="number of processes, one per GPU: worker i trains its share of the categories (balanced "
                        "by training images x epochs) on cuda:i, logging to <out>/worker<i>.log, and the tables "
                        "are merged in --categories order (default 1: one process; with --device cpu every "
                        "worker uses the CPU; more workers than categories are clamped)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uflow_lib",
        description="U-Flow: normalizing-flow anomaly detection with an a contrario threshold.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,evaluate,predict,make-dataset,make-validation,download,reproduce}")
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_make_dataset(sub)
    _add_make_validation(sub)
    _add_download(sub)
    _add_reproduce(sub)
    for p in sub.choices.values():  # one definition everywhere; absent from the namespace unless given
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the Python traceback instead of one line")
    return parser


def _train(a) -> int:
    from .training import train

    cfg = TrainConfig(
        data=a.data, category=a.category, out=a.out, method=a.method, variance_size=a.variance_size,
        backbone=a.backbone, weights=a.weights,
        pretrained=not a.random_weights, input_size=a.input_size, epochs=a.epochs, batch_size=a.batch_size,
        lr=a.lr, flow_steps=a.flow_steps, subnet_kernels=a.subnet_kernels, strides=a.strides,
        coreset_ratio=a.coreset_ratio, padim_channels=a.padim_channels,
        norm=a.norm, seed=a.seed, max_minutes=a.max_minutes,
        eval_every=a.eval_every, cache_dir=a.cache_dir, device=a.device, checkpoint_every=a.checkpoint_every,
        checkpoint_minutes=a.checkpoint_minutes, **_layout_options(a),
    )
    res = train(cfg, progress=not a.no_progress)
    if a.method in BASELINES:
        print(f"fitted ({a.method} has no epochs): checkpoint {res.checkpoint}")
        return 0
    state = "finished" if res.finished else "stopped early (run again to resume)"
    print(f"{state}: {res.epochs_done} epochs, checkpoint {res.checkpoint}")
    return 0


def _check_method(checkpoint: str, method: str | None) -> None:
    """``--method`` on evaluate/predict only confirms what the checkpoint says."""
    if method is None:
        return
    from .checkpoint import load_checkpoint

    saved = load_checkpoint(checkpoint)["config"].get("method", "uflow")
    if saved != method:
        raise ValueError(f"{checkpoint} holds a {saved} model, not {method}; drop --method or pass --method {saved}")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _evaluate(a) -> int:
    from .evaluation import NO_MASKS, evaluate_checkpoint

    _check_method(a.checkpoint, a.method)
    res = evaluate_checkpoint(a.checkpoint, a.data, a.category, a.device, a.weights, progress=not a.no_progress,
                              layout=a.layout, normal_dir=a.normal_dir, abnormal_dir=a.abnormal_dir,
                              mask_dir=a.mask_dir, normal_test_dir=a.normal_test_dir, normal_split=a.normal_split,
                              split_seed=a.split_seed, log=_to_stderr, nfa=not a.no_nfa, nfa_bound=a.nfa_bound,
                              nfa_scales=a.nfa_scales)
    if a.json:
        print(json.dumps(res))  # metrics that need masks are null without them
    else:
        for k, v in res.items():
            shown = NO_MASKS if v is None else (f"{v:.4f}" if isinstance(v, float) else v)
            print(f"{k:>24}  {shown}")
    return 0


def _predict(a) -> int:
    from .predict import predict_files

    from .predict import parse_out_size

    out_size = parse_out_size(a.out_size)
    _check_method(a.checkpoint, a.method)
    skipped = []

    def report(line: str) -> None:
        skipped.append(line)
        print(f"warning: {line}", file=sys.stderr)

    written = predict_files(a.checkpoint, a.input, a.out, weights=a.weights, device=a.device, nfa_scales=a.nfa_scales,
                            out_size=out_size, overwrite=a.overwrite, log=report)
    note = f" (skipped {len(skipped)} file{'s' * (len(skipped) != 1)}: see the warnings)" if skipped else ""
    print(f"wrote {len(written)} files to {a.out}{note}")
    return 0


def _make_dataset(a) -> int:
    from .synthetic import make_dataset

    path = make_dataset(a.out, seed=a.seed, category=a.category)
    print(f"wrote {path}")
    return 0


def _make_validation(a) -> int:
    from .validation_split import make_validation_set

    path = make_validation_set(a.data, a.category, a.out, fraction=a.fraction, seed=a.seed)
    print(f"wrote {path / a.category} (train with --data {path} --category {a.category})")
    return 0


def _fetch_mvtec(a, categories: list[str] | None) -> None:
    """The MVTec AD options of ``download`` and ``reproduce`` passed to :func:`~uflow_lib.download.download_mvtec`."""
    from .download import download_mvtec

    download_mvtec(a.data, archive=a.archive, url=a.url, categories=categories, copy_to_local=a.copy_to_local)


def _download(a) -> int:
    _fetch_mvtec(a, a.categories)
    print(f"MVTec AD ready under {a.data}")
    return 0


def _reproduce(a) -> int:
    from .data import MVTEC_CATEGORIES
    from .reproduce import WorkerError, reproduce, worker_devices

    folder = a.normal_dir is not None
    if a.data is None and not folder:
        raise ValueError("reproduce needs --data (a dataset root), or --normal-dir/--abnormal-dir for a folder of "
                         "images (--layout folder)")
    categories = a.categories or ([Path(a.normal_dir).name] if folder else list(MVTEC_CATEGORIES))
    worker_devices(a.workers, len(categories), a.device)  # a wrong --workers fails before any download
    if a.download or a.archive or a.url:
        _fetch_mvtec(a, categories)
    try:
        reproduce(a.data, a.out, categories, method=a.method, backbone=a.backbone, weights=a.weights,
                  pretrained=not a.random_weights, epochs=a.epochs, max_minutes=a.max_minutes,
                  eval_every=a.eval_every, cache_dir=a.cache_dir, device=a.device, progress=not a.no_progress,
                  workers=a.workers, checkpoint_every=a.checkpoint_every, checkpoint_minutes=a.checkpoint_minutes,
                  **_layout_options(a))
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tables written to {a.out}/results.md and results.csv")
    return 0


#: Errors of the user's input or environment, printed as one line (exit status 2) unless ``--debug``: bad values
#: (ValueError, which :class:`~uflow_lib.validation.UserInputError` and its kinds for checkpoints, devices and
#: weights files extend), missing or unwritable files (OSError), a diverged training, a failed download.
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, DownloadError, UserInputError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: ...`` line on stderr (no source line)."""
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict, "make-dataset": _make_dataset,
                "make-validation": _make_validation,
                "download": _download, "reproduce": _reproduce}
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return handlers[args.command](args)
        except EXPECTED_ERRORS as e:
            if debug:
                traceback.print_exc()
            print(f"error: {_one_line(e) or type(e).__name__}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
