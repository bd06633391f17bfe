"""Download, verify and unpack MVTec AD.

The archive ``mvtec_anomaly_detection.tar.xz`` (about 4.9 GB) holds one folder per category and the dataset's
licence (CC BY-NC-SA 4.0, MVTec Software GmbH; cite Bergmann et al., CVPR 2019). :func:`download_mvtec`

1. returns at once when every requested category is already unpacked in ``dest_dir``;
2. otherwise uses the archive if it is on disk (for instance a copy kept on Google Drive and passed as
   ``archive``; one on a slow mount is first copied to local disk, reading the mount once), or downloads it to
   ``<archive>.part``, resuming a half-written ``.part`` with an HTTP range request;
3. checks its SHA-256 before unpacking anything (a download is renamed to ``archive`` only once verified),
   and refuses a mismatch (a partial or corrupt file) without deleting it;
4. unpacks only the categories that are missing, in one streaming pass, with tarfile's ``"data"`` filter
   (no absolute paths, no ``..``, no links out of the destination), into a temporary folder whose categories
   are then renamed into place, so an interrupted run never leaves a half-written category behind.

MVTec rotates its share links, so the built-in :data:`MVTEC_URL` may stop working (HTTP 404). A network failure
raises :class:`DownloadError`, whose one-line message gives the two ways out: download the archive by hand from
:data:`MVTEC_PAGE` and pass it as ``archive``, or point ``url`` (or the ``UFLOW_MVTEC_URL`` environment variable)
at a working link.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .data import MVTEC_CATEGORIES

MVTEC_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
             "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
"""MVTec's public share of the full archive (the URL anomalib uses). MVTec rotates these links: it may 404."""

MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
"""MVTec AD's page, where the archive can be downloaded by hand after accepting the licence."""

MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
"""SHA-256 of ``mvtec_anomaly_detection.tar.xz``."""

ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"

URL_ENV = "UFLOW_MVTEC_URL"
"""Environment variable that overrides :data:`MVTEC_URL` (a ``url`` argument overrides both)."""

