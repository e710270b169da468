"""The index folder on disk, and how a new version of it is published atomically.

Layout::

    INDEX/
      CURRENT                 name of the live version folder (replaced atomically)
      v-<time>-<random>/      one complete version
        meta.sqlite           metadata (tables below), the model fingerprint, captions + FTS5
        video_emb.npy         float32 [N, D]  row i = the video whose ``videos.row`` is i (rows in
                              relpath order); float32 so that search ranks exactly as evaluation
        frame_emb.npy         float16 [F, D]  rows frame_start .. frame_start+frame_count-1 of a video
        thumbs/<id>.jpg       one thumbnail per video
        media/<id>.mp4|.webm  playback copies of videos browsers cannot play (AVI, MKV, mp4v, ...)
        videos.faiss          optional FAISS index over video_emb
      .build-<pid>-<random>/  a version being written; its journal.sqlite records every video
                              encoded so far, so a run killed outright is resumed by the next one
                              (see ``journal``); other stale build folders are deleted

A new version is written completely, fsynced, and only then named in ``CURRENT``: a crash at
any moment leaves the previous version (or nothing, on the first run) as the index, never a
half-written one. Readers resolve ``CURRENT`` once and keep using their version folder.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional

import numpy as np

from ..core.errors import UserError
from ..core.processes import pid_alive

#: Written into every index. Format 1 (float16 video embeddings) is still read; an index update
#: re-encodes its videos (keeping their ids), since float16 rows would not rank as evaluation.
FORMAT = "clip4clip-search/2"
READABLE_FORMATS = ("clip4clip-search/1", FORMAT)
CURRENT = "CURRENT"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (
    id INTEGER PRIMARY KEY,          -- stable across re-indexing; used in URLs
    row INTEGER NOT NULL UNIQUE,     -- row in video_emb.npy
    relpath TEXT NOT NULL UNIQUE,    -- POSIX path relative to the library root
    size INTEGER NOT NULL,           -- bytes
    mtime_ns INTEGER NOT NULL,
    duration REAL NOT NULL,          -- seconds
    fps REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    frame_start INTEGER NOT NULL,    -- first row in frame_emb.npy
    frame_count INTEGER NOT NULL,
    frame_times TEXT NOT NULL,       -- JSON list of seconds, one per frame_emb row
    media TEXT NOT NULL,             -- 'original' | 'proxy' | 'none': what the web page plays
    notes TEXT NOT NULL DEFAULT ''   -- repaired metadata, truncation
);
CREATE TABLE captions (video_id INTEGER NOT NULL, caption TEXT NOT NULL);
CREATE INDEX captions_video ON captions (video_id);
-- Porter stemming: "moving" matches "moves"; BM25 ranks the matches.
CREATE VIRTUAL TABLE captions_fts USING fts5(caption, video_id UNINDEXED, tokenize = 'porter unicode61');
CREATE TABLE failures (relpath TEXT NOT NULL, error TEXT NOT NULL);
"""


class IndexNotFoundError(FileNotFoundError):
    """No index (or no complete version of one) at the given path."""


class IndexFormatError(ValueError):
    """The folder holds something that is not an index this code can read."""


class IndexFolderError(UserError, FileExistsError):
    """``--out`` is a file, or a folder holding things other than an index (we delete old
    versions in it, so we never write into someone else's folder)."""


class IndexBusyError(UserError, RuntimeError):
    """Another indexer holds the index folder's lock."""


def current_version(index_dir: Path) -> Optional[Path]:
    """The live version folder of ``index_dir``, or None when there is none yet."""
    pointer = Path(index_dir) / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    folder = Path(index_dir) / name
    if not name.startswith("v-") or "/" in name or not (folder / "meta.sqlite").is_file():
        raise IndexFormatError(f"{pointer} names {name!r}, which is not a complete index version")
    return folder


def require_version(index_dir: Path) -> Path:
    """Like ``current_version`` but raises a clear error when there is no index."""
    index_dir = Path(index_dir).expanduser()
    if not index_dir.is_dir():
        raise IndexNotFoundError(f"--index {index_dir}: no such folder (build one with "
                                 "'python -m clip4clip.search index --videos DIR --checkpoint CKPT --out INDEX')")
    version = current_version(index_dir)
    if version is None:
        raise IndexNotFoundError(f"--index {index_dir}: not a search index (no {CURRENT} file)")
    return version


