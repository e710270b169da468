"""Build or update a search index of a video library (incrementally, atomically).

A re-run adds new videos, drops deleted ones, re-encodes changed ones (size or modification
time differs) and copies the rest from the previous version without decoding them. An index
built with another model or other frame sampling is refused: its embeddings would not be
comparable with the new ones.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from . import store
from .encoder import Encoder
from .library import LibraryFile, find_captions, scan_library, video_key
from .media import browser_playable, sample_for_index, write_proxy, write_thumbnail

PROXIES = ("auto", "off")


class IndexMismatchError(ValueError):
    """The existing index was built with another model or other sampling settings."""


@dataclass
class IndexReport:
    """What one indexing run did. Lists hold relative paths; ``failed`` (path, reason) pairs."""

    index: Path
    version: Optional[Path] = None
    added: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[Tuple[str, str]] = field(default_factory=list)
    num_videos: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"index {self.index}: {self.num_videos} videos ({len(self.added)} added, "
                 f"{len(self.updated)} re-encoded, {len(self.removed)} removed, {len(self.unchanged)} unchanged, "
                 f"{len(self.failed)} failed) in {self.seconds:.1f} s"]
        lines += [f"  failed: {p}: {why}" for p, why in self.failed]
        lines += [f"  skipped: {p}: {why}" for p, why in self.skipped]
        lines += [f"  note: {p}: {why}" for p, why in self.notes]
        return "\n".join(lines)


def check_compatible(meta: Dict, encoder: Encoder, index_dir: Path) -> None:
    """Raise IndexMismatchError naming both models (or the differing settings)."""
    if meta.get("fingerprint") != encoder.fingerprint:
        old = meta.get("model") or {}
        raise IndexMismatchError(
            f"{index_dir} was built with another model (fingerprint {meta.get('fingerprint')}, "
            f"checkpoint {old.get('checkpoint')}); --checkpoint {encoder.description['checkpoint']} has "
            f"fingerprint {encoder.fingerprint}. Embeddings of different models cannot be mixed: write to a "
            "new --out folder, or pass --rebuild to re-encode every video into this one")
    want = encoder.sampling.to_dict()
    have = meta.get("sampling") or {}
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: index {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise IndexMismatchError(f"{index_dir} was built with other frame sampling ({text}); use the same "
                                 "--fps/--max-frames/--moment-fps/--moment-frames, a new --out folder, or --rebuild")


@contextlib.contextmanager
def _exclusive(index_dir: Path) -> Iterator[None]:
    """One indexer per index folder at a time (a second would publish over the first)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, trust the user
        yield
        return
    with open(index_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another indexer is writing {index_dir}; wait for it to finish") from None
        yield


def _link(src: Path, dst: Path) -> None:
    """Carry a file over to the new version without copying its bytes where possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_index(videos: Path, out: Path, encoder: Encoder, *, proxies: str = "auto",
                faiss: bool = False, rebuild: bool = False, progress: bool = True,
                log: Callable[[str], None] = print) -> IndexReport:
    """Index every video under ``videos`` into the index folder ``out`` (created or updated).

    proxies: 'auto' writes a WebM playback copy of each video browsers cannot play; 'off' none.
    faiss: also write a FAISS index (``pip install faiss-cpu``). rebuild: ignore (and replace)
    an existing index even if it was built with another model. Per-video failures are
    reported, never fatal; the new version is published only when complete.
    """
    if proxies not in PROXIES:
        raise ValueError(f"--proxies {proxies!r}; expected one of {PROXIES}")
    if faiss:
        from .ann import require_faiss
        require_faiss()
    t0 = time.perf_counter()
    videos = Path(videos).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if videos == out or videos.is_relative_to(out):
        raise ValueError(f"--out {out} must not contain the library --videos {videos}")
    store.check_index_dir(out)
    files, skipped = scan_library(videos, exclude=[out])
    out.mkdir(parents=True, exist_ok=True)
    report = IndexReport(out, skipped=[(s.relpath, s.reason) for s in skipped])
    with _exclusive(out):
        old = None if rebuild else store.current_version(out)
        old_db = store.open_db(old) if old else None
        try:
            meta_old = store.read_meta(old_db) if old_db else {}
            if old_db:
                check_compatible(meta_old, encoder, out)
                if meta_old.get("library") != str(videos):
                    log(f"note: library moved from {meta_old.get('library')} to {videos}; "
                        "unchanged files keep their embeddings")
            build = store.new_build_dir(out)
            try:
                _write_version(build, old, old_db, files, encoder, proxies, report, progress)
                meta = {"format": store.FORMAT, "fingerprint": encoder.fingerprint, "model": encoder.description,
                        "sampling": encoder.sampling.to_dict(), "library": str(videos),
                        "created": meta_old.get("created", time.time()), "updated": time.time(),
                        "num_videos": report.num_videos, "proxies": proxies, "faiss": bool(faiss)}
                captions = find_captions(videos)
                with sqlite3.connect(build / "meta.sqlite") as db:
                    meta["dataset"] = _write_captions(db, captions)
                    store.write_meta(db, meta)
                    db.executemany("INSERT INTO failures (relpath, error) VALUES (?, ?)", report.failed)
                db.close()
                if faiss:
                    from .ann import build_faiss_index, save_faiss_index
                    emb = np.load(build / "video_emb.npy", mmap_mode="r")
                    save_faiss_index(build_faiss_index(np.asarray(emb, dtype=np.float32)), build / "videos.faiss")
                report.version = store.publish(out, build)
            except BaseException:
                shutil.rmtree(build, ignore_errors=True)
                raise
        finally:
            if old_db is not None:
                old_db.close()
    report.seconds = time.perf_counter() - t0
    return report


def _write_version(build: Path, old: Optional[Path], old_db, files: List[LibraryFile], encoder: Encoder,
                   proxies: str, report: IndexReport, progress: bool) -> None:
    """Fill ``build`` with the embeddings, thumbnails, playback copies and video rows."""
    old_rows: Dict[str, sqlite3.Row] = {}
    old_video = old_frames = None
    if old_db is not None:
        old_rows = {r["relpath"]: r for r in old_db.execute("SELECT * FROM videos")}
        old_video = np.load(old / "video_emb.npy", mmap_mode="r")
        old_frames = np.load(old / "frame_emb.npy", mmap_mode="r")
    next_id = max((r["id"] for r in old_rows.values()), default=0) + 1
    present = {f.relpath for f in files}
    report.removed = sorted(set(old_rows) - present)
    dim = encoder.embed_dim
    vw = store.ArrayWriter(build / "video_emb.npy", dim)
    fw = store.ArrayWriter(build / "frame_emb.npy", dim)
    db = store.create_db(build / "meta.sqlite")
    writer = _VersionWriter(build, encoder, proxies, report, vw, fw, db)
    try:
        bar = tqdm(total=len(files), desc="indexing", unit="video", disable=not progress, dynamic_ncols=True)
        pending: List[Tuple[LibraryFile, int, bool]] = []
        for f in files:
            prev = old_rows.get(f.relpath)
            if prev is not None and prev["size"] == f.size and prev["mtime_ns"] == f.mtime_ns \
                    and _outputs_intact(old, prev, proxies):
                _copy_video(prev, old, old_video, old_frames, build, vw, fw, db)
                report.unchanged.append(f.relpath)
                bar.update(1)
                continue
            if prev is None:
                pending.append((f, next_id, False))
                next_id += 1
            else:
                pending.append((f, prev["id"], True))  # a changed file keeps its id (and URLs)
            if len(pending) == encoder.batch_clips:
                writer.add(pending, bar)
                pending = []
        writer.add(pending, bar)
        bar.close()
        vw.close()
        fw.close()
        report.num_videos = db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        db.commit()
    except BaseException:
        vw.abort()
        fw.abort()
        raise
    finally:
        db.close()


class _VersionWriter:
    """Encodes batches of new or changed videos into the version being built."""

    def __init__(self, build, encoder, proxies, report, vw, fw, db):
        self.build, self.encoder, self.proxies, self.report = build, encoder, proxies, report
        self.vw, self.fw, self.db = vw, fw, db

    def _fail(self, f: LibraryFile, vid: int, e: BaseException, bar) -> None:
        self.report.failed.append((f.relpath, f"{type(e).__name__}: {e}"))
        bar.set_postfix(failed=len(self.report.failed))
        for p in (self.build / "thumbs" / f"{vid}.jpg", self.build / "media" / f"{vid}.webm"):
            p.unlink(missing_ok=True)

    def add(self, batch: List[Tuple[LibraryFile, int, bool]], bar) -> None:
        """Decode each video, encode the batch in one pass, then write each video's outputs.
        Any failure is charged to its own video only; the batch carries on without it."""
        decoded = []
        for f, vid, changed in batch:
            try:
                decoded.append((f, vid, changed, sample_for_index(f.path, self.encoder.sampling)))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop a library
                self._fail(f, vid, e, bar)
                bar.update(1)
        if not decoded:
            return
        try:
            video_embs = list(self.encoder.encode_videos([d[3].video_frames for d in decoded]))
            frame_embs = self.encoder.encode_moments([d[3].moment_frames for d in decoded])
        except Exception:  # noqa: BLE001 - find the culprit: encode one by one
            video_embs, frame_embs = [], []
            for d in decoded:
                try:
                    video_embs.append(self.encoder.encode_video(d[3].video_frames))
                    frame_embs.append(self.encoder.encode_frames(d[3].moment_frames))
                except Exception as e:  # noqa: BLE001
                    video_embs.append(e)
                    frame_embs.append(e)
        for (f, vid, changed, s), v, fr in zip(decoded, video_embs, frame_embs):
            try:
                if isinstance(v, BaseException):
                    raise v
                row = self._outputs(f, vid, s, v, fr)
            except Exception as e:  # noqa: BLE001
                self._fail(f, vid, e, bar)
                bar.update(1)
                continue
            # Outside the try: a failed write (disk full) is fatal, not one video's problem.
            row["row"] = self.vw.append(v[None])
            row["frame_start"] = self.fw.append(fr)
            _insert(self.db, row)
            (self.report.updated if changed else self.report.added).append(f.relpath)
            if row["notes"]:
                self.report.notes.append((f.relpath, row["notes"]))
            bar.update(1)

    def _outputs(self, f: LibraryFile, vid: int, s, video_emb: np.ndarray, frame_emb: np.ndarray) -> Dict:
        """Thumbnail and (if needed) playback copy of one encoded video; returns its table row
        without 'row'/'frame_start' (set when its embeddings are appended)."""
        if not (np.isfinite(video_emb).all() and np.isfinite(frame_emb).all()):
            raise ValueError("the model produced non-finite embeddings for this video")
        write_thumbnail(s.moment_frames, s.moment_times, s.info.duration, self.build / "thumbs" / f"{vid}.jpg")
        notes = list(s.notes)
        media = "original"
        if not browser_playable(f.path):
            media = "none"
            if self.proxies == "auto":
                try:
                    write_proxy(f.path, self.build / "media" / f"{vid}.webm", fps=s.info.fps)
                    media = "proxy"
                except Exception as e:  # noqa: BLE001 - searchable even when it cannot be previewed
                    notes.append(f"no playback copy: {e}")
        return {"id": vid, "relpath": f.relpath, "size": f.size, "mtime_ns": f.mtime_ns,
                "duration": float(s.info.duration), "fps": float(s.info.fps), "width": int(s.info.width),
                "height": int(s.info.height), "num_frames": int(s.info.frame_count),
                "frame_count": int(len(frame_emb)),
                "frame_times": json.dumps([round(float(t), 4) for t in s.moment_times]),
                "media": media, "notes": "; ".join(notes)}


def _insert(db: sqlite3.Connection, row: Dict) -> None:
    cols = ", ".join(row)
    db.execute(f"INSERT INTO videos ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def _outputs_intact(old: Path, prev: sqlite3.Row, proxies: str) -> bool:
    """The old version has everything this video needs: its thumbnail, and its playback copy
    when one is wanted. After a power cut they may be missing (they are not fsynced), and an
    index built with ``--proxies off`` has none; the video is then simply encoded again."""
    if not (old / "thumbs" / f"{prev['id']}.jpg").is_file():
        return False
    if prev["media"] == "none" and proxies == "auto":
        return False
    return prev["media"] != "proxy" or (old / "media" / f"{prev['id']}.webm").is_file()


def _copy_video(prev: sqlite3.Row, old: Path, old_video, old_frames, build: Path,
                vw: store.ArrayWriter, fw: store.ArrayWriter, db: sqlite3.Connection) -> None:
    """An unchanged video: its rows, thumbnail and playback copy come from the old version."""
    row = dict(prev)
    row["row"] = vw.append(old_video[prev["row"]])
    row["frame_start"] = fw.append(old_frames[prev["frame_start"]:prev["frame_start"] + prev["frame_count"]])
    _link(old / "thumbs" / f"{prev['id']}.jpg", build / "thumbs" / f"{prev['id']}.jpg")
    if prev["media"] == "proxy":
        _link(old / "media" / f"{prev['id']}.webm", build / "media" / f"{prev['id']}.webm")
    _insert(db, row)


def _write_captions(db: sqlite3.Connection, found) -> Optional[str]:
    """Store the dataset captions of the indexed videos (and their FTS5 index); returns the
    dataset name, or None when the library is not a known dataset."""
    if found is None:
        return None
    name, captions = found
    rows = []
    for vid, relpath in db.execute("SELECT id, relpath FROM videos"):
        rows += [(vid, c) for c in captions.get(video_key(relpath), [])]
    db.executemany("INSERT INTO captions (video_id, caption) VALUES (?, ?)", rows)
    db.executemany("INSERT INTO captions_fts (caption, video_id) VALUES (?, ?)", [(c, v) for v, c in rows])
    return name
