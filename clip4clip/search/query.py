"""Searching an index: ``SearchIndex.open(path).search("a man is cooking", k=10)``.

Videos are ranked by the cosine similarity of the query's text embedding and each video
embedding: the similarity evaluation ranks by (``CLIP4Clip.similarity`` scales it by a positive
constant, which changes no rank). Each hit also carries its best moment: the timestamp of the
indexed frame whose embedding is most similar to the query.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import store
from .encoder import Encoder

BACKENDS = ("exact", "faiss")
#: Longest query accepted (characters); longer ones are refused, never silently cut.
MAX_QUERY_CHARS = 500
#: Words of a query used for caption matching (FTS5 cost grows with the number of terms).
MAX_CAPTION_TERMS = 32


@dataclass
class Hit:
    """One search result. id: the video's id in the index (stable across re-indexing); path:
    relative to the library; score: cosine similarity in [-1, 1]; moment: seconds from the
    start of the best-matching frame; moment_score: that frame's cosine similarity; duration:
    seconds; available: the file is still there to play; captions: its first stored dataset
    caption, if the library is a known dataset."""

    rank: int
    id: int
    path: str
    score: float
    moment: float
    moment_score: float
    duration: float
    available: bool
    captions: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


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
    """

    def __init__(self, path: Path, version: Path, meta: Dict[str, Any], encoder: Encoder,
                 backend: str = "exact", library: Optional[Path] = None):
        if backend not in BACKENDS:
            raise ValueError(f"--backend {backend!r}; expected one of {BACKENDS}")
        self.path, self.version, self.meta, self.encoder, self.backend = path, version, meta, encoder, backend
        self.library = Path(library or meta["library"]).expanduser().resolve()
        self._lock = threading.Lock()
        self._db = store.open_db(version)
        # Whole matrix in memory as float16: half of float32's bytes to stream per query, and
        # torch's float16 matrix-vector product on CPU is as accurate (float32 accumulation).
        self._video_emb = torch.from_numpy(np.load(version / "video_emb.npy"))
        self._frame_emb = np.load(version / "frame_emb.npy", mmap_mode="r")
        self._row_ids = self._row_to_id()
        self._faiss = None
        if backend == "faiss":
            from .ann import load_faiss_index
            fpath = version / "videos.faiss"
            if not fpath.is_file():
                raise ValueError(f"{path} has no FAISS index; rebuild it with 'index ... --faiss'")
            self._faiss = load_faiss_index(fpath)
        self.has_captions = bool(self._query("SELECT 1 FROM captions LIMIT 1"))

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, checkpoint: Optional[str] = None, backend: str = "exact", device: str = "cpu",
             library: Optional[str] = None, encoder: Optional[Encoder] = None) -> "SearchIndex":
        """Open the live version of the index at ``path``. The query encoder is loaded from
        ``checkpoint`` (default: the one the index records) and must have the index's
        fingerprint; ``library`` overrides where the videos are (a moved library)."""
        path = Path(path).expanduser().resolve()
        version = store.require_version(path)
        with store.open_db(version) as db:
            meta = store.read_meta(db)
        db.close()
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
        with store.open_db(version) as db:
            meta = store.read_meta(db)
        db.close()
        if meta["fingerprint"] != self.encoder.fingerprint:
            return self  # re-indexed with another model (--rebuild): keep serving what we have
        return SearchIndex(self.path, version, meta, self.encoder, self.backend, self.library)

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

    # ------------------------------------------------------------------ search
    def encode_query(self, text: str) -> np.ndarray:
        """float32 [D], L2-normalised."""
        return self.encoder.encode_texts([check_query(text)])[0]

    def search(self, text: str, k: int = 10) -> List[Hit]:
        """The ``k`` videos most similar to ``text``, best first."""
        return self.search_embedding(self.encode_query(text), k)

    def search_embedding(self, query: np.ndarray, k: int = 10) -> List[Hit]:
        """Rank by a query embedding float32 [D] (normalised)."""
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.num_videos == 0:
            return []
        query = np.asarray(query, dtype=np.float32)
        if query.shape != (self._video_emb.shape[1],):
            raise ValueError(f"query embedding has shape {query.shape}; expected ({self._video_emb.shape[1]},)")
        if self._faiss is not None:
            from .ann import faiss_search
            scores, rows = faiss_search(self._faiss, query[None], min(k, len(self._row_ids)))
            pairs = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0]
        else:
            sims = self._video_emb @ torch.from_numpy(query).to(self._video_emb.dtype)
            top = torch.topk(sims.float(), min(k, len(sims)))
            pairs = [(float(s), int(r)) for s, r in zip(top.values, top.indices)]
        pairs = [(s, r) for s, r in pairs if self._row_ids[r] >= 0]
        return [self._hit(i + 1, int(self._row_ids[r]), s, query) for i, (s, r) in enumerate(pairs)]

    def _hit(self, rank: int, vid: int, score: float, query: np.ndarray) -> Hit:
        row = self._query("SELECT relpath, duration, frame_start, frame_count, frame_times FROM videos WHERE id = ?",
                          (vid,))[0]
        frames = np.asarray(self._frame_emb[row["frame_start"]:row["frame_start"] + row["frame_count"]],
                            dtype=np.float32)
        sims = frames @ query
        best = int(np.argmax(sims))
        times = json.loads(row["frame_times"])
        return Hit(rank=rank, id=vid, path=row["relpath"], score=round(score, 6), moment=float(times[best]),
                   moment_score=round(float(sims[best]), 6), duration=float(row["duration"]),
                   available=self.media_path(vid) is not None, captions=self.captions(vid, limit=1))

    def frame_scores(self, vid: int, text: str) -> List[Dict[str, float]]:
        """Every indexed frame of video ``vid`` with its similarity to ``text`` (time order)."""
        rec = self.video(vid)
        if rec is None:
            return []
        row = self._query("SELECT frame_start, frame_count FROM videos WHERE id = ?", (vid,))[0]
        frames = np.asarray(self._frame_emb[row[0]:row[0] + row[1]], dtype=np.float32)
        sims = frames @ self.encode_query(text)
        return [{"time": t, "score": round(float(s), 6)} for t, s in zip(rec.frame_times, sims)]

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
               WHERE n = 1 ORDER BY s LIMIT ?""", (match, int(k)))
        hits = []
        for i, (vid, caption, s) in enumerate(rows):
            rec = self._query("SELECT relpath FROM videos WHERE id = ?", (vid,))
            hits.append(CaptionHit(rank=i + 1, id=int(vid), path=rec[0][0] if rec else "", caption=caption,
                                   score=round(-float(s), 6), available=self.media_path(int(vid)) is not None))
        return hits

    # ------------------------------------------------------------------ videos
    def video(self, vid: int) -> Optional[VideoRecord]:
        rows = self._query("SELECT id, relpath, duration, fps, width, height, frame_times, media, notes "
                           "FROM videos WHERE id = ?", (int(vid),))
        if not rows:
            return None
        r = rows[0]
        return VideoRecord(id=r["id"], path=r["relpath"], duration=r["duration"], fps=r["fps"], width=r["width"],
                           height=r["height"], frame_times=json.loads(r["frame_times"]), media=r["media"],
                           notes=r["notes"], captions=self.captions(vid))

    def captions(self, vid: int, limit: int = 50) -> List[str]:
        return [r[0] for r in self._query("SELECT caption FROM captions WHERE video_id = ? LIMIT ?", (int(vid), limit))]

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
            p = self.version / "media" / f"{int(vid)}.webm"
            return p if p.is_file() else None
        return original if media == "original" else None

    def original_path(self, vid: int) -> Optional[Path]:
        """The library file of video ``vid``; None when unknown, disappeared, or outside the library."""
        rows = self._query("SELECT relpath FROM videos WHERE id = ?", (int(vid),))
        if not rows:
            return None
        p = (self.library / rows[0][0]).resolve()
        return p if p.is_relative_to(self.library) and p.is_file() else None

    def thumb_path(self, vid: int) -> Optional[Path]:
        p = self.version / "thumbs" / f"{int(vid)}.jpg"
        return p if p.is_file() else None
