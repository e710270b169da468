"""The build journal: every video the indexer finished encoding, kept as it finishes.

A build folder (``.build-<pid>-<random>``) holds ``journal.sqlite``: one row per encoded video
(its table row, video embedding, frame embeddings and the names of its thumbnail and playback
copy in the build's ``thumbs/`` and ``media/``), committed after every batch. A run killed
outright (SIGKILL, power cut, Ctrl-C) leaves the folder behind; the next run with the same model,
sampling and proxy setting takes it over and encodes only the videos not in it. The published
version never contains the journal: it is assembled from it, then the journal is deleted.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np

from .checks import check_entry, member_file

NAME = "journal.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS encoded (
    relpath TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    row TEXT NOT NULL,          -- JSON: the videos-table columns but id, row and frame_start
    video BLOB NOT NULL,        -- float32 [D]
    frames BLOB NOT NULL,       -- float16 [T, D]
    thumb TEXT NOT NULL,        -- file name in thumbs/
    media TEXT                  -- file name in media/, or NULL
);
"""


def stem(relpath: str) -> str:
    """File-name stem of a video's journaled thumbnail and playback copy (ids are given later)."""
    return "j-" + hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:20]


@dataclass
class Entry:
    """One journaled video: ``row`` without id/row/frame_start, float32 [D], float16 [T, D]."""

    relpath: str
    row: Dict[str, Any]
    video: np.ndarray
    frames: np.ndarray
    thumb: Path
    media: Optional[Path]


class Journal:
    """``journal.sqlite`` of one build folder. ``key``: what the embeddings depend on (model
    fingerprint, sampling, proxy setting); a journal with another key is never used."""

    def __init__(self, build: Path, key: Dict[str, Any], dim: int):
        self.build, self.dim = Path(build), int(dim)
        try:
            self._open(key)
        except sqlite3.DatabaseError:
            # A journal damaged beyond SQLite's recovery (a disk error, a file overwritten):
            # start it afresh rather than fail every run the same way; its videos are re-encoded.
            self.db.close()
            for suffix in ("", "-wal", "-shm"):
                (self.build / (NAME + suffix)).unlink(missing_ok=True)
            self._open(key)

    def _open(self, key: Dict[str, Any]) -> None:
        self.db = sqlite3.connect(self.build / NAME)
        # WAL + NORMAL: a commit survives the process being killed (not a power cut, which at
        # worst loses the last batch); far fewer fsyncs than the default.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        have = read_key(self.db)
        if have is None:
            self.db.execute("INSERT INTO meta VALUES ('key', ?)", (json.dumps(key, sort_keys=True),))
            self.db.commit()
        elif have != json.loads(json.dumps(key, sort_keys=True)):
            raise ValueError(f"{self.build / NAME} was written with other settings")
        self._have = {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT relpath, size, mtime_ns FROM encoded")}

    def __len__(self) -> int:
        return len(self._have)

    def has(self, relpath: str, size: int, mtime_ns: int) -> bool:
        return self._have.get(relpath) == (size, mtime_ns)

    def add(self, entries: Iterable[Entry], size_mtime: Dict[str, tuple]) -> None:
        """Record finished videos, all in one transaction (committed before returning)."""
        rows = []
        for e in entries:
            size, mtime = size_mtime[e.relpath]
            rows.append((e.relpath, size, mtime, json.dumps(e.row, sort_keys=True),
                         np.ascontiguousarray(e.video, dtype=np.float32).tobytes(),
                         np.ascontiguousarray(e.frames, dtype=np.float16).tobytes(),
                         e.thumb.name, e.media.name if e.media else None))
        if not rows:
            return
        self.db.executemany("INSERT OR REPLACE INTO encoded VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.commit()
        for r in rows:
            self._have[r[0]] = (r[1], r[2])

    def get(self, relpath: str) -> Optional[Entry]:
        """The journaled video, or None when it is not there, its thumbnail or playback copy
        went missing, or its row is corrupt (then the row is dropped and the video is simply
        encoded again: one bad row must not make every later run fail)."""
        r = self.db.execute("SELECT row, video, frames, thumb, media FROM encoded WHERE relpath = ?",
                            (relpath,)).fetchone()
        if r is None:
            return None
        entry = self._entry(relpath, r)
        if entry is None:
            self.db.execute("DELETE FROM encoded WHERE relpath = ?", (relpath,))
            self.db.commit()
            self._have.pop(relpath, None)
        return entry

    def _entry(self, relpath: str, r: tuple) -> Optional[Entry]:
        """The Entry of journal row ``r`` (row, video, frames, thumb, media), or None when any
        part of it is missing or does not fit the rest."""
        row_text, video, frames, thumb_name, media_name = r
        name = stem(relpath)
        if thumb_name != name + ".jpg" or media_name not in (None, name + ".mp4", name + ".webm"):
            return None  # our names only: a name read from the file must not lead elsewhere
        thumb = member_file(self.build / "thumbs", thumb_name)
        media = member_file(self.build / "media", media_name) if media_name else None
        if thumb is None or (media_name and media is None):
            return None
        if not isinstance(video, bytes) or not isinstance(frames, bytes) or len(video) != 4 * self.dim \
                or not frames or len(frames) % (2 * self.dim):
            return None
        try:
            row = json.loads(row_text)
        except (TypeError, ValueError):
            return None
        video = np.frombuffer(video, dtype=np.float32)
        frames = np.frombuffer(frames, dtype=np.float16).reshape(-1, self.dim)
        if not isinstance(row, dict) or row.get("relpath") != relpath or check_entry(row, video, frames, self.dim):
            return None
        return Entry(relpath, row, video, frames, thumb, media)

    def close(self) -> None:
        self.db.close()

    def discard(self) -> None:
        """Delete the journal and the journaled files (once the version is assembled)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            (self.build / (NAME + suffix)).unlink(missing_ok=True)
        for sub in ("thumbs", "media"):
            for p in (self.build / sub).glob("j-*"):
                p.unlink(missing_ok=True)


def read_key(db: sqlite3.Connection) -> Optional[Dict[str, Any]]:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'key'").fetchone()
        return json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, TypeError, ValueError):
        return None


def resumable(build: Path, key: Dict[str, Any]) -> bool:
    """Whether ``build`` (a stale build folder) holds a journal written with ``key``."""
    path = build / NAME
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(path)  # under the index lock: nobody else has it open
        try:
            return read_key(db) == json.loads(json.dumps(key, sort_keys=True))
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False
