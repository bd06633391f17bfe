"""One plotting style for the whole book, and the figures several chapters share."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["use_book_style", "to_numpy_image", "pca_rgb", "show_row", "overlay_mask"]


def use_book_style() -> None:
    """Matplotlib settings used by every chapter (readable sizes, no top/right spines, fixed DPI)."""
    plt.rcParams.update({
        "figure.dpi": 90, "savefig.dpi": 90, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
        "axes.spines.top": False, "axes.spines.right": False, "image.cmap": "viridis", "figure.max_open_warning": 0,
    })


def to_numpy_image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(3, H, W)`` tensor in [0, 1] or ``(H, W[, 3])`` array → ``(H, W[, 3])`` float array for ``imshow``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    return np.clip(x.squeeze(), 0, 1) if x.dtype.kind == "f" and x.max() <= 1.0 + 1e-6 else x.squeeze()


def pca_rgb(features: torch.Tensor, basis: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Project a feature map ``(C, H, W)`` on its first 3 principal components → ``(H, W, 3)`` in [0, 1].

    Returns the image and the ``(C, 3)`` basis, so other maps can be shown in the same colours.
    """
    C, H, W = features.shape
    x = features.reshape(C, H * W).T.float()  # (H·W, C)
    x = x - x.mean(0)
    if basis is None:
        _, _, v = torch.pca_lowrank(x, q=3, center=False)
        basis = v[:, :3]  # (C, 3)
    y = x @ basis  # (H·W, 3)
    y = (y - y.min(0).values) / (y.max(0).values - y.min(0).values + 1e-8)
    return y.reshape(H, W, 3).numpy(), basis


def show_row(images: Sequence, titles: Sequence[str] | None = None, cmap: str | None = None,
             size: float = 2.4, colorbar: bool = False, suptitle: str | None = None):
    """Show images side by side (tensors ``(3, H, W)`` or arrays); returns the figure."""
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size + 0.4), squeeze=False)
    for i, (ax, im) in enumerate(zip(axes[0], images)):
        h = ax.imshow(to_numpy_image(im), cmap=cmap)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i])
        if colorbar:
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def overlay_mask(ax, mask: np.ndarray, color: str = "red") -> None:
    """Draw the outline of a binary mask ``(H, W)`` on an axis."""
    ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=1)
