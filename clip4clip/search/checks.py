"""Checks of the search files we read back: a version folder when it is opened (to search it,
to update it, or as a shard to merge), each journal row when a build is resumed, and every file
of a version that is served or linked.

A version is our own output, but it may come from elsewhere (a shard built on another machine)
or have been changed by hand; nothing in it is trusted before it is checked:

* ``check_version``: ``meta.sqlite`` is an SQLite database with our tables (the full-text index
  included) and readable metadata; ``video_emb.npy`` / ``frame_emb.npy`` are arrays of the
  format's dtypes with one width; every ``videos`` row has values of the right types and
  ranges, a row of ``video_emb`` of its own, a frame range inside ``frame_emb`` and one frame
  time per frame; every embedding is finite. A failure names the file and the row or field, at
  open, so that no query meets it later.
* ``member_file``: a file of a version (thumbnail, playback copy) is served or linked only when
  it is a regular file inside its folder, never a symbolic link (which could lead anywhere).
* ``check_entry``: one video's row, embedding and frame embeddings agree with each other (used
  for journal rows and at assembly).
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..core.npy import NpyFormatError, read_npy_header
from ..core.paths import plain_relative
from .store import READABLE_FORMATS, IndexFormatError

#: Largest video id (ids are SQLite integers and appear in URLs).
MAX_ID = 2 ** 63 - 1
#: What the web page can play.
MEDIA_KINDS = ("original", "proxy", "none")
#: Rows per chunk when embeddings are checked for NaN/inf (bounds the memory of the check).
_CHUNK_ROWS = 1 << 16

_TABLES = {
    "meta": ("key", "value"),
    "videos": ("id", "row", "relpath", "size", "mtime_ns", "duration", "fps", "width", "height",
               "num_frames", "frame_start", "frame_count", "frame_times", "media", "notes"),
    "captions": ("video_id", "caption"),
    "captions_fts": ("caption", "video_id"),
    "failures": ("relpath", "error"),
}

# One SQL pass names the first bad row: far faster than reading a million rows into Python.
# NaN and Infinity (which Python's json.dumps writes, and newer SQLite's JSON5 reads) are the
# only number spellings with an 'n' or an 'i'.
_BAD_ROW = """
SELECT id, CASE
  WHEN typeof(id) != 'integer' OR id < 0 THEN 'id'
  WHEN typeof(row) != 'integer' OR row < 0 OR row >= :n THEN 'row'
  WHEN typeof(relpath) != 'text' OR relpath = '' OR substr(relpath, 1, 1) = '/' OR relpath = '..'
       OR relpath LIKE '../%' OR relpath LIKE '%/../%' OR relpath LIKE '%/..' OR instr(relpath, char(0)) > 0
       OR instr(relpath, '\\') > 0 THEN 'relpath'
  WHEN typeof(size) != 'integer' OR size < 0 THEN 'size'
  WHEN typeof(mtime_ns) != 'integer' THEN 'mtime_ns'
  WHEN typeof(duration) NOT IN ('real', 'integer') OR NOT (duration >= 0 AND duration < 1e9) THEN 'duration'
  WHEN typeof(fps) NOT IN ('real', 'integer') OR NOT (fps >= 0 AND fps < 1e6) THEN 'fps'
  WHEN typeof(width) != 'integer' OR width < 0 THEN 'width'
  WHEN typeof(height) != 'integer' OR height < 0 THEN 'height'
  WHEN typeof(num_frames) != 'integer' OR num_frames < 0 THEN 'num_frames'
  WHEN typeof(frame_count) != 'integer' OR frame_count < 1 THEN 'frame_count'
  WHEN typeof(frame_start) != 'integer' OR frame_start < 0 OR frame_start + frame_count > :f THEN 'frame_start'
  WHEN typeof(frame_times) != 'text' OR NOT json_valid(frame_times) OR json_type(frame_times) != 'array'
       OR json_array_length(frame_times) != frame_count
       OR EXISTS (SELECT 1 FROM json_each(videos.frame_times) WHERE type NOT IN ('integer', 'real'))
       OR instr(lower(frame_times), 'n') > 0 OR instr(lower(frame_times), 'i') > 0
       THEN 'frame_times'
  WHEN media NOT IN ('original', 'proxy', 'none') THEN 'media'
  WHEN typeof(notes) != 'text' THEN 'notes'
