r"""Synthetic anomalies for training: CutPaste-like defects pasted into normal images, with exact masks.

SANFlow (Kim et al.) trains on images that carry synthetic anomalies, so that its split base distribution
learns where normal features end. :func:`synthesize_anomalies` puts, with probability ``p`` (paper: 0.75), one
defect into each image: a soft-edged rectangle or disc blended in from another training image, or a thin
rotated "scar" cut from the same image with its brightness changed (CutPaste's scar). It returns the images
and the masks :math:`m \in \{0, 1\}` of the changed pixels. All randomness comes from one generator, so the
same generator state gives the same images (training seeds it per batch, so a resumed run is identical).

References
----------
D. Kim, S. Baik, T. H. Kim, "SANFlow: Semantic-Aware Normalizing Flow for Anomaly Detection and Localization",
NeurIPS 2023.
C.-L. Li, K. Sohn, J. Yoon, T. Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection and
Localization", CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ANOMALY_KINDS", "synthesize_anomalies"]

ANOMALY_KINDS = ("rectangle", "circle", "scar")

def _as_rng(rng: np.random.Generator | torch.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, a torch Generator or an int seed, got {type(rng).__name__}")


def _blend(out: torch.Tensor, mask: torch.Tensor, source: torch.Tensor, kind: str, rng: np.random.Generator) -> None:
    """Soft rectangle/circle of ``source`` (3, H, W) blended into ``out`` (3, H, W) in place; ``mask`` (H, W)."""
    H, W = out.shape[-2:]
    S = min(H, W)
    dev = out.device  # the ramp is made where the image is
    if kind == "rectangle":
        hh, ww = (int(rng.integers(max(2, S // 16), max(3, S // 4 + 1))) for _ in range(2))
        yy, xx = torch.meshgrid(torch.arange(hh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        inner = torch.minimum(torch.minimum(yy + 1, hh - yy), torch.minimum(xx + 1, ww - xx)).float()  # 1 at edge
        ramp = (inner / max(1, min(hh, ww) // 4)).clamp(max=1.0)  # (hh, ww), > 0 everywhere in the box
    else:  # circle
        r = float(rng.uniform(max(1.5, S / 16), max(2.0, S / 6)))
        hh = ww = 2 * int(math.ceil(r)) + 1
        yy, xx = torch.meshgrid(torch.arange(hh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        dist = torch.hypot((yy - hh // 2).float(), (xx - ww // 2).float())
        ramp = ((r - dist) / max(1.0, r / 4)).clamp(0.0, 1.0)  # (hh, ww), 0 outside the disc
    if hh > H or ww > W:
        raise ValueError(f"image {H}x{W} is too small for a synthetic anomaly; use images of at least 16x16")
    alpha = float(rng.uniform(0.5, 1.0)) * ramp  # blend weight
    y0, x0 = int(rng.integers(0, H - hh + 1)), int(rng.integers(0, W - ww + 1))  # where it goes
    ys, xs = int(rng.integers(0, H - hh + 1)), int(rng.integers(0, W - ww + 1))  # where it is cut from
    box = out[:, y0:y0 + hh, x0:x0 + ww]
    box.mul_(1 - alpha).add_(alpha * source[:, ys:ys + hh, xs:xs + ww])
    mask[y0:y0 + hh, x0:x0 + ww] = torch.maximum(mask[y0:y0 + hh, x0:x0 + ww], (alpha > 0).float())


def _scar(out: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, rng: np.random.Generator) -> None:
    """Thin patch of ``image`` (3, H, W), rotated by ±45°, brightness ×[0.8, 1.2], pasted into ``out`` in place."""
    H, W = out.shape[-2:]
    k = min(H, W) / 256  # CutPaste's scar: width 2–16 px, length 10–25 px at 256²
    w, length = max(1.0, rng.uniform(2, 16) * k), max(3.0, rng.uniform(10, 25) * k)
    theta = math.radians(rng.uniform(-45, 45))
    r = int(math.ceil(math.hypot(w, length) / 2)) + 1
    if 2 * r + 1 > min(H, W):
        raise ValueError(f"image {H}x{W} is too small for a scar; use images of at least 16x16")
    cy, cx, sy, sx = (int(rng.integers(r, n - r)) for n in (H, W, H, W))  # target and source centres
    offsets = torch.arange(-r, r + 1, device=out.device)  # on the image's device: no host-to-device index copies
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")  # (2r+1, 2r+1)
    u = math.cos(theta) * dx + math.sin(theta) * dy  # coordinates in the scar's own frame
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    inside = (u.abs() <= w / 2) & (v.abs() <= length / 2)
    ty, tx = (cy + dy)[inside], (cx + dx)[inside]
    src = image[:, sy + v[inside].round().long(), sx + u[inside].round().long()]  # (3, n)
    out[:, ty, tx] = (src * float(rng.uniform(0.8, 1.2))).clamp(0.0, 1.0)
    mask[ty, tx] = 1.0


def synthesize_anomalies(
    images: torch.Tensor, rng: np.random.Generator | torch.Generator | int, p: float = 0.75,
    sources: torch.Tensor | None = None, kinds: Sequence[str] = ANOMALY_KINDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put one synthetic anomaly into each image with probability ``p`` (CutPaste-like, see module docstring).

    Parameters
    ----------
    images : (B, 3, H, W) float tensor in [0, 1]
        Normal training images of one class (not normalised).
    rng : numpy Generator, torch Generator or int
        All randomness is drawn from it: the same generator state gives the same output.
    p : float
        Probability that an image gets an anomaly (paper: 0.75).
    sources : (N, 3, H, W) tensor, optional
        Other training images of the class to blend from; default: another image of the batch.
    kinds : sequence of {"rectangle", "circle", "scar"}
        Kinds drawn uniformly.

    Returns
    -------
    augmented : (B, 3, H, W) tensor
        Equal to ``images`` wherever ``masks`` is 0.
    masks : (B, 1, H, W) float tensor in {0, 1}
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0 or any(k not in ANOMALY_KINDS for k in kinds) or not kinds:
        raise ValueError(f"need 0 <= p <= 1 and kinds from {ANOMALY_KINDS}; got p={p}, kinds={list(kinds)}")
    gen = _as_rng(rng)
    B = images.shape[0]
    out, masks = images.clone(), images.new_zeros(B, 1, *images.shape[-2:])
    for b in range(B):
        if gen.random() >= p:
            continue
        kind = kinds[int(gen.integers(len(kinds)))]
        if kind == "scar":
            _scar(out[b], masks[b, 0], images[b], gen)
            continue
        if sources is not None:
            src = sources[int(gen.integers(len(sources)))]
        else:
            src = images[(b + 1 + int(gen.integers(B - 1))) % B] if B > 1 else images[b]
        _blend(out[b], masks[b, 0], src, kind, gen)
    return out, masks
