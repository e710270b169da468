"""Build or update a search index of a video library (incrementally, atomically, resumably).

A re-run adds new videos, drops deleted ones, re-encodes changed ones (size or modification
time differs) and copies the rest from the previous version without decoding them. An index
built with another model or other frame sampling is refused: its embeddings would not be
comparable with the new ones.

How a version is made:

1. every video that needs encoding is decoded, encoded and journaled as its batch finishes
   (``journal``): a run killed at any moment keeps what it finished, and the next run encodes
   only the rest;
2. the version is assembled from the previous version and the journal, in relpath order, so
   the same library gives the same arrays however the work was split (``--shard``, ``merge``);
3. it is published atomically (``store.publish``): the index is never half-written.

Ids are never reused: a new video gets a number above every id the index ever gave (``next_id``
in the metadata), so a deleted video's URLs can never show another one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from . import journal as journal_mod
from . import store
from .checks import check_entry, check_version, member_file, proxy_file, thumb_file
from .encoder import Encoder
from .library import LibraryFile, Skipped, find_captions, scan_library, video_key
from .media import browser_playable, sample_for_index, write_proxy, write_thumbnail

PROXIES = ("auto", "off")
#: Columns of a video's row that come from encoding it (id, row and frame_start are given when
#: the version is assembled).
ROW_COLUMNS = ("relpath", "size", "mtime_ns", "duration", "fps", "width", "height", "num_frames",
               "frame_count", "frame_times", "media", "notes")
#: Metadata keys that differ between two builds of the same library (when they ran, how the
#: work was split); everything else is the same.
VOLATILE_META = ("created", "updated", "shard")


class IndexMismatchError(ValueError):
    """The existing index was built with another model or other sampling settings."""


@dataclass
class IndexReport:
    """What one indexing run did. Lists hold relative paths; ``failed`` (path, reason) pairs.
    ``resumed``: videos whose encoding a killed earlier run had finished (not encoded again).
    Sizes in bytes: ``index_bytes`` (the published version), ``library_bytes`` (the indexed
    files), ``sizes`` (the version by part)."""

    index: Path
    version: Optional[Path] = None
    added: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    unchanged: List[str] = field(default_factory=list)
    resumed: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[Tuple[str, str]] = field(default_factory=list)
    num_videos: int = 0
    encoded: int = 0
    seconds: float = 0.0
    index_bytes: int = 0
    library_bytes: int = 0
    sizes: Dict[str, int] = field(default_factory=dict)
    shard: Optional[Tuple[int, int]] = None

    def summary(self) -> str:
        what = f"shard {self.shard[0]}/{self.shard[1]} " if self.shard else ""
        lines = [f"index {what}{self.index}: {self.num_videos} videos ({len(self.added)} added, "
                 f"{len(self.updated)} re-encoded, {len(self.removed)} removed, {len(self.unchanged)} unchanged, "
                 f"{len(self.failed)} failed) in {self.seconds:.1f} s"]
        if self.resumed:
            lines.append(f"  resumed: {len(self.resumed)} videos encoded by an interrupted run were kept")
        if self.version is not None:
            lines.append("  " + size_line(self.index_bytes, self.library_bytes, self.sizes))
        lines += [f"  failed: {p}: {why}" for p, why in self.failed]
        lines += [f"  skipped: {p}: {why}" for p, why in self.skipped]
        lines += [f"  note: {p}: {why}" for p, why in self.notes]
        return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def size_line(index_bytes: int, library_bytes: int, sizes: Dict[str, int]) -> str:
    """'index size: 1.2 MB (...) = 0.31x the library (3.9 MB)'."""
    parts = ", ".join(f"{k.replace('_', ' ')} {human_bytes(v)}" for k, v in sizes.items() if v)
    ratio = f" = {index_bytes / library_bytes:.2f}x the library ({human_bytes(library_bytes)})" if library_bytes else ""
    return f"index size: {human_bytes(index_bytes)} ({parts}){ratio}"


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
            raise store.IndexBusyError(f"another indexer is writing {index_dir}; wait for it to finish") from None
        yield


def _link(src: Path, dst: Path) -> None:
    """Carry a file over to the new version without copying its bytes where possible. ``src``
    must be a regular file: a symbolic link (in a shard built elsewhere, or a changed index)
    would make the new version serve whatever it points to."""
    if member_file(src.parent, src.name) is None:
        raise store.IndexFormatError(f"{src}: missing, or not a regular file (a symbolic link?); an index's "
                                     "thumbnails and playback copies must be its own files (re-build that index)")
    dst.unlink(missing_ok=True)  # left by an assembly that was killed
    try:
        os.link(src, dst)  # a hard link to the regular file checked above (links are not followed)
    except OSError:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)


def listing_digest(files: Sequence[LibraryFile]) -> str:
    """Identifies a library listing (paths, sizes, times): shards of one build must agree on it."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def shard_slice(files: Sequence[LibraryFile], index: int, count: int) -> List[LibraryFile]:
    """Shard ``index`` of ``count``: a contiguous block of the relpath-sorted library."""
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
    n = len(files)
    return list(files[index * n // count:(index + 1) * n // count])


# ---------------------------------------------------------------------------- sources
class _FromVersion:
    """A video copied from an existing version (the previous one, or a shard's partial index)."""

    def __init__(self, version: Path, row: sqlite3.Row, video_emb, frame_emb):
        self.version, self.row, self.video_emb, self.frame_emb = version, row, video_emb, frame_emb

    def load(self):
        r = self.row
        video = np.asarray(self.video_emb[r["row"]], dtype=np.float32)
        frames = np.asarray(self.frame_emb[r["frame_start"]:r["frame_start"] + r["frame_count"]])
        proxy = proxy_file(self.version, r["id"]) if r["media"] == "proxy" else None
        if r["media"] == "proxy" and proxy is None:
            raise store.IndexFormatError(f"{self.version / 'media'}: the playback copy of video {r['id']} is "
                                         "missing or not a regular file (a symbolic link?); re-build that index")
        return {k: r[k] for k in ROW_COLUMNS}, video, frames, self.version / "thumbs" / f"{r['id']}.jpg", proxy


class _FromJournal:
    def __init__(self, journal: journal_mod.Journal, relpath: str):
        self.journal, self.relpath = journal, relpath

    def load(self):
        e = self.journal.get(self.relpath)
        if e is None:
            raise RuntimeError(f"{self.relpath}: its journal entry disappeared during assembly")
        return e.row, e.video, e.frames, e.thumb, e.media


def _outputs_intact(old: Path, prev: sqlite3.Row, proxies: str) -> bool:
    """The old version has everything this video needs: its thumbnail, and its playback copy
    when one is wanted. After a power cut they may be missing (they are not fsynced), and an
    index built with ``--proxies off`` has none; the video is then simply encoded again."""
    if thumb_file(old, prev["id"]) is None:
        return False
    if prev["media"] == "none" and proxies == "auto":
        return False
    return prev["media"] != "proxy" or proxy_file(old, prev["id"]) is not None


# ---------------------------------------------------------------------------- building
def _check_options(proxies: str, faiss: Optional[bool]) -> None:
    """Refuse a bad ``proxies`` value, and ``faiss=True`` without faiss, before any work is done."""
    if proxies not in PROXIES:
        raise ValueError(f"--proxies {proxies!r}; expected one of {PROXIES}")
    if faiss:
        from .ann import require_faiss
        require_faiss()


def _resolve_folders(videos: Path, out: Path) -> Tuple[Path, Path]:
    """The library and index folders as absolute paths; the index must not hold the library
    (it would index its own files) and must be usable as an index folder."""
    videos = Path(os.path.realpath(Path(videos).expanduser()))
    out = Path(out).expanduser().resolve()
    if videos == out or videos.is_relative_to(out):
        raise ValueError(f"--out {out} must not contain the library --videos {videos}")
    store.check_index_dir(out)
    return videos, out


def _select_files(videos: Path, out: Path, only: Union[None, Iterable[str], Callable[[str], bool]],
                  shard: Optional[Tuple[int, int]]) -> Tuple[List[LibraryFile], List[Skipped], Optional[Dict]]:
    """The library files to index (after ``only``, then the ``shard`` slice), the files the scan
    skipped, and the shard's metadata: the listing before slicing, which every shard of one
    build must share for ``merge_indexes``."""
    files, skipped = scan_library(videos, exclude=[out])
    if only is not None:
        keep = only if callable(only) else set(only).__contains__
        files = [f for f in files if keep(f.relpath)]
    shard_meta = None
    if shard is not None:
        shard_meta = {"index": int(shard[0]), "count": int(shard[1]), "files": len(files),
                      "listing": listing_digest(files)}
        files = shard_slice(files, *shard)
    return files, skipped, shard_meta


def _checked_old(old: Optional[Path], dim: Optional[int]) -> Dict:
    """The metadata of the version an update starts from (checked as a search would check it),
    or {} when there is none."""
    if old is None:
        return {}
    try:
        return check_version(old, dim)
    except store.IndexFormatError as e:
        raise store.IndexFormatError(f"{e} (or pass --rebuild to index the library from scratch)") from None


def _check_previous(meta_old: Dict, encoder: Encoder, out: Path, videos: Path,
                    log: Callable[[str], None]) -> None:
    """Refuse an existing index of another model or sampling; say when the library moved or the
    index is of an older format (then every video is encoded again)."""
    check_compatible(meta_old, encoder, out)
    if meta_old.get("library") != str(videos):
        log(f"note: library moved from {meta_old.get('library')} to {videos}; "
            "unchanged files keep their embeddings")
    if meta_old.get("format") != store.FORMAT:
        log(f"note: {out} is an index of format {meta_old.get('format')}; every video is "
            "encoded again (ids are kept)")


def _library_captions(videos: Path, sources: Dict[str, object]) -> Tuple[Optional[str], Optional[Dict[str, List[str]]]]:
    """The dataset the library's caption files name and the captions of each indexed video
    (None, None when the library has none)."""
    found = find_captions(videos)
    if found is None:
        return None, None
    return found[0], {rel: found[1].get(video_key(rel), []) for rel in sources}


def _build_meta(encoder: Encoder, videos: Path, meta_old: Dict, proxies: str, shard_meta: Optional[Dict]) -> Dict:
    """The new version's metadata (``_finish`` adds the counts and sizes); ``created`` is kept
    from the previous version."""
    meta = {"format": store.FORMAT, "fingerprint": encoder.fingerprint, "model": encoder.description,
            "sampling": encoder.sampling.to_dict(), "library": str(videos),
            "created": meta_old.get("created", time.time()), "proxies": proxies}
    if shard_meta:
        meta["shard"] = shard_meta
    return meta


def _abandon_build(build: Path, jour: journal_mod.Journal, error: BaseException, log: Callable[[str], None]) -> None:
    """After a failed or interrupted run: keep the build folder when its journal holds encoded
    videos (the next run resumes from them), delete it when it holds none."""
    kept = len(jour)
    jour.close()
    if kept == 0:
        shutil.rmtree(build, ignore_errors=True)
    elif isinstance(error, KeyboardInterrupt):
        log(f"interrupted: the {kept} videos encoded so far are kept; run the same command "
            "again to go on from there")


def build_index(videos: Path, out: Path, encoder: Encoder, *, proxies: str = "auto",
                faiss: Optional[bool] = False, rebuild: bool = False, progress: bool = True,
                log: Callable[[str], None] = print,
                only: Union[None, Iterable[str], Callable[[str], bool]] = None,
                shard: Optional[Tuple[int, int]] = None) -> IndexReport:
    """Index every video under ``videos`` into the index folder ``out`` (created or updated).

    proxies: 'auto' writes a playback copy of each video browsers cannot play; 'off' none.
    faiss: also write a FAISS index (``pip install faiss-cpu``); None: when the library is large
    enough for it to pay (``ann.AUTO_FAISS_VIDEOS``) and faiss is installed. rebuild: ignore (and
    replace) an existing index even if it was built with another model. only: the relpaths to
    index, or a predicate on them (e.g. a dataset split); the rest of the library is left out. shard: (I, N): index only the
    I-th of N slices into ``out``, a partial index for ``merge_indexes``. Per-video failures are
    reported, never fatal; the new version is published only when complete, and a run that is
    killed or interrupted keeps what it encoded for the next run (``journal``).
    """
    _check_options(proxies, faiss)
    t0 = time.perf_counter()
    videos, out = _resolve_folders(videos, out)
    files, skipped, shard_meta = _select_files(videos, out, only, shard)
    out.mkdir(parents=True, exist_ok=True)
    report = IndexReport(out, skipped=[(s.relpath, s.reason) for s in skipped],
                         shard=tuple(shard) if shard is not None else None)
    with _exclusive(out):
        old = None if rebuild else store.current_version(out)
        meta_old = _checked_old(old, encoder.embed_dim)
        old_db = store.open_db(old) if old else None
        try:
            if old_db:
                _check_previous(meta_old, encoder, out, videos, log)
            key = {"fingerprint": encoder.fingerprint, "sampling": encoder.sampling.to_dict(), "proxies": proxies}
            build = store.new_build_dir(out, resume=lambda b: journal_mod.resumable(b, key))
            jour = journal_mod.Journal(build, key, encoder.embed_dim)
            try:
                sources = _encode_library(build, jour, old, old_db, meta_old, files, encoder, proxies, report,
                                          progress)
                old_rows = {r["relpath"]: r for r in old_db.execute("SELECT * FROM videos")} if old_db else {}
                report.removed = sorted(set(old_rows) - {f.relpath for f in files})
                dataset, captions = _library_captions(videos, sources)
                meta = _build_meta(encoder, videos, meta_old, proxies, shard_meta)
                _finish(build, sources, old_rows, meta_old, meta, encoder.embed_dim, dataset, captions, report,
                        faiss)
                jour.discard()
                report.version = store.publish(out, build)
            except BaseException as e:
                _abandon_build(build, jour, e, log)
                raise
        finally:
            if old_db is not None:
                old_db.close()
    report.seconds = time.perf_counter() - t0
    return report


def _encode_library(build: Path, jour: journal_mod.Journal, old: Optional[Path], old_db, meta_old: Dict,
                    files: List[LibraryFile], encoder: Encoder, proxies: str, report: IndexReport,
                    progress: bool) -> Dict[str, object]:
    """Encode into the journal what neither the old version nor the journal has; returns the
    source of every indexed video (relpath -> _FromVersion | _FromJournal), in relpath order."""
    old_rows: Dict[str, sqlite3.Row] = {}
    old_video = old_frames = None
    if old_db is not None:
        old_rows = {r["relpath"]: r for r in old_db.execute("SELECT * FROM videos")}
        old_video = np.load(old / "video_emb.npy", mmap_mode="r")
        old_frames = np.load(old / "frame_emb.npy", mmap_mode="r")
    same_format = meta_old.get("format") == store.FORMAT
    sources: Dict[str, object] = {}
    todo: List[LibraryFile] = []
    bar = tqdm(total=len(files), desc="indexing", unit="video", disable=not progress, dynamic_ncols=True)
    for f in files:
        prev = old_rows.get(f.relpath)
        if prev is not None and same_format and prev["size"] == f.size and prev["mtime_ns"] == f.mtime_ns \
                and _outputs_intact(old, prev, proxies):
            sources[f.relpath] = _FromVersion(old, prev, old_video, old_frames)
            report.unchanged.append(f.relpath)
            bar.update(1)
        elif jour.has(f.relpath, f.size, f.mtime_ns) and jour.get(f.relpath) is not None:
            sources[f.relpath] = _FromJournal(jour, f.relpath)
            report.resumed.append(f.relpath)
            (report.updated if prev is not None else report.added).append(f.relpath)
            bar.update(1)
        else:
            todo.append(f)
    writer = _BatchEncoder(build, encoder, proxies, report, jour, bar)
    for i in range(0, len(todo), encoder.batch_clips):
        for f in writer.add(todo[i:i + encoder.batch_clips]):
            sources[f.relpath] = _FromJournal(jour, f.relpath)
            (report.updated if f.relpath in old_rows else report.added).append(f.relpath)
    bar.close()
    report.added.sort()
    report.updated.sort()
    report.failed.sort()
    return dict(sorted(sources.items()))


class _BatchEncoder:
    """Decodes and encodes batches of new or changed videos into the journal."""

    def __init__(self, build, encoder, proxies, report, jour, bar):
        self.build, self.encoder, self.proxies, self.report = build, encoder, proxies, report
        self.journal, self.bar = jour, bar

    def _fail(self, f: LibraryFile, e: BaseException) -> None:
        self.report.failed.append((f.relpath, f"{type(e).__name__}: {e}"))
        self.bar.set_postfix(failed=len(self.report.failed))
        self.bar.update(1)
        stem = journal_mod.stem(f.relpath)
        for p in [self.build / "thumbs" / f"{stem}.jpg", *(self.build / "media").glob(f"{stem}.*")]:
            p.unlink(missing_ok=True)

    def add(self, batch: List[LibraryFile]) -> List[LibraryFile]:
        """Decode each video, encode the batch in one pass, write each video's thumbnail and
        playback copy, and journal the batch. Any failure is charged to its own video only; the
        batch carries on without it. Returns the videos journaled."""
        decoded = []
        for f in batch:
            try:
                decoded.append((f, sample_for_index(f.path, self.encoder.sampling)))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop a library
                self._fail(f, e)
        if not decoded:
            return []
        try:
            video_embs, frame_embs = self.encoder.encode_for_index(
                [(s.moment_frames, s.video_pos) for _, s in decoded])
            results = list(zip(video_embs, frame_embs))
        except Exception:  # noqa: BLE001 - find the culprit: encode one by one
            results = []
            for _, s in decoded:
                try:
                    v, fr = self.encoder.encode_for_index([(s.moment_frames, s.video_pos)])
                    results.append((v[0], fr[0]))
                except Exception as e:  # noqa: BLE001
                    results.append(e)
        entries, done = [], []
        for (f, s), res in zip(decoded, results):
            try:
                if isinstance(res, BaseException):
                    raise res
                entries.append(self._outputs(f, s, *res))
            except Exception as e:  # noqa: BLE001
                self._fail(f, e)
                continue
            done.append(f)
        # Outside the try: a failed journal write (disk full) is fatal, not one video's problem.
        self.journal.add(entries, {f.relpath: (f.size, f.mtime_ns) for f in done})
        for f, e in zip(done, entries):
            if e.row["notes"]:
                self.report.notes.append((f.relpath, e.row["notes"]))
        self.report.encoded += len(done)
        self.bar.update(len(done))
        return done

    def _outputs(self, f: LibraryFile, s, video_emb: np.ndarray, frame_emb: np.ndarray) -> journal_mod.Entry:
        """Thumbnail and (if needed) playback copy of one encoded video, as a journal entry."""
        if not (np.isfinite(video_emb).all() and np.isfinite(frame_emb).all()):
            raise ValueError("the model produced non-finite embeddings for this video")
        stem = journal_mod.stem(f.relpath)
        thumb = self.build / "thumbs" / f"{stem}.jpg"
        write_thumbnail(s.moment_frames, s.moment_times, s.info.duration, thumb)
        notes = list(s.notes)
        media, proxy = "original", None
        if not browser_playable(f.path):
            media = "none"
            if self.proxies == "auto":
                try:
                    proxy = write_proxy(f.path, self.build / "media" / stem, fps=s.info.fps)
                    media = "proxy"
                except Exception as e:  # noqa: BLE001 - searchable even when it cannot be previewed
                    notes.append(f"no playback copy: {e}")
        row = {"relpath": f.relpath, "size": f.size, "mtime_ns": f.mtime_ns,
               "duration": float(s.info.duration), "fps": float(s.info.fps), "width": int(s.info.width),
               "height": int(s.info.height), "num_frames": int(s.info.frame_count),
               "frame_count": int(len(frame_emb)),
               "frame_times": json.dumps([round(float(t), 4) for t in s.moment_times]),
               "media": media, "notes": "; ".join(notes)}
        return journal_mod.Entry(f.relpath, row, np.asarray(video_emb, np.float32),
                                 np.asarray(frame_emb, np.float16), thumb, proxy)


# ---------------------------------------------------------------------------- assembling
def _finish(build: Path, sources: Dict[str, object], old_rows: Dict[str, sqlite3.Row], meta_old: Dict,
            meta: Dict, dim: int, dataset: Optional[str], captions: Optional[Dict[str, List[str]]],
            report: IndexReport, faiss: Optional[bool]) -> None:
    """Assemble the version in ``build`` from ``sources`` (relpath order): arrays, thumbnails,
    playback copies, the videos table (a relpath keeps its id; new ones get ids from
    ``next_id`` on), captions, failures, sizes and metadata; and the FAISS index if wanted."""
    next_id = max([int(meta_old.get("next_id") or 0)] + [int(r["id"]) + 1 for r in old_rows.values()] + [1])
    for name in ("meta.sqlite", "video_emb.npy", "frame_emb.npy", "videos.faiss"):
        (build / name).unlink(missing_ok=True)  # left by an assembly that was killed
    vw = store.ArrayWriter(build / "video_emb.npy", dim, np.float32)
    fw = store.ArrayWriter(build / "frame_emb.npy", dim, np.float16)
    db = store.create_db(build / "meta.sqlite")
    library_bytes = 0
    try:
        for relpath, src in sources.items():
            row, video, frames, thumb, media = src.load()
            problem = check_entry(row, video, frames, dim)
            if problem is not None:  # sources are checked when opened: this is the last guard
                raise store.IndexFormatError(f"{relpath}: its entry has a bad {problem}; re-index")
            prev = old_rows.get(relpath)
            if prev is not None:
                vid = int(prev["id"])
            else:
                vid, next_id = next_id, next_id + 1
            row = {"id": vid, "row": vw.append(video[None]), **row, "frame_start": fw.append(frames)}
            _link(thumb, build / "thumbs" / f"{vid}.jpg")
            if media is not None:
                _link(media, build / "media" / f"{vid}{media.suffix}")
            db.execute(f"INSERT INTO videos ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       list(row.values()))
            library_bytes += int(row["size"])
        vw.close()
        fw.close()
    except BaseException:
        vw.abort()
        fw.abort()
        db.close()
        raise
    try:
        report.num_videos = len(sources)
        if captions is not None:
            _write_captions(db, captions)
        db.executemany("INSERT INTO failures (relpath, error) VALUES (?, ?)", sorted(report.failed))
        if faiss or (faiss is None and _auto_faiss(len(sources))):
            from .ann import build_faiss_index, save_faiss_index
            emb = np.load(build / "video_emb.npy", mmap_mode="r")
            save_faiss_index(build_faiss_index(emb), build / "videos.faiss")
        sizes = {k: v for k, v in version_sizes(build).items() if k != "metadata"}  # readers stat meta.sqlite
        meta = {**meta, "updated": time.time(), "num_videos": len(sources), "next_id": next_id,
                "faiss": (build / "videos.faiss").is_file(), "dataset": dataset, "sizes": sizes,
                "library_bytes": library_bytes}
        store.write_meta(db, meta)
        db.commit()
    finally:
        db.close()
    report.sizes, report.library_bytes = version_sizes(build), library_bytes
    report.index_bytes = sum(report.sizes.values())


def _auto_faiss(n: int) -> bool:
    from .ann import AUTO_FAISS_VIDEOS, faiss_available
    return n >= AUTO_FAISS_VIDEOS and faiss_available()


def version_sizes(version: Path) -> Dict[str, int]:
    """Bytes of a version folder by part: embeddings, faiss, thumbnails, playback copies, metadata
    (0 for a part that is not there)."""
    def size(p: Path) -> int:
        return p.stat().st_size if p.is_file() else 0

    def tree(p: Path) -> int:  # "j-*": a build's journaled files, the same bytes as the id-named links
        return sum(e.stat().st_size for e in os.scandir(p) if e.is_file() and not e.name.startswith("j-")) \
            if p.is_dir() else 0
    return {"embeddings": size(version / "video_emb.npy") + size(version / "frame_emb.npy"),
            "faiss": size(version / "videos.faiss"), "thumbnails": tree(version / "thumbs"),
            "playback_copies": tree(version / "media"), "metadata": size(version / "meta.sqlite")}


def _write_captions(db: sqlite3.Connection, captions: Dict[str, List[str]]) -> None:
    """Store the dataset captions of the indexed videos (and their FTS5 index), in id order."""
    rows = []
    for vid, relpath in db.execute("SELECT id, relpath FROM videos ORDER BY id"):
        rows += [(vid, c) for c in captions.get(relpath, [])]
    db.executemany("INSERT INTO captions (video_id, caption) VALUES (?, ?)", rows)
    db.executemany("INSERT INTO captions_fts (caption, video_id) VALUES (?, ?)", [(c, v) for v, c in rows])


# ---------------------------------------------------------------------------- merging shards
def _read_partials(partials: Sequence[Path]) -> List[Tuple[Path, Path, Dict]]:
    """(folder, current version, metadata) of each partial index; refuses a folder that is not
    a shard's partial index, or one of another index format."""
    parts = []
    for p in partials:
        p = Path(p).expanduser().resolve()
        version = store.require_version(p)
        meta = check_version(version)  # a shard may come from another machine: trust nothing in it
        if not meta.get("shard"):
            raise ValueError(f"{p} is not a partial index (build one with 'index --shard I/N')")
        if meta.get("format") != store.FORMAT:
            raise ValueError(f"{p}: index format {meta.get('format')}; rebuild the shard with this version")
        parts.append((p, version, meta))
    if not parts:
        raise ValueError("merge needs the partial indexes of every shard")
    return parts


def _check_same_build(parts: List[Tuple[Path, Path, Dict]]) -> None:
    """Every part comes from one build: the same model, settings and library listing (else their
    embeddings, or their slices of the library, would not fit together)."""
    first = parts[0][2]
    for p, _, m in parts[1:]:
        for k in ("fingerprint", "sampling", "library", "proxies"):
            if m.get(k) != first.get(k):
                raise ValueError(f"{p} and {parts[0][0]} differ in {k}: they are shards of different builds")
        for k in ("count", "listing", "files"):
            if m["shard"].get(k) != first["shard"].get(k):
                raise ValueError(f"{p} and {parts[0][0]} saw different libraries or shard counts "
                                 f"(shard {k}: {m['shard'].get(k)} vs {first['shard'].get(k)}); re-run the shards")


def _check_every_shard_once(parts: List[Tuple[Path, Path, Dict]]) -> None:
    """Each of the N shards is given exactly once: a missing one would drop videos, a repeated
    one would add them twice."""
    count = parts[0][2]["shard"]["count"]
    have = sorted(m["shard"]["index"] for _, _, m in parts)
    if have != list(range(count)):
        missing = sorted(set(range(count)) - set(have))
        dupes = sorted({i for i in have if have.count(i) > 1})
        problems = ([f"given twice {dupes}"] if dupes else []) + ([f"missing {missing}"] if missing else [])
        raise ValueError(f"merge needs each of the {count} shards once: {', '.join(problems)}")


def _check_merge_target(meta_old: Dict, first: Dict, out: Path) -> None:
    """An earlier version in ``out`` must have the shards' model and sampling: embeddings of
    different models cannot be mixed."""
    for k in ("fingerprint", "sampling"):
        if meta_old.get(k) != first.get(k):
            raise IndexMismatchError(f"{out} was built with another model or sampling ({k} "
                                     "differs); merge into a new folder")


def _shard_sources(parts: List[Tuple[Path, Path, Dict]], opened: List[sqlite3.Connection],
                   report: IndexReport) -> Tuple[Dict[str, object], Dict[str, List[str]], bool]:
    """The source of every video in the shards (relpath order), their captions, and whether any
    shard has a dataset's captions; the shards' failures go into ``report``. Each shard's
    database is appended to ``opened``: the caller closes them after assembly, which reads them."""
    sources, captions, has_captions = {}, {}, False
    for p, version, m in parts:
        db = store.open_db(version)
        opened.append(db)
        video = np.load(version / "video_emb.npy", mmap_mode="r")
        frames = np.load(version / "frame_emb.npy", mmap_mode="r")
        for r in db.execute("SELECT * FROM videos"):
            if r["relpath"] in sources:
                raise ValueError(f"{r['relpath']} is in two shards")
            sources[r["relpath"]] = _FromVersion(version, r, video, frames)
            captions[r["relpath"]] = [c[0] for c in db.execute(
                "SELECT caption FROM captions WHERE video_id = ? ORDER BY rowid", (r["id"],))]
        report.failed += [(a, b) for a, b in db.execute("SELECT relpath, error FROM failures")]
        has_captions = has_captions or m.get("dataset") is not None
    return dict(sorted(sources.items())), captions, has_captions


def _report_changes(sources: Dict[str, _FromVersion], old_rows: Dict[str, sqlite3.Row], report: IndexReport) -> None:
    """Sort the videos into added, unchanged, re-encoded (size or time differs) and removed,
    against the earlier version in the target, as an ``index`` update would report them."""
    for rel, r in old_rows.items():
        if rel not in sources:
            report.removed.append(rel)
    for rel, src in sources.items():
        prev = old_rows.get(rel)
        if prev is None:
            report.added.append(rel)
        elif (prev["size"], prev["mtime_ns"]) == (src.row["size"], src.row["mtime_ns"]):
            report.unchanged.append(rel)
        else:
            report.updated.append(rel)
    report.removed.sort()
    report.failed.sort()


def _merged_meta(first: Dict, meta_old: Dict) -> Dict:
    """The merged version's metadata: the shards' model and settings (``_finish`` adds the
    counts and sizes); ``created`` is kept from an earlier version in the target."""
    return {"format": store.FORMAT, "fingerprint": first["fingerprint"], "model": first["model"],
            "sampling": first["sampling"], "library": first["library"],
            "created": meta_old.get("created", time.time()), "proxies": first["proxies"]}


def merge_indexes(partials: Sequence[Path], out: Path, *, faiss: Optional[bool] = False,
                  log: Callable[[str], None] = print) -> IndexReport:
    """Merge the partial indexes of ``index --shard I/N`` (every I of one N, built from the same
    library listing with the same model and settings) into the index ``out``: the same index as
    one ``index`` run over the whole library (embeddings, rows, ids, captions, files), published
    atomically. ``out`` may hold an earlier version: its videos keep their ids, as in an update."""
    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    parts = _read_partials(partials)
    first = parts[0][2]
    _check_same_build(parts)
    _check_every_shard_once(parts)
    store.check_index_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    report = IndexReport(out)
    opened = []
    with _exclusive(out):
        old = store.current_version(out)
        meta_old = _checked_old(old, None)
        old_db = store.open_db(old) if old else None
        try:
            if old_db:
                _check_merge_target(meta_old, first, out)
            old_rows = {r["relpath"]: r for r in old_db.execute("SELECT * FROM videos")} if old_db else {}
            sources, captions, has_captions = _shard_sources(parts, opened, report)
            _report_changes(sources, old_rows, report)
            meta = _merged_meta(first, meta_old)
            build = store.new_build_dir(out)
            try:
                dim = int(np.load(parts[0][1] / "video_emb.npy", mmap_mode="r").shape[1])
                _finish(build, sources, old_rows, meta_old, meta, dim, first.get("dataset"),
                        captions if has_captions else None, report, faiss)
                report.version = store.publish(out, build)
            except BaseException:
                shutil.rmtree(build, ignore_errors=True)
                raise
        finally:
            for db in opened:
                db.close()
            if old_db is not None:
                old_db.close()
    report.seconds = time.perf_counter() - t0
    log(f"merged {len(parts)} shards")
    return report