END AS field FROM videos WHERE field IS NOT NULL LIMIT 1
"""


def member_file(folder: Path, name: str) -> Optional[Path]:
    """``folder / name`` when it is a regular file of that folder; None when it is missing, a
    symbolic link, or anything but a regular file. ``name`` is a plain file name."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") or "\0" in name:
        return None
    path = Path(folder) / name
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    return path if stat.S_ISREG(st.st_mode) else None


def thumb_file(version: Path, vid: int) -> Optional[Path]:
    """The thumbnail of video ``vid`` in a version folder (a regular file, never a link), or None."""
    return member_file(Path(version) / "thumbs", f"{int(vid)}.jpg")


def proxy_file(version: Path, vid: int) -> Optional[Path]:
    """The playback copy of video ``vid`` in a version folder (H.264 .mp4 or VP8 .webm; a
    regular file, never a link), or None."""
    for ext in (".mp4", ".webm"):
        p = member_file(Path(version) / "media", f"{int(vid)}{ext}")
        if p is not None:
            return p
    return None


def _tables(db: sqlite3.Connection, path: Path) -> None:
    for table, columns in _TABLES.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in columns if c not in have]
        if missing:
            what = "is missing" if not have else f"lacks columns {missing}"
            raise IndexFormatError(f"{path}: table {table} {what}; not an index this code wrote (re-index)")
    try:  # the full-text index answers a query (a damaged one fails here, not at the first search)
        db.execute("SELECT count(*) FROM captions_fts WHERE captions_fts MATCH 'a'").fetchone()
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{path}: table captions_fts is unreadable ({e}); re-index") from None


def read_checked_meta(db: sqlite3.Connection, path: Path) -> Dict[str, Any]:
    """The ``meta`` table of ``path`` (a meta.sqlite) as a dict, each value checked for what the
    readers use; an unreadable database, a value that is not JSON or of the wrong type is named."""
    try:
        _tables(db, path)
        rows = db.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{path}: not a readable SQLite database ({e}); re-index") from None
    meta = {}
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            raise IndexFormatError(f"{path}: meta value {key!r} is not JSON") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise IndexFormatError(f"{path}: index format {meta.get('format')!r}; this code reads {list(READABLE_FORMATS)}")
    _check_meta_types(meta, path)
    return meta


def _check_meta_types(meta: Dict[str, Any], path: Path) -> None:
    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise IndexFormatError(f"{path}: meta {key} is {meta.get(key)!r}; expected {expected}")

    need(isinstance(meta.get("fingerprint"), str), "fingerprint", "a string")
    need(isinstance(meta.get("library"), str) and os.path.isabs(meta["library"]) and "\0" not in meta["library"],
         "library", "the library folder's absolute path")
    model, sampling = meta.get("model"), meta.get("sampling")
    need(isinstance(model, dict) and isinstance(model.get("checkpoint"), str), "model",
         "an object naming the checkpoint")
    need(isinstance(sampling, dict), "sampling", "an object")
    for key, kind in (("fps", float), ("max_frames", int), ("moment_fps", float), ("moment_frames", int)):
        v = sampling.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        need(ok and (kind is float or float(v).is_integer()), "sampling",
             f"positive {key} ({'a whole number' if kind is int else 'a number'})")
    if "shard" in meta and meta["shard"] is not None:
        s = meta["shard"]
        need(isinstance(s, dict) and all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool)
                                         for k in ("index", "count")) and 0 <= s["index"] < s["count"],
             "shard", "an object with whole numbers 0 <= index < count")


