"""Tests of uflow_lib.download on a tiny local .tar.xz: urlopen replaced, or a real HTTP server on 127.0.0.1 (with
and without range requests) for the network paths: dead links, resumed and restarted downloads, dropped
connections, timeouts, the URL's overrides and the command line's one-line error."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uflow_lib import download
from uflow_lib.data import MVTecDataset
from uflow_lib.download import (ARCHIVE_NAME, MVTEC_PAGE, MVTEC_SHA256, MVTEC_URL, URL_ENV, DownloadError,
                                download_mvtec, resolve_url, sha256sum)

REPO = Path(__file__).resolve().parents[1]


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
    status = 200

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


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at ``/<ARCHIVE_NAME>`` (404 elsewhere), honouring ``Range: bytes=N-`` only when
    ``server.ranges``; ``server.drop_after`` cuts the body short, ``server.pause`` sleeps before (or between, with
    ``server.trickle``) the body's pieces. Each request is logged as (path, Range header, body bytes sent)."""

    def do_GET(self) -> None:
        srv = self.server
        asked = self.headers.get("Range")
        if self.path != "/" + ARCHIVE_NAME:
            srv.log.append((self.path, asked, 0))
            self.send_error(404)
            return
        data, start, status = srv.payload, 0, 200
        if asked is not None and srv.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1])
            if start >= len(data):
                srv.log.append((self.path, asked, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if srv.drop_after is not None:
            body = body[:srv.drop_after]
        pieces = [body[i:i + srv.trickle] for i in range(0, len(body), srv.trickle)] if srv.trickle else [body]
        sent = 0
        try:
            for piece in pieces:
                time.sleep(srv.pause)
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
        finally:
            srv.log.append((self.path, asked, sent))

    def log_message(self, *args) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that gave up (timeout test): not an error
        pass


@contextmanager
def _serve(payload: bytes, ranges: bool = True, drop_after: int | None = None, pause: float = 0.0,
           trickle: int = 0):
    """An HTTP server on 127.0.0.1 in a thread; yields it (``.url`` is the archive's URL, ``.log`` its requests)."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.payload, srv.ranges, srv.drop_after, srv.pause, srv.trickle, srv.log = (
        payload, ranges, drop_after, pause, trickle, [])
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.url = f"{srv.base}/{ARCHIVE_NAME}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(bytes, sha256) of a tiny MVTec-layout tar.xz with two categories."""
    path, digest = _make_archive(tmp_path_factory.mktemp("served"))
    return path.read_bytes(), digest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line_manual_route(message: str) -> None:
    assert "\n" not in message and message == message.strip()
    for text in (ARCHIVE_NAME, MVTEC_PAGE, "accepting the licence", "Google Drive", "archive=", "--archive",
                 URL_ENV, "--url"):
        assert text in message, text


@pytest.mark.parametrize("dead", ["404", "closed port"])
def test_dead_url_gives_one_line_error(dead, served, tmp_path):
    payload, digest = served
    dest = tmp_path / "mvtec"
    with _serve(payload) as srv:
        url = f"{srv.base}/missing" if dead == "404" else f"http://127.0.0.1:{_closed_port()}/{ARCHIVE_NAME}"
        with pytest.raises(DownloadError) as exc:
            download_mvtec(dest, url=url, sha256=digest, categories=["bottle"])
    message = str(exc.value)
    reason = "HTTP Error 404: Not Found" if dead == "404" else "Connection refused"
    assert message.startswith(f"could not download MVTec AD from {url}: ") and reason in message
    _assert_one_line_manual_route(message)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chained traceback
    assert not (dest / "bottle").exists() and not (dest / (ARCHIVE_NAME + ".part")).exists()


def _record_progress(monkeypatch) -> list[dict]:
    """Keyword arguments of every progress bar that the download module opens."""
    bars: list[dict] = []
    real = download.tqdm

    def recording(*args, **kwargs):
        bars.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(download, "tqdm", recording)
    return bars


def test_half_written_part_is_resumed_with_a_range_request(served, tmp_path, monkeypatch):
    payload, digest = served
    dest = tmp_path / "mvtec"
    dest.mkdir()
    half = len(payload) // 2
    (dest / (ARCHIVE_NAME + ".part")).write_bytes(payload[:half])
    bars = _record_progress(monkeypatch)
    with _serve(payload, ranges=True) as srv:
        download_mvtec(dest, url=srv.url, sha256=digest, categories=["bottle"])
    assert srv.log == [(f"/{ARCHIVE_NAME}", f"bytes={half}-", len(payload) - half)]  # only the rest was sent
    assert sha256sum(dest / ARCHIVE_NAME) == digest and not (dest / (ARCHIVE_NAME + ".part")).exists()
    assert (dest / "bottle" / "train" / "good" / "000.png").is_file()
    assert bars[0]["initial"] == half and bars[0]["total"] == len(payload)  # the bar starts where the file stops


def test_dropped_connection_then_resumed(served, tmp_path):
    payload, digest = served
    dest = tmp_path / "mvtec"
    part = dest / (ARCHIVE_NAME + ".part")
    cut = len(payload) // 3
    with _serve(payload, drop_after=cut) as srv, pytest.raises(DownloadError) as exc:
        download_mvtec(dest, url=srv.url, sha256=digest, categories=["bottle"])
    message = str(exc.value)
    assert f"the connection closed after {cut} of {len(payload)} bytes; run again to resume {part}" in message
    _assert_one_line_manual_route(message)
    assert part.stat().st_size == cut and not (dest / ARCHIVE_NAME).exists()
    with _serve(payload) as srv:
        download_mvtec(dest, url=srv.url, sha256=digest, categories=["bottle"])
    assert srv.log == [(f"/{ARCHIVE_NAME}", f"bytes={cut}-", len(payload) - cut)]
    assert sha256sum(dest / ARCHIVE_NAME) == digest and (dest / "bottle" / "test").is_dir()


def test_server_without_range_support_restarts_from_zero(served, tmp_path, monkeypatch):
    payload, digest = served
    dest = tmp_path / "mvtec"
    dest.mkdir()
    half = len(payload) // 2
    (dest / (ARCHIVE_NAME + ".part")).write_bytes(b"x" * half)  # appending to this could never verify
    bars = _record_progress(monkeypatch)
    with _serve(payload, ranges=False) as srv:
        download_mvtec(dest, url=srv.url, sha256=digest, categories=["carpet"])
    assert srv.log == [(f"/{ARCHIVE_NAME}", f"bytes={half}-", len(payload))]  # asked to resume, got it all
    assert sha256sum(dest / ARCHIVE_NAME) == digest and (dest / "carpet" / "train").is_dir()
    assert bars[0]["initial"] == 0


def test_complete_part_answered_416_is_verified_and_used(served, tmp_path):
    payload, digest = served
    dest = tmp_path / "mvtec"
    dest.mkdir()
    (dest / (ARCHIVE_NAME + ".part")).write_bytes(payload)
    with _serve(payload) as srv:
        download_mvtec(dest, url=srv.url, sha256=digest, categories=["bottle"])
    assert srv.log == [(f"/{ARCHIVE_NAME}", f"bytes={len(payload)}-", 0)]
    assert sha256sum(dest / ARCHIVE_NAME) == digest and (dest / "bottle" / "train").is_dir()


def test_timeout_bounds_each_read_not_the_whole_download(served, tmp_path):
    payload, digest = served
    with _serve(payload, pause=1.0) as srv, pytest.raises(DownloadError) as exc:  # silent for 1 s
        download_mvtec(tmp_path / "a", url=srv.url, sha256=digest, categories=["bottle"], timeout=0.3)
    assert "timed out" in str(exc.value)
    _assert_one_line_manual_route(str(exc.value))
    piece = len(payload) // 6 + 1
    with _serve(payload, pause=0.1, trickle=piece) as srv:  # 6 pieces 0.1 s apart: longer than 0.3 s in all
        start = time.monotonic()
        download_mvtec(tmp_path / "b", url=srv.url, sha256=digest, categories=["bottle"], timeout=0.3)
    assert time.monotonic() - start > 0.3 and (tmp_path / "b" / "bottle" / "train").is_dir()


def test_url_from_environment_variable_and_precedence(served, tmp_path, monkeypatch):
    payload, digest = served
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_url() == MVTEC_URL and resolve_url("http://a") == "http://a"
    monkeypatch.setenv(URL_ENV, "")
    assert resolve_url() == MVTEC_URL  # an empty variable is ignored
    with _serve(payload) as srv:
        monkeypatch.setenv(URL_ENV, srv.url)
        assert resolve_url() == srv.url and resolve_url("http://a") == "http://a"
        download_mvtec(tmp_path / "env", sha256=digest, categories=["bottle"])
        assert srv.log == [(f"/{ARCHIVE_NAME}", None, len(payload))]
        monkeypatch.setenv(URL_ENV, f"{srv.base}/missing")  # the argument wins over the variable
        download_mvtec(tmp_path / "arg", url=srv.url, sha256=digest, categories=["bottle"])
        assert [path for path, _, _ in srv.log] == [f"/{ARCHIVE_NAME}"] * 2
        with pytest.raises(DownloadError, match=f"from {srv.base}/missing: HTTP Error 404"):  # and is used
            download_mvtec(tmp_path / "env404", sha256=digest, categories=["bottle"])
    assert (tmp_path / "env" / "bottle" / "train").is_dir() and (tmp_path / "arg" / "bottle" / "train").is_dir()


def test_command_line_prints_one_line_and_fails(served, tmp_path):
    payload, _ = served
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop(URL_ENV, None)
    with _serve(payload) as srv:
        url = f"{srv.base}/missing"
        proc = subprocess.run([sys.executable, "-m", "uflow_lib", "download", "--data", str(tmp_path / "mvtec"),
                               "--categories", "bottle", "--url", url],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    assert line.startswith(f"error: could not download MVTec AD from {url}: HTTP Error 404: Not Found. ")
    _assert_one_line_manual_route(line)
    assert srv.log == [("/missing", None, 0)]


# --- an archive on a slow mount is copied to local disk once ------------------------------------------------------


def _watch_reads(monkeypatch) -> dict[str, list[Path]]:
    """Which files get hashed, copied and unpacked."""
    seen: dict[str, list[Path]] = {"hashed": [], "copied": [], "unpacked": []}
    real_sum, real_copy, real_open = download.sha256sum, download._copy_and_hash, tarfile.open

    def hashed(path, *a, **k):
        seen["hashed"].append(Path(path))
        return real_sum(path, *a, **k)

    def copied(source, target):
        seen["copied"].append(Path(source))
        return real_copy(source, target)

    def unpacked(name, *a, **k):
        seen["unpacked"].append(Path(name))
        return real_open(name, *a, **k)

    monkeypatch.setattr(download, "sha256sum", hashed)
    monkeypatch.setattr(download, "_copy_and_hash", copied)
    monkeypatch.setattr(tarfile, "open", unpacked)
    return seen


def test_archive_on_slow_mount_read_once_copy_kept_and_reused(tmp_path, monkeypatch):
    source, digest = _make_archive(tmp_path)
    drive = tmp_path / "drive"
    drive.mkdir()
    on_mount = source.replace(drive / ARCHIVE_NAME)
    monkeypatch.setattr(download, "SLOW_MOUNTS", (str(drive),))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    seen = _watch_reads(monkeypatch)
    dest = tmp_path / "mvtec"
    download_mvtec(dest, archive=on_mount, sha256=digest, categories=["bottle"])  # copy_to_local=None: auto
    local = dest / ARCHIVE_NAME
    assert seen == {"hashed": [], "copied": [on_mount], "unpacked": [local]}  # the mount was read once
    assert sha256sum(local) == digest and not (dest / (ARCHIVE_NAME + ".part")).exists()  # kept, verified
    assert (dest / "bottle" / "train").is_dir() and on_mount.is_file()

    seen["copied"].clear(), seen["unpacked"].clear()
    download_mvtec(dest, archive=on_mount, sha256=digest, categories=["bottle", "carpet"])  # a rerun
    assert seen == {"hashed": [local], "copied": [], "unpacked": [local]}  # the local copy reused, mount unread
    assert (dest / "carpet" / "test").is_dir()


def test_copy_to_local_explicit_choice_and_local_dir(tmp_path, monkeypatch):
    source, digest = _make_archive(tmp_path)
    seen = _watch_reads(monkeypatch)
    download_mvtec(tmp_path / "a", archive=source, sha256=digest, categories=["bottle"])  # not a slow mount
    assert seen["copied"] == [] and seen["unpacked"] == [source] and not (tmp_path / "a" / ARCHIVE_NAME).exists()
    monkeypatch.setattr(download, "SLOW_MOUNTS", (str(tmp_path),))
    download_mvtec(tmp_path / "b", archive=source, sha256=digest, categories=["bottle"], copy_to_local=False)
    assert seen["copied"] == [] and not (tmp_path / "b" / source.name).exists()
    download_mvtec(tmp_path / "c", archive=source, sha256=digest, categories=["bottle"], copy_to_local=True,
                   local_dir=tmp_path / "scratch")
    assert seen["copied"] == [source] and seen["unpacked"][-1] == tmp_path / "scratch" / source.name


def test_corrupt_archive_on_mount_not_copied_nor_deleted(tmp_path, monkeypatch):
    source, digest = _make_archive(tmp_path)
    with pytest.raises(ValueError, match=f"mismatch for {re.escape(str(source))}: expected {'0' * 64}"):
        download_mvtec(tmp_path / "mvtec", archive=source, sha256="0" * 64, categories=["bottle"],
                       copy_to_local=True)
    assert source.is_file() and sorted(p.name for p in (tmp_path / "mvtec").iterdir()) == []
    # a local copy that no longer verifies is this library's own file: replaced from the source
    local = tmp_path / "mvtec" / source.name
    local.write_bytes(b"damaged")
    download_mvtec(tmp_path / "mvtec", archive=source, sha256=digest, categories=["bottle"], copy_to_local=True)
    assert sha256sum(local) == digest and (tmp_path / "mvtec" / "bottle" / "train").is_dir()
