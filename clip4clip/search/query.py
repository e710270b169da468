"""Searching an index: ``SearchIndex.open(path).search("a man is cooking", k=10)``.

Videos are ranked by the cosine similarity of the query's text embedding and each video
embedding, in float32: the similarity evaluation ranks by (``CLIP4Clip.similarity`` scales it by
a positive constant, which changes no rank), so searching a split's videos with its captions
gives evaluation's R@1 exactly. Equal scores are ordered by the video's row in the index (its
place in relpath order), so results are deterministic. Each hit also carries its best moment
(the timestamp of the indexed frame most similar to the query) and its best segment (the span
of frames around it that match nearly as well, see ``segments``).

``search_full`` also says how much of the query the text tower read (``TextUse``): it reads at
most ``max_words - 2`` tokens and cuts the rest.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import store
from ..core.paths import plain_relative
from .checks import MAX_ID, check_version, proxy_file, thumb_file
from .encoder import Encoder, TextUse
from .library import VIDEO_EXTENSIONS
from .segments import best_segment

BACKENDS = ("auto", "exact", "faiss")
#: Ids are SQLite integers: anything outside this range is no video (and would overflow SQLite).
#: Longest query accepted (characters); longer ones are refused, never silently cut.
MAX_QUERY_CHARS = 500
#: Words of a query used for caption matching (FTS5 cost grows with the number of terms).
MAX_CAPTION_TERMS = 32


@dataclass
class Hit:
    """One search result. id: the video's id in the index (stable across re-indexing, never
    reused); path: relative to the library; score: cosine similarity in [-1, 1] (float32, as
    evaluation computes it); moment: seconds from the start of the best-matching frame;
    moment_score: that frame's cosine similarity; start, end: the best segment in seconds (the
    frames around the moment that match nearly as well, see ``segments``); duration: seconds;
    available: the file is still there to play; captions: its first stored dataset caption, if
    the library is a known dataset; version: a token that changes when the video's content does
    (the web page puts it in media URLs, so browsers never play a cached older file)."""

    rank: int
    id: int
    path: str
    score: float
    moment: float
    moment_score: float
    start: float
    end: float
    duration: float
    available: bool
    captions: List[str] = field(default_factory=list)
    version: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """``hits`` best first, and ``text``: how much of the query the model read."""

    hits: List["Hit"]
    text: TextUse


@dataclass
class CaptionHit:
    """A video whose stored caption matches the query words (SQLite FTS5, BM25: lower = better;
    ``score`` is the negated BM25 so that higher is better, like the model's score)."""

    rank: int
    id: int
    path: str
    caption: str
    score: float
    available: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class VideoRecord:
    """Metadata of one indexed video (a row of the ``videos`` table)."""

    id: int
    path: str
    duration: float
    fps: float
    width: int
    height: int
    frame_times: List[float]
    media: str
    notes: str
    captions: List[str]
    version: str = ""


def content_version(size: int, mtime_ns: int, media: str) -> str:
    """12 hex digits that change whenever the indexer sees new content for a video."""
    return hashlib.sha1(f"{int(size)}:{int(mtime_ns)}:{media}".encode()).hexdigest()[:12]


def check_query(text: str) -> str:
    """The query stripped; ValueError when it is empty or longer than ``MAX_QUERY_CHARS``."""
    if not isinstance(text, str):
        raise ValueError(f"the query must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("the query is empty: describe what happens in the video, e.g. 'a man is cooking'")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text


def fts_query(text: str) -> Optional[str]:
    """An FTS5 MATCH expression for free text: every word quoted (so FTS5 syntax characters in
    the query are plain text), joined by OR (BM25 ranks captions matching more words higher)."""
    words = re.findall(r"\w+", text.lower())[:MAX_CAPTION_TERMS]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words)) or None


