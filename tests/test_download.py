"""Downloads against a real HTTP server on 127.0.0.1: checksums, failures, atomicity, cache dir."""
import hashlib
import http.server
import os
import socket
import threading
from functools import partial
from pathlib import Path

import pytest

from clip4clip.core.download import (
    ChecksumError,
    DownloadError,
    weights_cache_dir,
    download_file,
    ensure_file,
    sha256_file,
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the server's folder, plus scripted routes for failure modes."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is not None:
            route(self)
        else:
            super().do_GET()


class _Server:
    def __init__(self, root: Path):
        self.root = root
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_Handler, directory=str(root))
        )
        self.httpd.requests = self.requests = []
        self.httpd.routes = self.routes = {}
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.close()


@pytest.fixture
def payload(server):
    # > 1 MiB so the body arrives in several chunks.
    data = os.urandom((1 << 20) + 12345)
    (server.root / "blob.bin").write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pt"


def test_download_writes_file_and_verifies_checksum(server, payload, tmp_path):
    data, sha = payload
    dest = tmp_path / "cache" / "nested" / "blob.bin"
    out = download_file(server.url("blob.bin"), dest, sha256=sha.upper(), progress=False)
    assert out == dest
    assert dest.read_bytes() == data
    assert sha256_file(dest) == sha
    assert os.listdir(dest.parent) == ["blob.bin"]  # no temp file left behind


def test_checksum_mismatch_leaves_nothing(server, payload, tmp_path):
    data, sha = payload
    wrong = "0" * 64
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(ChecksumError) as info:
        download_file(server.url("blob.bin"), dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert server.url("blob.bin") in message and wrong in message and sha in message
    assert os.listdir(dest.parent) == []


def test_checksum_mismatch_keeps_previous_file(server, payload, tmp_path):
    # Atomic replace: a failed download never clobbers what was at dest before.
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"old contents")
    with pytest.raises(ChecksumError):
        download_file(server.url("blob.bin"), dest, sha256="1" * 64, progress=False)
    assert dest.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["blob.bin", "www"]


def test_http_404_is_download_error_naming_url_and_dest(server, tmp_path):
    dest = tmp_path / "cache" / "missing.pt"
    url = server.url("missing.pt")
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False)
    assert not isinstance(info.value, ChecksumError)
    message = str(info.value)
    assert url in message and str(dest) in message and "404" in message
    assert os.listdir(dest.parent) == []


def test_unreachable_server_gives_offline_hint(tmp_path):
    url = _closed_port_url()
    dest = tmp_path / "cache" / "model.pt"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False, timeout=5)
    assert f"To use it offline, download {url} yourself and put it at {dest}" in str(info.value)
    assert os.listdir(dest.parent) == []


def test_truncated_body_is_rejected(server, tmp_path):
    def truncated(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 100)
        handler.close_connection = True

    server.routes["/short.bin"] = truncated
    dest = tmp_path / "short.bin"
    with pytest.raises(DownloadError, match="100 of 1000 bytes"):
        download_file(server.url("short.bin"), dest, progress=False)
    assert not any(p.name.startswith("short.bin") for p in tmp_path.iterdir())


def test_stalled_server_times_out(server, tmp_path):
    release = threading.Event()

    def stall(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        release.wait(10)

    server.routes["/slow.bin"] = stall
    dest = tmp_path / "slow.bin"
    try:
        with pytest.raises(DownloadError, match="(?i)slow.bin.*timed out"):
            download_file(server.url("slow.bin"), dest, progress=False, timeout=0.3)
    finally:
        release.set()
    assert not any(p.name.startswith("slow.bin") for p in tmp_path.iterdir())


def test_ensure_file_does_not_redownload_good_file(server, payload, tmp_path):
    data, sha = payload
    dest = tmp_path / "blob.bin"
    assert ensure_file(server.url("blob.bin"), dest, sha256=sha, progress=False) == dest
    assert server.requests == ["/blob.bin"]
    assert ensure_file(server.url("blob.bin"), dest, sha256=sha, progress=False) == dest
    assert ensure_file(server.url("blob.bin"), dest, progress=False) == dest
    assert server.requests == ["/blob.bin"]  # served from disk the second and third time
    assert dest.read_bytes() == data


def test_ensure_file_refuses_wrong_existing_file_and_keeps_it(server, payload, tmp_path):
    data, sha = payload
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"a user's own file")
    with pytest.raises(ChecksumError) as info:
        ensure_file(server.url("blob.bin"), dest, sha256=sha, progress=False)
    assert str(dest) in str(info.value) and "delete" in str(info.value)
    assert dest.read_bytes() == b"a user's own file"
    assert server.requests == []


def test_invalid_sha256_argument():
    with pytest.raises(ValueError, match="64 hex"):
        ensure_file("http://127.0.0.1/x", "/nonexistent/x", sha256="abc")


def test_default_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIP4CLIP_CACHE_DIR", raising=False)
    assert weights_cache_dir() == tmp_path / "home" / ".cache" / "clip"
    monkeypatch.setenv("CLIP4CLIP_CACHE_DIR", "~/elsewhere")
    assert weights_cache_dir() == tmp_path / "home" / "elsewhere"
    assert weights_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert weights_cache_dir("~/x") == tmp_path / "home" / "x"


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