def check_index_dir(index_dir: Path) -> None:
    """Refuse to write an index into a folder that holds other things (we delete old versions)."""
    if not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise IndexFolderError(f"--out {index_dir} exists and is not a folder")
    # Hidden names are ours (.build-*, .lock, .CURRENT.*.tmp) or harmless (.DS_Store); we only
    # ever delete .build-* and v-* folders.
    others = [p.name for p in index_dir.iterdir() if not p.name.startswith((CURRENT, "v-", "."))]
    if others:
        raise IndexFolderError(f"--out {index_dir} is not empty and not a search index (holds {sorted(others)[:5]}); "
                              "choose a new folder")


def new_build_dir(index_dir: Path, resume: Optional[Callable[[Path], bool]] = None) -> Path:
    """A fresh build folder, or, when ``resume`` accepts one, the newest build folder that a
    process killed outright left behind, renamed as ours (its journal is carried on). Other stale
    build folders are deleted."""
    index_dir.mkdir(parents=True, exist_ok=True)
    build = index_dir / f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stale = sorted((p for p in index_dir.iterdir() if p.name.startswith(".build-") and not _alive(p)),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for p in stale if resume is not None else ():
        if resume(p):
            os.replace(p, build)
            break
    remove_stale(index_dir, keep=build)
    build.mkdir(exist_ok=True)
    (build / "thumbs").mkdir(exist_ok=True)
    (build / "media").mkdir(exist_ok=True)
    return build


def _alive(build: Path) -> bool:
    """Whether the process named in a build folder's name still runs (True when unsure). Our
    own builds count as dead: callers hold the index lock, so ours is an interrupted run's."""
    try:
        pid = int(build.name.split("-")[1])
    except (ValueError, IndexError):
        return True
    return pid != os.getpid() and pid_alive(pid)


def remove_stale(index_dir: Path, keep: Optional[Path] = None) -> None:
    """Delete build folders of dead processes and every version folder but ``keep`` (a version
    or a build folder) and the live one."""
    live = None
    try:
        live = current_version(index_dir)
    except IndexFormatError:
        pass
    for p in index_dir.iterdir():
        if p == keep:
            continue
        if p.name.startswith(".build-"):
            if not _alive(p):  # a live process's build is another indexer's work in progress
                shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith("v-") and p not in (live, keep):
            shutil.rmtree(p, ignore_errors=True)


#: Files whose loss would break a version; fsynced before it is published. Thumbnails and
#: playback copies are not (two fsyncs per video cost more than the encoding of small clips):
#: after a power cut one may be missing, which the web page shows as a placeholder.
_ESSENTIAL = ("meta.sqlite", "video_emb.npy", "frame_emb.npy", "videos.faiss")


def _fsync_tree(folder: Path) -> None:
    for name in _ESSENTIAL:
        path = folder / name
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for sub in ("thumbs", "media", "."):
        _fsync_dir(folder / sub)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(index_dir: Path, build: Path) -> Path:
    """Make ``build`` the live version: fsync it, rename it to ``v-...``, point ``CURRENT`` at it
    (write a temp file, fsync, ``os.replace``), then delete older versions."""
    _fsync_tree(build)
    version = index_dir / f"v-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    os.replace(build, version)
    tmp = index_dir / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(version.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, index_dir / CURRENT)
    _fsync_dir(index_dir)
    remove_stale(index_dir, keep=version)
    return version


def create_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


def open_db(version: Path) -> sqlite3.Connection:
    """Read-only connection to a version's metadata (usable from any thread; callers serialise)."""
    uri = (version / "meta.sqlite").resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def write_meta(db: sqlite3.Connection, meta: Dict[str, Any]) -> None:
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   [(k, json.dumps(v, sort_keys=True)) for k, v in meta.items()])


class ArrayWriter:
    """Append rows of a fixed width and dtype to a raw file, then turn it into a ``.npy`` without
    holding the whole array in memory (libraries can be larger than RAM allows twice over)."""

    def __init__(self, path: Path, dim: int, dtype=np.float16):
        self.path, self.dim, self.rows, self.dtype = Path(path), int(dim), 0, np.dtype(dtype)
        self._raw_path = self.path.with_suffix(".raw")
        self._raw: BinaryIO = open(self._raw_path, "wb")

    def append(self, rows: np.ndarray) -> int:
        """Append [n, dim] rows; returns the index of the first one."""
        rows = np.asarray(rows, dtype=self.dtype).reshape(-1, self.dim)
        first = self.rows
        self._raw.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)
        return first

    def close(self) -> None:
        self._raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, self.dim)}
        with open(self.path, "wb") as out, open(self._raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 16 << 20)
        self._raw_path.unlink()

    def abort(self) -> None:
        self._raw.close()