class SearchIndex:
    """An opened index version plus the model that encodes queries for it.

    Open with ``SearchIndex.open(path)``; the model is the one the index was built with (its
    fingerprint is checked), or ``checkpoint=`` when that file has moved. Thread-safe for the
    web app: SQLite access is serialised, ranking is read-only.

    backend: 'exact' (float32 matrix-vector product over every video), 'faiss' (the index's
    ``videos.faiss``: approximate candidates, re-ranked exactly in float32) or 'auto' (faiss
    when the index has one and holds at least ``ann.AUTO_FAISS_VIDEOS`` videos, else exact).
    """

    def __init__(self, path: Path, version: Path, meta: Dict[str, Any], encoder: Encoder,
                 backend: str = "auto", library: Optional[Path] = None):
        if backend not in BACKENDS:
            raise ValueError(f"--backend {backend!r}; expected one of {BACKENDS}")
        self.path, self.version, self.meta, self.encoder = path, version, meta, encoder
        self.requested_backend = backend
        self.library = Path(library or meta["library"]).expanduser().resolve()
        self._lock = threading.Lock()
        self._db = store.open_db(version)
        emb = np.load(version / "video_emb.npy", mmap_mode="r")
        if emb.shape[1] != encoder.embed_dim:
            raise store.IndexFormatError(f"{version / 'video_emb.npy'}: {emb.shape[1]}-wide embeddings, but the "
                                         f"model gives {encoder.embed_dim}; re-index")
        fpath = version / "videos.faiss"
        if backend == "auto":
            from .ann import AUTO_FAISS_VIDEOS, faiss_available
            backend = "faiss" if fpath.is_file() and len(emb) >= AUTO_FAISS_VIDEOS and faiss_available() else "exact"
        self.backend = backend
        self._faiss = None
        if backend == "faiss":
            from .ann import load_faiss_index
            if not fpath.is_file():
                raise ValueError(f"{path} has no FAISS index; rebuild it with 'index ... --faiss'")
            self._faiss = load_faiss_index(fpath, dim=emb.shape[1], count=len(emb))
            # Only the candidates are re-ranked: the rows stay on disk (page cache), not in RAM.
            self._video_emb = emb
        else:
            # Whole matrix in memory as float32, the dtype evaluation ranks in (an index of
            # format 1 stored float16: its rows are widened, and rank as closely as they can).
            self._video_emb = np.array(emb, dtype=np.float32)  # a copy: writable, in RAM
            self._video_t = torch.from_numpy(self._video_emb)
        self._frame_emb = np.load(version / "frame_emb.npy", mmap_mode="r")
        self._row_ids = self._row_to_id()
        self.has_captions = bool(self._query("SELECT 1 FROM captions LIMIT 1"))
        self._info: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, checkpoint: Optional[str] = None, backend: str = "auto", device: str = "cpu",
             library: Optional[str] = None, encoder: Optional[Encoder] = None) -> "SearchIndex":
        """Open the live version of the index at ``path``. The query encoder is loaded from
        ``checkpoint`` (default: the one the index records) and must have the index's
        fingerprint; ``library`` overrides where the videos are (a moved library)."""
        path = Path(path).expanduser().resolve()
        version = store.require_version(path)
        meta = check_version(version)  # a broken index is named now, not by the first query
        if encoder is None:
            source = checkpoint or meta["model"]["checkpoint"]
            s = meta["sampling"]
            encoder = Encoder.load(source, fps=s["fps"], max_frames=s["max_frames"], moment_fps=s["moment_fps"],
                                   moment_frames=s["moment_frames"], device=device,
                                   bpe_vocab=meta["model"].get("bpe_vocab"))
        if encoder.fingerprint != meta["fingerprint"]:
            raise ValueError(f"{path} was built with model {meta['fingerprint']} "
                             f"({meta['model']['checkpoint']}), but {encoder.description['checkpoint']} is "
                             f"{encoder.fingerprint}: the file changed or is another model; pass the "
                             "original with --checkpoint, or re-index")
        return cls(path, version, meta, encoder, backend, library)

    def refresh(self) -> "SearchIndex":
        """This index, or a new SearchIndex on the same model if a re-index published a new
        version since it was opened (the web app calls this per request)."""
        try:
            version = store.current_version(self.path)
        except (OSError, store.IndexFormatError):
            return self
        if version is None or version == self.version:
            return self
        try:
            meta = check_version(version, self.encoder.embed_dim)
        except (OSError, sqlite3.Error, store.IndexFormatError):
            return self  # deleted again in the meantime, or broken: keep serving what we have
        if meta["fingerprint"] != self.encoder.fingerprint:
            return self  # re-indexed with another model (--rebuild): keep serving what we have
        return SearchIndex(self.path, version, meta, self.encoder, self.requested_backend, self.library)

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, params: Sequence = ()) -> List[Any]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _row_to_id(self) -> np.ndarray:
        ids = np.full(len(self._video_emb), -1, dtype=np.int64)
        for vid, row in self._query("SELECT id, row FROM videos"):
            ids[row] = vid
        return ids

    # ------------------------------------------------------------------ properties
    @property
    def num_videos(self) -> int:
        return int((self._row_ids >= 0).sum())

    def info(self) -> Dict[str, Any]:
        """What the page footer and ``/api/info`` show: size of the index and of the library
        (bytes), videos, model, backend."""
        if self._info is None:  # a version never changes: measured once (an old index has no sizes)
            from .indexer import version_sizes
            sizes = dict(self.meta.get("sizes") or {k: v for k, v in version_sizes(self.version).items()
                                                     if k != "metadata"})
            sizes["metadata"] = (self.version / "meta.sqlite").stat().st_size
            self._info = {"videos": self.num_videos, "index_bytes": int(sum(sizes.values())), "sizes": sizes,
                          "library_bytes": self.meta.get("library_bytes"), "backend": self.backend,
                          "fingerprint": self.meta["fingerprint"], "model": self.meta.get("model"),
                          "max_query_tokens": self.encoder.max_words - 2, "format": self.meta.get("format")}
        return dict(self._info)

    # ------------------------------------------------------------------ search
    def encode_query(self, text: str) -> np.ndarray:
        """float32 [D], L2-normalised."""
        return self.encoder.encode_texts([check_query(text)])[0]

    def encode_query_used(self, text: str):
        """(float32 [D] L2-normalised, ``TextUse``: how much of it the model read)."""
        emb, used = self.encoder.encode_texts([check_query(text)], return_used=True)
        return emb[0], used[0]

    def search(self, text: str, k: int = 10) -> List[Hit]:
        """The ``k`` videos most similar to ``text``, best first."""
        return self.search_full(text, k).hits

    def search_full(self, text: str, k: int = 10) -> SearchResult:
        """``search`` plus how much of the query was used (long queries are cut by the model)."""
        emb, used = self.encode_query_used(text)
        return SearchResult(self.search_embedding(emb, k), used)

    def search_embedding(self, query: np.ndarray, k: int = 10) -> List[Hit]:
        """Rank by a query embedding float32 [D] (normalised)."""
        return [self._hit(i + 1, int(self._row_ids[r]), s, query) for i, (s, r) in enumerate(self.rank(query, k))]

    def rank(self, query: np.ndarray, k: int = 10) -> List[tuple]:
        """(score, row) of the ``k`` best videos, best first, equal scores by row: no hit details."""
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.num_videos == 0:
            return []
        query = np.asarray(query, dtype=np.float32)
        if query.shape != (self._video_emb.shape[1],):
            raise ValueError(f"query embedding has shape {query.shape}; expected ({self._video_emb.shape[1]},)")
        if self._faiss is not None:
            from .ann import faiss_candidates
            rows = np.unique(faiss_candidates(self._faiss, query, k))
            sims = np.asarray(self._video_emb[rows], dtype=np.float32) @ query  # exact float32 re-ranking
            return _top(sims, rows, k, self._row_ids)
        return _top((self._video_t @ torch.from_numpy(query)).numpy(), None, k, self._row_ids)

    def _hit(self, rank: int, vid: int, score: float, query: np.ndarray) -> Hit:
        row = self._query("SELECT relpath, duration, frame_start, frame_count, frame_times, size, mtime_ns, media "
                          "FROM videos WHERE id = ?", (vid,))[0]
        frames = np.asarray(self._frame_emb[row["frame_start"]:row["frame_start"] + row["frame_count"]],
                            dtype=np.float32)
        sims = frames @ query
        times = json.loads(row["frame_times"])
        _, _, start, end = best_segment(sims, times, row["duration"])
        best = int(np.argmax(sims))
        return Hit(rank=rank, id=vid, path=row["relpath"], score=float(score), moment=float(times[best]),
                   moment_score=float(sims[best]), start=start, end=end, duration=float(row["duration"]),
                   available=self.media_path(vid) is not None, captions=self.captions(vid, limit=1),
                   version=content_version(row["size"], row["mtime_ns"], row["media"]))

    def frame_scores(self, vid: int, text: str) -> List[Dict[str, float]]:
        """Every indexed frame of video ``vid`` with its similarity to ``text`` (time order)."""
        return self.frame_scores_embedding(vid, self.encode_query(text))

    def frame_scores_embedding(self, vid: int, query: np.ndarray) -> List[Dict[str, float]]:
        rec = self.video(vid)
        if rec is None:
            return []
        row = self._query("SELECT frame_start, frame_count FROM videos WHERE id = ?", (int(vid),))[0]
        frames = np.asarray(self._frame_emb[row[0]:row[0] + row[1]], dtype=np.float32)
        sims = frames @ np.asarray(query, dtype=np.float32)
        return [{"time": t, "score": float(s)} for t, s in zip(rec.frame_times, sims)]

    def caption_search(self, text: str, k: int = 10) -> List[CaptionHit]:
        """Videos whose stored captions match the words of ``text`` (FTS5 BM25; best caption per
        video). Empty when the index holds no captions or the query has no words."""
        match = fts_query(check_query(text))
        if not self.has_captions or match is None:
            return []
        rows = self._query(
            """SELECT video_id, caption, s FROM (
                   SELECT video_id, caption, s,
                          ROW_NUMBER() OVER (PARTITION BY video_id ORDER BY s) AS n
                   FROM (SELECT video_id, caption, bm25(captions_fts) AS s
                         FROM captions_fts WHERE captions_fts MATCH ?))
               WHERE n = 1 ORDER BY s, video_id LIMIT ?""", (match, int(k)))
        hits = []
        for i, (vid, caption, s) in enumerate(rows):
            rec = self._query("SELECT relpath FROM videos WHERE id = ?", (vid,))
            hits.append(CaptionHit(rank=i + 1, id=int(vid), path=rec[0][0] if rec else "", caption=caption,
                                   score=round(-float(s), 6), available=self.media_path(int(vid)) is not None))
        return hits

    # ------------------------------------------------------------------ videos
    def id_of(self, relpath: str) -> Optional[int]:
        """The id of the video at ``relpath`` (relative to the library), or None."""
        rows = self._query("SELECT id FROM videos WHERE relpath = ?", (str(relpath),))
        return int(rows[0][0]) if rows else None

    def video(self, vid: int) -> Optional[VideoRecord]:
        """The video with id ``vid``, or None (also for any int that cannot be an id)."""
        if not _valid_id(vid):
            return None
        rows = self._query("SELECT id, relpath, duration, fps, width, height, frame_times, media, notes, size, "
                           "mtime_ns FROM videos WHERE id = ?", (int(vid),))
        if not rows:
            return None
        r = rows[0]
        return VideoRecord(id=r["id"], path=r["relpath"], duration=r["duration"], fps=r["fps"], width=r["width"],
                           height=r["height"], frame_times=json.loads(r["frame_times"]), media=r["media"],
                           notes=r["notes"], captions=self.captions(vid),
                           version=content_version(r["size"], r["mtime_ns"], r["media"]))

    def captions(self, vid: int, limit: int = 50) -> List[str]:
        if not _valid_id(vid):
            return []
        return [r[0] for r in self._query("SELECT caption FROM captions WHERE video_id = ? ORDER BY rowid LIMIT ?",
                                          (int(vid), limit))]

    def example_captions(self, n: int = 3) -> List[str]:
        """A few stored captions (first ones of evenly spaced videos) for the empty-query page."""
        rows = self._query("SELECT caption FROM captions GROUP BY video_id ORDER BY video_id LIMIT 200")
        if not rows:
            return []
        step = max(len(rows) // n, 1)
        return [rows[i][0] for i in range(0, len(rows), step)][:n]

    def media_path(self, vid: int) -> Optional[Path]:
        """The file the web page plays for video ``vid``: its playback copy in the index, or the
        original inside the library; None when the video is unknown, its library file has
        disappeared (a deleted video is not played from its copy), it cannot be played, or a
        link leads outside the library. Paths come from the index only, never from a request."""
        original = self.original_path(vid)
        if original is None:
            return None
        media = self._query("SELECT media FROM videos WHERE id = ?", (int(vid),))[0][0]
        if media == "proxy":
            return proxy_file(self.version, vid)
        return original if media == "original" else None

    def original_path(self, vid: int) -> Optional[Path]:
        """The library file of video ``vid``; None when unknown, disappeared, or outside the library."""
        if not _valid_id(vid):
            return None
        rows = self._query("SELECT relpath FROM videos WHERE id = ?", (int(vid),))
        if not rows:
            return None
        relpath = rows[0][0]
        # Only what the indexer could have indexed: a video file under the library (the index
        # names both, so a changed index must not make the server hand out other files).
        if not plain_relative(relpath) or not relpath.lower().endswith(VIDEO_EXTENSIONS):
            return None
        p = (self.library / relpath).resolve()
        return p if p.is_relative_to(self.library) and p.is_file() else None

    def thumb_path(self, vid: int) -> Optional[Path]:
        """The thumbnail of video ``vid``: a regular file in the version's ``thumbs/`` (never a
        symbolic link), or None."""
        if not _valid_id(vid):
            return None
        return thumb_file(self.version, vid)


def _valid_id(vid) -> bool:
    try:
        return 0 <= int(vid) <= MAX_ID
    except (TypeError, ValueError, OverflowError):
        return False


def _top(sims: np.ndarray, rows: Optional[np.ndarray], k: int, row_ids: np.ndarray) -> List[tuple]:
    """(score, row) of the k highest ``sims`` (over ``rows``, or all rows when None), best first,
    equal scores by row; rows without a video (-1 in ``row_ids``) are left out."""
    if rows is None:
        rows = np.arange(len(sims))
    keep = row_ids[rows] >= 0
    sims, rows = sims[keep], rows[keep]
    k = min(k, len(sims))
    if k == 0:
        return []
    if k < len(sims):
        kth = float(torch.topk(torch.from_numpy(sims), k, sorted=False).values.min())
        sel = sims >= kth  # every row tied with the k-th best, so that ties are broken by row below
        sims, rows = sims[sel], rows[sel]
    order = np.lexsort((rows, -sims))[:k]
    return [(float(sims[i]), int(rows[i])) for i in order]
