"""Download, verify and unpack MVTec AD.

The archive ``mvtec_anomaly_detection.tar.xz`` (about 4.9 GB) holds one folder per category and the dataset's
licence (CC BY-NC-SA 4.0, MVTec Software GmbH; cite Bergmann et al., CVPR 2019). :func:`download_mvtec`

1. returns at once when every requested category is already unpacked in ``dest_dir``;
2. otherwise uses the archive if it is on disk (for instance a copy kept on Google Drive and passed as
   ``archive``), or downloads it to ``<archive>.part``;
3. checks its SHA-256 before unpacking anything (a download is renamed to ``archive`` only once verified),
   and refuses a mismatch (a partial or corrupt file) without deleting it;
4. unpacks only the categories that are missing, in one streaming pass, with tarfile's ``"data"`` filter
   (no absolute paths, no ``..``, no links out of the destination), into a temporary folder whose categories
   are then renamed into place, so an interrupted run never leaves a half-written category behind.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .data import MVTEC_CATEGORIES

MVTEC_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
             "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
"""MVTec's public share of the full archive (the URL anomalib uses)."""

MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
"""SHA-256 of ``mvtec_anomaly_detection.tar.xz``."""

ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file as 64 lowercase hex digits, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str) -> None:
    actual = sha256sum(path)
    if actual != sha256.lower():
        raise ValueError(f"SHA-256 mismatch for {path}: expected {sha256.lower()}, got {actual}. The file is "
                         "incomplete or corrupt (or a different archive): delete it and run again.")


def _fetch(url: str, target: Path) -> Path:
    """Download ``url`` to ``<target>.part`` and return that path (renamed by the caller once verified)."""
    part = target.with_name(target.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "uflow_lib"})
    with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    return part


def _present(dest_dir: Path, category: str) -> bool:
    return (dest_dir / category / "train").is_dir() and (dest_dir / category / "test").is_dir()


def _parts(name: str) -> list[str]:
    return [p for p in PurePosixPath(name).parts if p not in (".", "/")]


def download_mvtec(dest_dir: str | Path, archive: str | Path | None = None, url: str = MVTEC_URL,
                   sha256: str = MVTEC_SHA256, categories: Sequence[str] | None = None) -> Path:
    """Make the MVTec AD categories available under ``dest_dir``, downloading only when needed.

    Parameters
    ----------
    dest_dir : str or Path
        Root to unpack into; it becomes ``<dest_dir>/<category>/train/...`` (the ``root`` of
        :class:`uflow_lib.data.MVTecDataset`).
    archive : str or Path, optional
        Where the archive is, or is to be downloaded to (default ``dest_dir/mvtec_anomaly_detection.tar.xz``).
        An existing file is verified and used, never downloaded again.
    url : str
        Where to download from when ``archive`` does not exist.
    sha256 : str
        Expected SHA-256 of the archive (64 hex digits).
    categories : sequence of str, optional
        Categories to unpack (default: the 15 of :data:`uflow_lib.data.MVTEC_CATEGORIES`).

    Returns
    -------
    Path
        ``dest_dir``.
    """
    if isinstance(categories, str):
        raise TypeError(f"categories must be a list of names, got the string {categories!r}; "
                        f"pass [{categories!r}].")
    wanted = list(MVTEC_CATEGORIES if categories is None else categories)
    if any(not isinstance(c, str) for c in wanted):
        raise TypeError(f"categories must be strings, got {wanted!r}.")
    if not wanted:
        raise ValueError("categories is empty; pass None for all of them or e.g. ['bottle'].")
    if len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise ValueError(f"sha256={sha256!r} is not 64 hex digits; pass the archive's SHA-256.")
    dest_dir = Path(dest_dir)
    missing = [c for c in wanted if not _present(dest_dir, c)]
    if not missing:
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    for c in missing:
        if (dest_dir / c).exists():
            raise FileExistsError(f"{dest_dir / c} exists but lacks train/ or test/ (an incomplete copy?); "
                                  "delete it and run again.")

    archive = dest_dir / ARCHIVE_NAME if archive is None else Path(archive)
    if archive.is_file():
        _verify(archive, sha256)
    else:  # download; the final name only ever holds a verified archive
        archive.parent.mkdir(parents=True, exist_ok=True)
        part = _fetch(url, archive)
        _verify(part, sha256)
        part.replace(archive)

    if not hasattr(tarfile, "data_filter"):  # added in Python 3.10.12 / 3.11.4 / 3.12
        raise RuntimeError("unpacking safely needs tarfile's 'data' filter (Python >= 3.10.12, 3.11.4 or 3.12); "
                           "upgrade Python, or unpack the archive yourself and pass its folder as the root.")
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest_dir))
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(desc=f"unpacking {archive.name}", unit=" files") as bar:
            seen: set[str] = set()
            for member in tar:  # one streaming pass: a .tar.xz cannot seek backwards cheaply
                parts = _parts(member.name)
                if not parts:
                    continue
                seen.add(parts[0])
                beside = member.isfile() and len(parts) == 1 and not (dest_dir / parts[0]).exists()
                if parts[0] in missing or beside:  # a wanted category, or the licence / readme beside them
                    tar.extract(member, staging, filter="data")
                    bar.update(1)
        for c in missing:
            if not _present(staging, c):
                raise ValueError(f"the archive {archive} has no complete category {c!r} (train/ and test/); "
                                 f"its top-level entries are {sorted(seen)}. Choose categories among those.")
        for item in staging.iterdir():
            if not (dest_dir / item.name).exists():
                item.replace(dest_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest_dir
