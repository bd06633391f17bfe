r"""Offline generated anomaly-detection data in the MVTec AD folder layout.

Why a generator
---------------
Tests, the book and continuous integration must run without the 4.9 GB MVTec AD archive and without
internet. :func:`make_dataset` writes, in a few seconds, a small category that reads exactly like a real one
(:class:`uflow_lib.data.MVTecDataset` opens it unchanged)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png      (values {0, 255})
    <root>/<category>/synthetic.json                          (the parameters that made it)

How an image is made
--------------------
Every image is a *scene*: a procedural pattern evaluated at pixel coordinates :math:`(x, y)`, times a smooth
illumination field, plus mild pixel noise. Normal images differ by the things that differ between real
photographs of one product: a random translation (phase) and a rotation of a couple of degrees, a few
percent of pattern period and colour, a slow wobble of the threads or tile grid, uneven lighting and noise.

``"texture"`` (default, think *fabric* or *carpet*)
    A plain weave: warp and weft yarns of period :math:`p \approx 9` px (at 256²) cross over and under in a
    checkerboard; each yarn has a bright centre, dark gaps, its own thickness/brightness and two slightly
    different colours for warp and weft. Defects:

    - ``hole``: an irregular region with a sharp edge, dark inside, with a frayed rim;
    - ``scratch``: a thin curved line (a cubic Bézier, 4-7 px wide at 256²), bright or dark;
    - ``stain``: a soft irregular blob that tints and darkens the weave, which stays visible beneath;
    - ``fold``: a crease: the yarns in a band are pushed sideways (the pattern is re-rendered at displaced
      coordinates) with a highlight on one side and a shadow on the other.

``"tiles"`` (a structured pattern)
    Square tiles of about 64 px separated by light grout, each tile with its own shade, bevelled edges and
    speckle. Defects: ``crack`` (a dark jagged line, 3-5 px wide), ``chip`` (a broken-off piece showing
    rough substrate), ``stain``.

Every mask is the exact set of pixels the defect changed: outside it the defective image equals, byte for
byte, the normal image it was made from (:func:`render_sample` returns both so that this can be tested).
Each image draws from its own random stream ``numpy.random.default_rng([seed, group, index])``, so the output
is identical for the same seed (same PNG bytes) and changing one count does not change the other images.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CATEGORY = "texture"
_GENERATOR_VERSION = 1  # bump when the images change, so that make_dataset regenerates old folders


@dataclass
class _Scene:
    """A procedural image: ``render(x, y)`` (S, S, 3) times ``light`` (S, S, 3) plus ``noise`` (S, S, 3)."""

    render: Callable[[np.ndarray, np.ndarray], np.ndarray]
    light: np.ndarray
    noise: np.ndarray

    def image(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.render(x, y) * self.light + self.noise


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (size, size), about unit variance: bicubic upsampling of a (cells+1)² grid."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float64)


def _lighting(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    """Uneven illumination and slight colour cast, (S, S, 3)."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    gx, gy = rng.normal(0.0, 0.04, 2)
    shade = 1.0 + amount * _smooth(rng, size, 3) + gx * xx + gy * yy            # (S, S)
    tint = 1.0 + 0.015 * np.stack([_smooth(rng, size, 2) for _ in range(3)], -1)  # (S, S, 3)
    return shade[..., None] * tint


