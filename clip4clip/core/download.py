"""Fetching and caching remote files (CLIP weights, the BPE vocabulary).

Everything lands in one cache folder, by default ``~/.cache/clip`` so files already fetched by
OpenAI's ``clip`` package are reused. Downloads are checksummed while streaming and moved into
place atomically, so a crash, a bad network or a wrong checksum never leaves a half-written file
where a later run would trust it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import UserError

__all__ = [
    "CACHE_DIR_ENV",
    "ChecksumError",
    "DownloadError",
    "weights_cache_dir",
    "download_file",
    "ensure_file",
    "sha256_file",
]

CACHE_DIR_ENV = "CLIP4CLIP_CACHE_DIR"
_CHUNK_BYTES = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A remote file could not be fetched (network failure, HTTP error, truncated body)."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the expected SHA256."""


def weights_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder where downloaded files are kept.

    Order: the explicit ``cache_dir`` argument, then the ``CLIP4CLIP_CACHE_DIR`` environment
    variable, then ``~/.cache/clip`` (the folder OpenAI's ``clip`` package uses). ``~`` is
    expanded; the folder is not created here.
    """
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get(CACHE_DIR_ENV) or "~/.cache/clip"
    return Path(cache_dir).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA256 of a file, read in 1 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


def _offline_hint(url: str, dest: Path) -> str:
    return f"To use it offline, download {url} yourself and put it at {dest}."


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest`` as a Path.

    The body is streamed into a temporary file beside ``dest`` (same folder, so the final
    ``os.replace`` is atomic) while its SHA256 is computed. Parent folders are created.

    Args:
        url: address to fetch (anything ``urllib`` opens: http, https, file).
        dest: final location; overwritten only after a complete, verified download.
        sha256: expected hex digest, or None to skip the check.
        progress: show a tqdm bar (bytes) on stderr.
        timeout: seconds allowed for connecting and for each read.

    Raises:
        ChecksumError: the body's SHA256 differs from ``sha256`` (nothing is kept).
        DownloadError: network failure, HTTP error or truncated body (nothing is kept).
    """
    expected = _normalise_sha256(sha256)
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # pid + random suffix: two processes downloading the same file never share a temp file.
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}-{secrets.token_hex(4)}")

    def fail(reason: str) -> DownloadError:
        return DownloadError(
            f"Could not download {url} to {dest}: {reason}. {_offline_hint(url, dest)}"
        )

    try:
        with open(tmp, "wb") as out:
            with _open_url(url, timeout, fail) as response:
                total, received, actual = _stream(response, out, dest.name, progress, fail)
            # http.client returns a short body without error when the peer closes early.
            if total is not None and received != total:
                raise fail(f"connection closed after {received} of {total} bytes")
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"SHA256 mismatch for {url}: expected {expected}, got {actual}. "
                f"The download was discarded and nothing was written to {dest}. "
                f"{_offline_hint(url, dest)}"
            )
        os.replace(tmp, dest)
    except BaseException:
        # Also on KeyboardInterrupt: a stray .part file is never reused, only litter.
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _open_url(url: str, timeout: float, fail):
    """The HTTP response (a context manager); every way of failing to connect becomes ``fail``'s error."""
    request = urllib.request.Request(url, headers={"User-Agent": "clip4clip"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise fail(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise fail(str(e.reason)) from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad replies
        raise fail(f"{type(e).__name__}: {e}") from e


def _stream(response, out, name: str, progress: bool, fail):
    """Copy the body into ``out`` in chunks, hashing it, with a progress bar.
    -> (Content-Length or None, bytes received, SHA256 hex digest)."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    digest = hashlib.sha256()
    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise fail(f"connection failed after {received} bytes: {e!r}") from e
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return total, received, digest.hexdigest()


def ensure_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return ``dest``, downloading it from ``url`` first if it does not exist.

    An existing file is used as is when ``sha256`` is None or matches. An existing file with a
    different SHA256 is an error and is left untouched: it may be the user's own file, so it is
    never deleted silently.

    Raises:
        ChecksumError: ``dest`` exists with the wrong SHA256, or the download has the wrong one.
        DownloadError: the file is missing and could not be fetched.
    """
    expected = _normalise_sha256(sha256)
    dest = Path(dest).expanduser()
    if dest.is_file():
        if expected is None:
            return dest
        actual = sha256_file(dest)
        if actual == expected:
            return dest
        raise ChecksumError(
            f"{dest} exists but its SHA256 is {actual}, expected {expected} (the file at {url}). "
            f"It may be corrupt or a different version: delete it to download it again, "
            f"or replace it with the file from {url}."
        )
    return download_file(url, dest, sha256=expected, progress=progress)