def _array(path: Path, dtypes, what: str) -> np.ndarray:
    """The 2-D array at ``path`` (memory-mapped), or a named refusal. The header is checked
    before numpy reads it (a garbage one made numpy's parser raise tokenize.TokenError)."""
    if member_file(path.parent, path.name) is None:
        raise IndexFormatError(f"{path}: missing or not a regular file; the index version is incomplete (re-index)")
    try:
        header = read_npy_header(path)
    except NpyFormatError as e:
        raise IndexFormatError(f"{e}; re-index") from None
    if len(header.shape) != 2 or header.dtype not in dtypes or header.shape[1] == 0 or header.fortran_order:
        raise IndexFormatError(f"{path}: {what} is {header.dtype}{list(header.shape)}; expected a 2-D array "
                               f"of {' or '.join(str(np.dtype(d)) for d in dtypes)}")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _finite(arr: np.ndarray, path: Path) -> None:
    for start in range(0, len(arr), _CHUNK_ROWS):
        chunk = np.asarray(arr[start:start + _CHUNK_ROWS])
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            raise IndexFormatError(f"{path}: row {start + int(np.argmax(bad))} holds NaN or infinity; re-index")


def check_version(version: Path, dim: Optional[int] = None) -> Dict[str, Any]:
    """Check the index version folder ``version`` (see the module docstring) and return its
    metadata. ``dim``: the embedding width the caller's model gives, when it has one."""
    version = Path(version)
    path = version / "meta.sqlite"
    if member_file(version, "meta.sqlite") is None:
        raise IndexFormatError(f"{path}: missing or not a regular file; the index version is incomplete")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise IndexFormatError(f"{path}: cannot be opened ({e})") from None
    try:
        meta = read_checked_meta(db, path)
        new = meta["format"] != READABLE_FORMATS[0]
        video = _array(version / "video_emb.npy", (np.float32,) if new else (np.float16, np.float32), "video_emb")
        frames = _array(version / "frame_emb.npy", (np.float16,), "frame_emb")
        if frames.shape[1] != video.shape[1] or (dim is not None and video.shape[1] != dim):
            raise IndexFormatError(f"{version}: embeddings are {video.shape[1]}-wide (frames {frames.shape[1]}); "
                                   f"expected {dim or video.shape[1]}")
        _check_rows(db, path, len(video), len(frames))
    finally:
        db.close()
    _finite(video, version / "video_emb.npy")
    _finite(frames, version / "frame_emb.npy")
    return meta


def _check_rows(db: sqlite3.Connection, path: Path, n: int, f: int) -> None:
    try:
        bad = db.execute(_BAD_ROW, {"n": n, "f": f}).fetchone()
        count, rows, ids = db.execute("SELECT count(*), count(DISTINCT row), count(DISTINCT id) FROM videos").fetchone()
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{path}: table videos is unreadable ({e}); re-index") from None
    if bad is not None:
        raise IndexFormatError(f"{path}: video {bad[0]!r} has a bad {bad[1]} (out of range, of the wrong type, "
                               "or not matching the embedding files); re-index")
    if not count == rows == ids == n:
        raise IndexFormatError(f"{path}: {count} video rows ({rows} distinct rows, {ids} distinct ids) for "
                               f"{n} rows of video_emb.npy; re-index")


def check_entry(row: Any, video: np.ndarray, frames: np.ndarray, dim: int) -> Optional[str]:
    """What is wrong with one video's row (the ``videos`` columns from encoding), embedding
    float32 [D] and frame embeddings [T, D], or None when they agree."""
    if not isinstance(row, dict):
        return "its row is not an object"
    if not plain_relative(row.get("relpath")):
        return "relpath"
    for key in ("size", "mtime_ns", "width", "height", "num_frames", "frame_count"):
        if not isinstance(row.get(key), int) or isinstance(row.get(key), bool):
            return key
    for key in ("duration", "fps"):
        v = row.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            return key
    if row.get("media") not in MEDIA_KINDS or not isinstance(row.get("notes"), str):
        return "media"
    try:
        times = json.loads(row.get("frame_times"))
    except (TypeError, ValueError):
        return "frame_times"
    ok_times = isinstance(times, list) and all(isinstance(t, (int, float)) and math.isfinite(t) for t in times)
    if not ok_times or len(times) != row["frame_count"]:
        return "frame_times"
    if video.shape != (dim,) or frames.shape != (row["frame_count"], dim):
        return f"embedding shapes {list(video.shape)}, {list(frames.shape)}"
    if not (np.isfinite(video).all() and np.isfinite(frames).all()):
        return "embeddings (NaN or infinity)"
    return None