def _fabric(rng: np.random.Generator, size: int) -> _Scene:
    """A plain weave of period about 9 px (at 256²), its phase, angle, colours and lighting drawn from rng."""
    k = size / 256.0
    period = 9.0 * k * (1.0 + 0.03 * rng.standard_normal())
    theta = np.deg2rad(rng.normal(0.0, 2.0))
    c, s = np.cos(theta), np.sin(theta)
    ox, oy = rng.uniform(0.0, 2.0 * period, 2)
    warp_col = np.array([0.66, 0.56, 0.42]) * (1.0 + 0.02 * rng.standard_normal(3))
    weft_col = np.array([0.56, 0.47, 0.37]) * (1.0 + 0.02 * rng.standard_normal(3))
    yarn_u, yarn_v = 1.0 + 0.07 * rng.standard_normal((2, 64))  # per-yarn brightness
    wob_x, wob_y = 1.5 * k * _smooth(rng, size, 4), 1.5 * k * _smooth(rng, size, 4)

    def render(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = x + wob_x, y + wob_y
        u, v = (c * x + s * y + ox) / period, (-s * x + c * y + oy) / period
        iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fu, fv = u - iu, v - iv
        warp_on_top = (iu + iv) % 2 == 0
        # yarn cross-section (bright centre, dark gap) times its bulge along the float
        warp = np.sin(np.pi * fu) ** 0.7 * (0.75 + 0.25 * np.sin(np.pi * fv)) * yarn_u[iu % 64]
        weft = np.sin(np.pi * fv) ** 0.7 * (0.75 + 0.25 * np.sin(np.pi * fu)) * yarn_v[iv % 64]
        top = np.where(warp_on_top, warp, weft)
        colour = np.where(warp_on_top[..., None], warp_col, weft_col)  # (S, S, 3)
        return colour * (0.45 + 0.55 * top)[..., None]

    noise = 0.02 * rng.standard_normal((size, size, 1)) + 0.008 * rng.standard_normal((size, size, 3))
    return _Scene(render, _lighting(rng, size, 0.05), noise)


def _tiles(rng: np.random.Generator, size: int) -> _Scene:
    """Square tiles of about 64 px (at 256²) in light grout, each with its own shade and slope."""
    k = size / 256.0
    period = 64.0 * k * (1.0 + 0.02 * rng.standard_normal())
    grout = 3.5 * k
    theta = np.deg2rad(rng.normal(0.0, 1.0))
    c, s = np.cos(theta), np.sin(theta)
    ox, oy = rng.uniform(0.0, period, 2)
    base = np.array([0.70, 0.42, 0.30]) * (1.0 + 0.02 * rng.standard_normal(3))
    shade = 1.0 + 0.05 * rng.standard_normal((16, 16))
    slope = 0.06 * rng.standard_normal((16, 16, 2))  # a gentle gradient across each tile
    grout_col = np.array([0.80, 0.78, 0.74])

    def render(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (c * x + s * y + ox) / period, (-s * x + c * y + oy) / period
        iu, iv = np.floor(u).astype(np.int64) % 16, np.floor(v).astype(np.int64) % 16
        fu, fv = (u - np.floor(u)) * period, (v - np.floor(v)) * period  # px inside the tile
        edge = np.minimum(np.minimum(fu, period - fu), np.minimum(fv, period - fv))
        inside = np.clip((edge - grout / 2) / 1.0, 0.0, 1.0)  # 0 in the grout, 1 in the tile
        bevel = 1.0 - 0.18 * np.exp(-np.maximum(edge - grout / 2, 0.0) / (2.5 * k))
        tile = shade[iu, iv] * (1.0 + slope[iu, iv, 0] * (fu / period - 0.5)
                                + slope[iu, iv, 1] * (fv / period - 0.5)) * bevel
        return inside[..., None] * tile[..., None] * base + (1.0 - inside[..., None]) * grout_col

    speckle = 0.03 * rng.standard_normal((size, size, 1)) + 0.01 * rng.standard_normal((size, size, 3))
    return _Scene(render, _lighting(rng, size, 0.04), speckle)


def _blob(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Normalised radius rho (S, S) of an irregular blob: rho < 1 inside."""
    size = x.shape[0]
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
    r = radius * size * rng.uniform(0.7, 1.3)
    phi = np.arctan2(y - cy, x - cx)
    wobble = sum(rng.uniform(0.05, 0.15) * np.cos(n * phi + rng.uniform(0, 2 * np.pi)) for n in (2, 3, 5))
    return np.hypot(x - cx, y - cy) / (r * (1.0 + wobble))


def _curve_distance(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, jagged: float) -> np.ndarray:
    """Distance (S, S) in px to a random cubic Bézier curve of length about 0.3-0.6 S."""
    size = x.shape[0]
    start = rng.uniform(0.2 * size, 0.8 * size, 2)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    length = rng.uniform(0.3, 0.6) * size
    end = start + length * np.array([np.cos(direction), np.sin(direction)])
    c1, c2 = start + rng.normal(0.0, 0.25 * length, (2, 2))
    t = np.linspace(0.0, 1.0, 48)[:, None]
    pts = (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end  # (48, 2)
    pts[1:-1] += jagged * rng.standard_normal((46, 2))
    dist = np.full(x.shape, np.inf)
    for a, b in zip(pts[:-1], pts[1:]):  # exact point-to-segment distance, one segment at a time
        ab = b - a
        h = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / max(ab @ ab, 1e-9), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(x - a[0] - h * ab[0], y - a[1] - h * ab[1]))
    return dist


_Out = tuple[np.ndarray, np.ndarray]  # defective image (S, S, 3) float, mask (S, S) bool
Defect = Callable[[_Scene, np.ndarray, np.ndarray, np.random.Generator], _Out]


def _line(scene: _Scene, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, crack: bool) -> _Out:
    """A scratch (smooth, bright or dark) or a crack (jagged, dark) with a 1-px anti-aliased edge."""
    k = x.shape[0] / 256.0
    dist = _curve_distance(rng, x, y, jagged=1.2 * k if crack else 0.0)
    width = rng.uniform(1.0, 1.8) * k if crack else rng.uniform(1.5, 3.0) * k
    alpha = np.clip(width - dist + 0.5, 0.0, 1.0)[..., None]  # 1-px anti-aliased edge
    clean = scene.image(x, y)
    target = clean * 0.2 if crack or rng.random() < 0.5 else 0.35 + 0.65 * clean  # dark or bright
    return clean * (1 - alpha) + alpha * target, alpha[..., 0] > 0


def _stain(scene: _Scene, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Out:
    """A soft irregular blob that multiplies the pattern by a tint (the pattern stays visible)."""
    rho = _blob(rng, x, y, radius=0.1)
    alpha = rng.uniform(0.75, 0.95) * np.clip((1.0 - rho) / 0.35, 0.0, 1.0) ** 2
    tint = np.array([[0.55, 0.40, 0.25], [0.45, 0.50, 0.70], [0.35, 0.35, 0.35]])[rng.integers(3)]
    clean = scene.image(x, y)
    return clean * (1 - alpha[..., None]) + alpha[..., None] * clean * tint, rho < 1.0


def _hole(scene: _Scene, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, chip: bool) -> _Out:
    """A sharp-edged hole (dark inside, fabric) or chip (rough substrate, tiles) with a frayed rim."""
    size = x.shape[0]
    rho = _blob(rng, x, y, radius=0.07)
    clean = scene.image(x, y)
    if chip:  # rough light-grey substrate, shaded
        inner = (0.55 + 0.1 * _smooth(rng, size, 12))[..., None] * np.array([0.85, 0.82, 0.78])
    else:  # dark hole showing a little of what lies behind it
        inner = 0.06 + 0.04 * _smooth(rng, size, 10)[..., None] + 0.15 * scene.render(y, x)
    inner = inner + 0.03 * rng.standard_normal(clean.shape)
    rim = 1.0 + 0.12 * rng.uniform(0.5, 1.0)  # frayed / broken rim just outside the edge
    fray = (rho >= 1.0) & (rho < rim)
    out = np.where((rho < 1.0)[..., None], inner, clean)
    out = np.where(fray[..., None], 0.6 * clean + 0.4 * rng.uniform(0.1, 0.9, clean.shape), out)
    return out, rho < rim


def _fold(scene: _Scene, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Out:
    """A crease: the pattern re-rendered shifted by half a yarn inside a band, lit on one side, shaded on the other."""
    size = x.shape[0]
    k = size / 256.0
    cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
    phi = rng.uniform(0.0, np.pi)
    tx, ty = np.cos(phi), np.sin(phi)                          # along the crease
    along, across = (x - cx) * tx + (y - cy) * ty, -(x - cx) * ty + (y - cy) * tx
    half_len, half_width = rng.uniform(0.2, 0.35) * size, rng.uniform(6.0, 10.0) * k
    z, w = across / half_width, along / half_len
    inside = (np.abs(z) < 1) & (np.abs(w) < 1)
    # envelope: plateau with smooth ramps over the outer 30 % (across) / 15 % (along), zero outside
    ez, ew = np.clip((1 - np.abs(z)) / 0.3, 0, 1), np.clip((1 - np.abs(w)) / 0.15, 0, 1)
    ez, ew = ez * ez * (3 - 2 * ez), ew * ew * (3 - 2 * ew)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.6) * 9.0 * k * ez * ew  # px, about half a yarn
    crease = np.where(inside, np.exp(-((z * half_width / (1.5 * k)) ** 2)), 0.0)
    shading = 1.0 + ew * np.where(inside, 0.3 * np.sin(np.pi * z), 0.0) - 0.35 * ew * crease
    folded = scene.render(x - shift * ty, y + shift * tx) * scene.light * shading[..., None] + scene.noise
    return np.where(inside[..., None], folded, scene.image(x, y)), inside


CATEGORIES: dict[str, tuple[Callable[[np.random.Generator, int], _Scene], dict[str, Defect]]] = {
    "texture": (_fabric, {
        "hole": lambda sc, x, y, r: _hole(sc, x, y, r, chip=False),
        "scratch": lambda sc, x, y, r: _line(sc, x, y, r, crack=False),
        "stain": _stain,
        "fold": _fold,
    }),
    "tiles": (_tiles, {
        "crack": lambda sc, x, y, r: _line(sc, x, y, r, crack=True),
        "chip": lambda sc, x, y, r: _hole(sc, x, y, r, chip=True),
        "stain": _stain,
    }),
}
"""Category name -> (normal scene maker, {defect name: defect maker})."""


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def render_sample(category: str, defect: str | None, rng: np.random.Generator,
                  image_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one normal scene and, optionally, put one defect in it.

    Parameters
    ----------
    category : str
        A key of :data:`CATEGORIES`.
    defect : str or None
        A defect name of that category, or None for a normal image.
    rng : numpy.random.Generator
        The random stream (consumed).
    image_size : int
        Side S in pixels.

    Returns
    -------
    clean : numpy.ndarray
        (S, S, 3) uint8, the normal image.
    image : numpy.ndarray
        (S, S, 3) uint8, the image with the defect (equal to ``clean`` when ``defect`` is None).
    mask : numpy.ndarray
        (S, S) bool, True where the defect changed the image (all False for a normal image).
    """
    make_scene, defects = CATEGORIES[category]
    scene = make_scene(rng, image_size)
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64)  # (S, S) pixel coordinates
    clean = scene.image(x, y)
    if defect is None:
        return _to_uint8(clean), _to_uint8(clean), np.zeros((image_size, image_size), bool)
    image, mask = defects[defect](scene, x, y, rng)
    return _to_uint8(clean), _to_uint8(np.where(mask[..., None], image, clean)), mask


def make_dataset(root: str | Path, seed: int = 0, category: str = DEFAULT_CATEGORY, image_size: int = 256,
                 n_train: int = 60, n_test_good: int = 10, n_test_defect: int = 8,
                 defect_types: Sequence[str] | None = None, name: str | None = None) -> Path:
    """Write a generated category in the MVTec AD layout under ``root`` (see the module docstring).

    Parameters
    ----------
    root : str or Path
        MVTec-style root; the category is written to ``root/category``.
    seed : int
        Same seed, same bytes.
    category : str
        ``"texture"`` (fabric, default) or ``"tiles"``.
    image_size : int
        Side of the square PNG images, at least 64.
    n_train, n_test_good, n_test_defect : int
        Images in ``train/good``, ``test/good`` and in each ``test/<defect>``. Defaults (60, 10, 8) keep the
        generation to a few seconds and the training of a small flow quick.
    defect_types : sequence of str, optional
        Subset of the category's defects (default: all of them, e.g. hole, scratch, stain, fold).
    name : str, optional
        Folder name of the category under ``root`` (default: ``category``); e.g. ``"carpet"`` to stand in for
        an MVTec AD category in an offline MVTec-layout root.

    Returns
    -------
    Path
        ``root`` (pass it with ``category`` to :class:`uflow_lib.data.MVTecDataset`).

    Notes
    -----
    If ``root/category`` already holds a dataset generated with the same parameters it is reused untouched;
    one generated with other parameters is replaced; a folder not made by this function is never touched.
    """
    if category not in CATEGORIES:
        raise ValueError(f"category={category!r} is not generated here; choose one of {sorted(CATEGORIES)}.")
    known = list(CATEGORIES[category][1])
    types = known if defect_types is None else list(defect_types)
    if not types or any(t not in known for t in types) or len(set(types)) != len(types):
        raise ValueError(f"defect_types={defect_types!r}: expected distinct names from {known} for "
                         f"category {category!r} (or None for all of them).")
    for arg, value, low in (("seed", seed, 0), ("image_size", image_size, 64), ("n_train", n_train, 1),
                             ("n_test_good", n_test_good, 0), ("n_test_defect", n_test_defect, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{arg}={value!r}: expected an integer >= {low}.")
    if name is not None and (not isinstance(name, str) or not name or "/" in name or name in (".", "..")):
        raise ValueError(f"name={name!r}: expected a folder name such as 'carpet'.")
    root = Path(root)
    folder = root / (name or category)
    params = dict(version=_GENERATOR_VERSION, seed=int(seed), category=category, image_size=int(image_size),
                  n_train=int(n_train), n_test_good=int(n_test_good), n_test_defect=int(n_test_defect),
                  defect_types=types, **({"name": name} if name else {}))
    marker = folder / "synthetic.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == params:
            return root
        shutil.rmtree(folder)  # ours (it has the marker) but made with other parameters
    elif folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and was not made by make_dataset; choose another root or "
                              "delete that folder.")

    jobs = [("train/good", None, 0, n_train), ("test/good", None, 1, n_test_good)]
    jobs += [(f"test/{t}", t, 2 + known.index(t), n_test_defect) for t in types]
    for sub, defect, group, count in jobs:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if defect is not None:
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([int(seed), group, i])
            _, image, mask = render_sample(category, defect, rng, image_size)
            Image.fromarray(image).save(folder / sub / f"{i:03d}.png")
            if defect is not None:
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    marker.write_text(json.dumps(params, indent=1))
    return root