SLOW_MOUNTS: tuple[str, ...] = ("/content/drive",)
"""Folders of network mounts (Colab's Google Drive) whose archives ``copy_to_local=None`` copies to local disk."""

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be downloaded; the message is one line that says what to do instead."""


def resolve_url(url: str | None = None) -> str:
    """The URL to download from: ``url`` if given, else ``$UFLOW_MVTEC_URL`` if set and not empty, else the default."""
    return url or os.environ.get(URL_ENV) or MVTEC_URL


def _manual_route() -> str:
    return (f"MVTec rotates its download links: download {ARCHIVE_NAME} from {MVTEC_PAGE} after accepting the "
            "licence, keep it (e.g. on Google Drive) and pass archive=<its path> (command line: --archive PATH), "
            f"or set {URL_ENV} (command line: --url) to a working link.")


def _failure(url: str, what: str) -> DownloadError:
    """A :class:`DownloadError` whose message is a single line."""
    return DownloadError(" ".join(f"could not download MVTec AD from {url}: {what}. {_manual_route()}".split()))


def _reason(error: BaseException) -> str:
    """A short description of a network error (``URLError`` wraps the socket's own in ``reason``)."""
    reason = error.reason if isinstance(error, urllib.error.URLError) and not isinstance(
        error, urllib.error.HTTPError) else error
    if isinstance(reason, TimeoutError):
        return "timed out waiting for the server"
    return str(reason) or type(reason).__name__


def sha256sum(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """SHA-256 of a file as 64 lowercase hex digits, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(path: Path, expected: str, actual: str) -> ValueError:
    return ValueError(f"SHA-256 mismatch for {path}: expected {expected.lower()}, got {actual}. The file is "
                      "incomplete or corrupt (or a different archive): delete it and run again.")


def _verify(path: Path, sha256: str) -> None:
    actual = sha256sum(path)
    if actual != sha256.lower():
        raise _mismatch(path, sha256, actual)


def _resume_offset(response, offset: int) -> int:
    """Where a 206 answer's body starts (its ``Content-Range``), which must be ``offset``."""
    match = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
    return int(match[1]) if match else offset


def _fetch(url: str, target: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``<target>.part`` and return that path (renamed by the caller once verified).

    A ``.part`` left by an interrupted run is resumed with ``Range: bytes=<its size>-``: a 206 answer is appended,
    a 200 answer (a server without range support) rewrites the file from zero, and a 416 answer (nothing left
    past its end) returns it as it is, for the checksum to judge. ``timeout`` bounds each connection attempt and
    each read, not the whole download. Network failures raise :class:`DownloadError`.
    """
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "uflow_lib"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the .part already holds the whole file (or more: the checksum says)
            return part
        raise _failure(url, _reason(e)) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused connection, timeout, bad status line
        raise _failure(url, _reason(e)) from None

    with response:
        if offset and response.status == 206:
            if _resume_offset(response, offset) != offset:
                raise _failure(url, f"the server resumed at the wrong offset (asked for byte {offset}); delete "
                                    f"{part} and run again") from None
            mode = "ab"
        else:  # no .part, or a server that ignores Range and sends everything: start again from zero
            offset, mode = 0, "wb"
        length = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with open(part, mode) as out, tqdm(total=None if length is None else offset + length, initial=offset,
                                           unit="B", unit_scale=True, desc=target.name) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise _failure(url, f"the connection dropped after {offset + received} bytes ({_reason(e)}); "
                                        f"run again to resume {part}") from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length is not None and received < length:
        raise _failure(url, f"the connection closed after {offset + received} of {offset + length} bytes; "
                            f"run again to resume {part}")
    return part


def _on_slow_mount(path: Path) -> bool:
    resolved = path.expanduser().absolute()
    return any(resolved.is_relative_to(mount) for mount in SLOW_MOUNTS)


def _copy_and_hash(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` in one read, returning the copied bytes' SHA-256."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as out, tqdm(
            total=source.stat().st_size, unit="B", unit_scale=True, desc=f"copying {source.name}") as bar:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _local_copy(archive: Path, local: Path, sha256: str) -> Path:
    """A verified copy of ``archive`` at ``local``: reused if already there, else copied (reading ``archive`` once).

    A copy that fails its checksum is this function's own file: it is replaced. A source that fails it is left as
    it is, and the error names it.
    """
    if local.is_file():
        if sha256sum(local) == sha256.lower():
            return local
        local.unlink()
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} does not exist (and no verified local copy at {local}).")
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(local.name + ".part")
    try:
        actual = _copy_and_hash(archive, part)
        if actual != sha256.lower():
            raise _mismatch(archive, sha256, actual)
        part.replace(local)
    finally:
        part.unlink(missing_ok=True)
    return local


def _present(dest_dir: Path, category: str) -> bool:
    return (dest_dir / category / "train").is_dir() and (dest_dir / category / "test").is_dir()


def _parts(name: str) -> list[str]:
    return [p for p in PurePosixPath(name).parts if p not in (".", "/")]


def download_mvtec(dest_dir: str | Path, archive: str | Path | None = None, url: str | None = None,
                   sha256: str = MVTEC_SHA256, categories: Sequence[str] | None = None,
                   copy_to_local: bool | None = None, local_dir: str | Path | None = None,
                   timeout: float = 60.0) -> Path:
    """Make the MVTec AD categories available under ``dest_dir``, downloading only when needed.

    Parameters
    ----------
    dest_dir : str or Path
        Root to unpack into; it becomes ``<dest_dir>/<category>/train/...`` (the ``root`` of
        :class:`uflow_lib.data.MVTecDataset`).
    archive : str or Path, optional
        Where the archive is, or is to be downloaded to (default ``dest_dir/mvtec_anomaly_detection.tar.xz``).
        An existing file is verified and used, never downloaded again. A missing one is downloaded to
        ``<archive>.part`` (resumed if a previous run left one), renamed once verified and unpacked from there.
    url : str, optional
        Where to download from when ``archive`` does not exist. Default: the ``UFLOW_MVTEC_URL`` environment
        variable if set, else :data:`MVTEC_URL`. MVTec rotates its share links, so the built-in one may 404:
        then download the archive by hand from :data:`MVTEC_PAGE` and pass it as ``archive``, or pass a working
        link here.
    sha256 : str
        Expected SHA-256 of the archive (64 hex digits).
    categories : sequence of str, optional
        Categories to unpack (default: the 15 of :data:`uflow_lib.data.MVTEC_CATEGORIES`).
    copy_to_local : bool, optional
        Copy an existing ``archive`` to ``local_dir`` first, hashing it during the copy, and unpack the copy, so
        that a slow mount is read once instead of twice (hash, then unpack). ``None`` (the default): only when
        ``archive`` lies under one of :data:`SLOW_MOUNTS` (``/content/drive``, Colab's Google Drive). The local
        copy is **kept** (delete it to free its 4.9 GB): a later run, e.g. for more categories, verifies and
        reuses it without reading the mount. A fresh download is not copied.
    local_dir : str or Path, optional
        Folder of that local copy (default: ``dest_dir``).
    timeout : float
        Seconds that connecting, and each read of the download, may wait (not a limit on the whole download).

    Returns
    -------
    Path
        ``dest_dir``.

    Raises
    ------
    DownloadError
        The download failed (dead link, no network, timeout, connection dropped); a one-line message.
    ValueError
        A SHA-256 mismatch, or a category that the archive lacks.
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
    local = Path(dest_dir if local_dir is None else local_dir) / archive.name
    copying = _on_slow_mount(archive) if copy_to_local is None else copy_to_local
    if copying and local.absolute() != archive.absolute() and (archive.is_file() or local.is_file()):
        archive = _local_copy(archive, local, sha256)
    elif archive.is_file():
        _verify(archive, sha256)
    else:  # download; the final name only ever holds a verified archive
        archive.parent.mkdir(parents=True, exist_ok=True)
        part = _fetch(resolve_url(url), archive, timeout=timeout)
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
