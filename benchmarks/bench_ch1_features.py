"""Chapter 1's figures on real data: pretrained against random features on MVTec AD bottle, and the CaiT sizes.

1. The nearest-neighbour detector of section 1.2 on the real bottle category: the offline MobileNetV2 at 256
   (strides 8 and 16), a memory bank of every position of the first ``--n-train`` normal training images
   (default 20, as in the chapter), each test position scored by the distance to its nearest bank vector, the
   map upsampled bilinearly to 256×256, pixel AUROC over the whole test set (83 images), per scale. Pretrained
   weights against the same architecture with random weights (``torch.manual_seed(seed)``, seeds 0, 1, 2).
2. The two CaiT models of MS-CaiT (``cait_m48_448``, ``cait_s24_224``): parameters, counted on timm models
   built on the meta device (no weights, no download), and their float32 size (4 bytes a parameter), which is
   what the first full-mode run downloads.

Writes benchmarks/results/ch1_features.md and .json. Part 1 needs ../shared (skipped with a message otherwise).

    OMP_NUM_THREADS=1 python benchmarks/bench_ch1_features.py [--n-train 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import MVTEC_ROOT as ROOT, RESULTS, WEIGHTS, have_bottle, machine_line

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from uflow_lib.data import MVTecDataset  # noqa: E402
from uflow_lib.feature_cache import extract_features  # noqa: E402
from uflow_lib.features import build_extractor  # noqa: E402
from uflow_lib.metrics import pixel_auroc  # noqa: E402

SEEDS = (0, 1, 2)


def nn_distance(train: torch.Tensor, test: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Distance of each test position to its nearest training position: (N, C, h, w), (M, C, h, w) -> (M, h, w)."""
    N, C, h, w = train.shape
    bank = train.permute(0, 2, 3, 1).reshape(-1, C)                      # (N·h·w, C)
    query = test.permute(0, 2, 3, 1).reshape(-1, C)                      # (M·h·w, C)
    dist = [torch.cdist(q, bank).min(dim=1).values for q in query.split(chunk)]
    return torch.cat(dist).reshape(len(test), h, w)


def aurocs(extractor, train_set, test_set, masks) -> list[float]:
    """Pixel AUROC of the nearest-neighbour distance map at each scale of ``extractor``."""
    train_f = extract_features(extractor, train_set, progress=False)
    test_f = extract_features(extractor, test_set, progress=False)
    out = []
    for a, b in zip(train_f, test_f):
        maps = F.interpolate(nn_distance(a, b)[:, None], size=256, mode="bilinear", align_corners=False)[:, 0]
        out.append(pixel_auroc(maps.numpy(), masks))
    return out


def cait_sizes() -> list[dict]:
    rows = []
    for name in ("cait_m48_448", "cait_s24_224"):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        n = sum(p.numel() for p in model.parameters())
        rows.append(dict(model=name, parameters=n, float32_gb=n * 4 / 1e9))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_ch1_features.py" + "".join(f" {a}" for a in sys.argv[1:])
    result: dict = dict(command=command, machine=machine_line(load), date=time.strftime("%Y-%m-%d"))
    md = ["# Chapter 1: pretrained against random features on MVTec AD bottle; the size of the CaiT models", "",
          f"Command: `{command}` (from the repository root, 1 torch thread).", "",
          f"{result['machine']}; {result['date']}.", ""]
    if have_bottle():
        train_set = Subset(MVTecDataset(ROOT, "bottle", "train", input_size=256), range(args.n_train))
        test_set = MVTecDataset(ROOT, "bottle", "test", input_size=256, mask_size=256)
        masks = torch.stack([test_set[i]["mask"][0] for i in range(len(test_set))]).numpy()
        rows = {"pretrained": aurocs(build_extractor("mobilenetv2", weights=WEIGHTS), train_set, test_set, masks)}
        for seed in SEEDS:
            torch.manual_seed(seed)
            rows[f"random {seed}"] = aurocs(build_extractor("mobilenetv2", pretrained=False), train_set, test_set,
                                            masks)
            print(seed, rows[f"random {seed}"], flush=True)
        result["nearest_neighbour"] = dict(n_train=args.n_train, n_test=len(test_set), strides=[8, 16],
                                           pixel_auroc=rows)
        md += ["## 1. Nearest-neighbour distance, pixel AUROC (section 1.2)", "",
               f"Offline MobileNetV2 at 256; memory bank: every position of the first {args.n_train} normal "
               f"training images; {len(test_set)} test images; the distance map of each scale upsampled "
               "bilinearly to 256×256. Random: the same architecture with random weights.", "",
               "| weights | stride 8 | stride 16 |", "|---|---|---|",
               *[f"| {k} | {v[0]:.3f} | {v[1]:.3f} |" for k, v in rows.items()], ""]
    sizes = cait_sizes()
    result["cait"] = sizes
    total = sum(r["float32_gb"] for r in sizes)
    md += ["## 2. The CaiT models of MS-CaiT (what the first full-mode run downloads)", "",
           "Parameters counted on timm models built on the meta device; size at 4 bytes a parameter "
           "(GB = 10⁹ bytes).", "",
           "| model | parameters | float32 size |", "|---|---|---|",
           *[f"| `{r['model']}` | {r['parameters']:,} | {r['float32_gb']:.2f} GB |" for r in sizes],
           f"| both | {sum(r['parameters'] for r in sizes):,} | {total:.2f} GB (about {total:.1f} GB) |", ""]
    (RESULTS / "ch1_features.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "ch1_features.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
