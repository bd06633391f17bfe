"""Tests of uflow_lib.download on a tiny local .tar.xz (no network: urlopen is replaced)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uflow_lib import download
from uflow_lib.data import MVTecDataset
from uflow_lib.download import ARCHIVE_NAME, MVTEC_SHA256, MVTEC_URL, download_mvtec, sha256sum


def _make_archive(tmp_path: Path, categories=("bottle", "carpet"), extra: dict[str, bytes] | None = None):
    """A tiny MVTec-like tar.xz; returns (path, its sha256 computed independently with hashlib)."""
    src = tmp_path / "src"
    for c in categories:
        for sub in ("train/good", "test/good", "test/crack"):
            (src / c / sub).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(src / c / sub / "000.png")
        (src / c / "ground_truth" / "crack").mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(src / c / "ground_truth" / "crack" / "000_mask.png")
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    path = tmp_path / "archive.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _no_network(*args, **kwargs):
    raise AssertionError("urlopen must not be called")


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_constants():
    assert MVTEC_SHA256 == "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    assert MVTEC_URL.startswith("https://www.mydrive.ch/") and MVTEC_URL.endswith(ARCHIVE_NAME)


def test_sha256sum_golden_and_chunking(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")  # FIPS 180-2 test vector
    assert sha256sum(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    p.write_bytes(data)
    assert sha256sum(p, chunk_size=7) == sha256sum(p) == hashlib.sha256(data).hexdigest()


def test_existing_archive_verified_extracted_and_not_redone(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    dest = tmp_path / "mvtec"
    assert download_mvtec(dest, archive=archive, sha256=digest, categories=["bottle"]) == dest
    assert (dest / "bottle" / "ground_truth" / "crack" / "000_mask.png").is_file()
    assert (dest / "license.txt").read_text() == "CC BY-NC-SA 4.0"
    assert not (dest / "carpet").exists()  # only what was asked for
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # staging folder removed
    ds = MVTecDataset(dest, "bottle", "test", input_size=8, mask_size=8)
    assert ds.labels == [1, 0] and ds[0]["mask"].sum() == 64

    stamp = (dest / "bottle" / "train" / "good" / "000.png").stat().st_mtime_ns
    monkeypatch.setattr(download, "sha256sum", lambda *a, **k: pytest.fail("no re-hash when already present"))
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("no re-extraction"))
    download_mvtec(dest, archive=archive, sha256=digest, categories=["bottle"])
    assert (dest / "bottle" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp


def test_second_category_added_later_from_same_archive(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    dest = tmp_path / "mvtec"
    download_mvtec(dest, archive=archive, sha256=digest, categories=["bottle"])
    (dest / "bottle" / "train" / "good" / "000.png").write_bytes(b"kept")
    download_mvtec(dest, archive=archive, sha256=digest.upper(), categories=["bottle", "carpet"])
    assert (dest / "carpet" / "test" / "crack" / "000.png").is_file()
    assert (dest / "bottle" / "train" / "good" / "000.png").read_bytes() == b"kept"  # not re-extracted


def test_wrong_hash_refused_before_unpacking(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    wrong = "0" * 64
    dest = tmp_path / "mvtec"
    with pytest.raises(ValueError, match=f"mismatch for .*archive.tar.xz: expected {wrong}, got {digest}.*delete it"):
        download_mvtec(dest, archive=archive, sha256=wrong, categories=["bottle"])
    assert not (dest / "bottle").exists() and archive.is_file()  # never deleted for the user


def test_download_with_progress_then_reuse(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    payload = archive.read_bytes()
    calls = []

    def fake_urlopen(request, timeout=None):
        calls.append(request.full_url)
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "mvtec"
    download_mvtec(dest, url="https://example.org/a.tar.xz", sha256=digest, categories=["carpet"])
    assert calls == ["https://example.org/a.tar.xz"]
    assert sha256sum(dest / ARCHIVE_NAME) == digest and not (dest / (ARCHIVE_NAME + ".part")).exists()
    assert (dest / "carpet" / "train" / "good" / "000.png").is_file()
    download_mvtec(dest, url="https://example.org/a.tar.xz", sha256=digest, categories=["carpet", "bottle"])
    assert len(calls) == 1 and (dest / "bottle" / "test").is_dir()  # the verified archive was reused


def test_corrupt_download_kept_as_part_and_not_renamed(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(archive.read_bytes()[:100]))
    target = tmp_path / "drive" / "mvtec.tar.xz"  # e.g. a path on Google Drive
    with pytest.raises(ValueError, match=r"mvtec.tar.xz.part: expected .*delete it"):
        download_mvtec(tmp_path / "mvtec", archive=target, sha256=digest, categories=["bottle"])
    assert not target.exists() and target.with_name("mvtec.tar.xz.part").stat().st_size == 100


def test_missing_category_in_archive(tmp_path, monkeypatch):
    archive, digest = _make_archive(tmp_path)
    with pytest.raises(ValueError, match=r"no complete category 'botle'.*\['bottle', 'carpet', 'license.txt'\]"):
        download_mvtec(tmp_path / "mvtec", archive=archive, sha256=digest, categories=["botle"])
    assert not (tmp_path / "mvtec" / "bottle").exists()


def test_unsafe_member_rejected(tmp_path):
    archive, digest = _make_archive(tmp_path, extra={"bottle/../../evil.txt": b"x"})
    with pytest.raises(tarfile.FilterError):
        download_mvtec(tmp_path / "mvtec", archive=archive, sha256=digest, categories=["bottle"])
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "mvtec" / "bottle").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"pass \['bottle'\]"):
        download_mvtec(tmp_path, categories="bottle")
    with pytest.raises(ValueError, match="categories is empty"):
        download_mvtec(tmp_path, categories=[])
    with pytest.raises(ValueError, match="not 64 hex digits"):
        download_mvtec(tmp_path, sha256="abc", categories=["bottle"])
    (tmp_path / "bottle").mkdir()
    with pytest.raises(FileExistsError, match="lacks train/ or test/.*delete it"):
        download_mvtec(tmp_path, archive=tmp_path / "none.tar.xz", categories=["bottle"])
