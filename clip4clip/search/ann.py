"""Optional FAISS backend for large libraries (``pip install faiss-cpu`` or the ``search`` extra).

Inner product on L2-normalised embeddings is the cosine similarity that evaluation ranks by.
Which index, by library size (``build_faiss_index``):

- below ``FLAT_MAX_VIDEOS``: ``IndexFlatIP``, exact (what ``--faiss`` gives a small library);
- from there on: ``IVF<nlist>,SQ8`` (inverted lists over k-means cells, vectors stored as 8-bit
  scalar-quantised codes: a quarter of float32's memory). A query scans ``nprobe`` of the
  ``nlist`` cells and returns ``RERANK_CANDIDATES`` candidates, which ``SearchIndex`` re-ranks
  exactly with the stored float32 embeddings, so the scores and their order among the
  candidates are exactly evaluation's; only a true top-k video that is not among the candidates
  is missed (recall@10 against exact search: benchmarks/README.md, ``search_million.py``).

``SearchIndex`` uses FAISS automatically (backend 'auto') from ``AUTO_FAISS_VIDEOS`` videos on,
when the index has a FAISS file; ``index`` writes one automatically from that size on when
faiss is installed. Below it the exact float32 scan is fast enough and exact.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

#: Libraries from this size on are searched through FAISS when the index has a FAISS file, and
#: ``index`` builds one when faiss-cpu is installed: an exact float32 scan of 100k x 512 takes
#: ~5 ms on 2 cores, and grows linearly (1M: ~60 ms).
AUTO_FAISS_VIDEOS = 100_000
#: Below this an explicitly requested FAISS index is exact (IndexFlatIP); IVF needs enough rows
#: per cell to train on.
FLAT_MAX_VIDEOS = 50_000
#: Kept for callers of the earlier name.
IVF_MIN_VIDEOS = FLAT_MAX_VIDEOS
#: Default cells scanned per query in IVF indexes.
DEFAULT_NPROBE = 16
#: Candidates an approximate index returns per query, re-ranked exactly in float32.
RERANK_CANDIDATES = 100


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def require_faiss():
    """The faiss module, or a clear error saying how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ValueError("the FAISS backend needs the faiss-cpu package: pip install faiss-cpu "
                         "(or pip install -e '.[search]')") from e
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells: the power of two nearest sqrt(N) (1M videos: 1024), at most N / 39. More cells
    make each probe cheaper but training costs grow with their square (k-means over 39 rows per
    cell): at 1M, 1024 cells train in minutes on 2 cores, 4096 would take an hour."""
    nlist = 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1)))
    return int(max(1, min(nlist, n // 39)))


def build_faiss_index(emb: np.ndarray, kind: Optional[str] = None, nlist: Optional[int] = None,
                      train_size: int = 100_000, seed: int = 0, hnsw_m: int = 32, chunk: int = 100_000):
    """Index rows of float32 ``emb`` [N, D] (L2-normalised; a memory map is fine) for
    inner-product search.

    kind: 'flat' (exact), 'ivf_sq8' (IVF + 8-bit codes, the default from ``FLAT_MAX_VIDEOS``),
    'ivf_flat' (IVF, float32 vectors) or 'hnsw' (HNSW graph over float32 vectors, ``hnsw_m``
    links per node: more memory and a slow build, for comparison in the benchmark). None: by
    size. nlist: IVF cells (default ``default_nlist``). IVF centroids are trained on at most
    ``train_size`` random rows (k-means cost grows with it; FAISS wants >= 39 per cell)."""
    faiss = require_faiss()
    n, d = emb.shape
    if kind is None:
        kind = "flat" if n < FLAT_MAX_VIDEOS and nlist is None else "ivf_sq8"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 128
    elif kind in ("ivf_sq8", "ivf_flat"):
        nlist = int(nlist or default_nlist(n))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf_sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rows = np.random.default_rng(seed).choice(n, size=min(n, max(train_size, 39 * nlist)), replace=False)
        index.train(np.ascontiguousarray(emb[np.sort(rows)], dtype=np.float32))
        index.nprobe = min(DEFAULT_NPROBE, nlist)
    else:
        raise ValueError(f"FAISS index kind {kind!r}; expected flat, ivf_sq8, ivf_flat or hnsw")
    for start in range(0, n, chunk):  # bounded memory for memory-mapped float32 rows
        index.add(np.ascontiguousarray(emb[start:start + chunk], dtype=np.float32))
    return index


def save_faiss_index(index, path: Path) -> None:
    require_faiss().write_index(index, str(path))


#: The first four bytes of the FAISS files ``build_faiss_index`` writes (IndexFlatIP,
#: IndexIVFScalarQuantizer, IndexIVFFlat, IndexHNSWFlat).
FAISS_MAGICS = {b"IxFI": "flat", b"IwSq": "ivf_sq8", b"IwFl": "ivf_flat", b"IHNf": "hnsw"}
#: Least bytes a vector of d dimensions takes in each kind: float32 codes, or 8-bit codes, plus
#: an 8-byte id in IVF lists.
_VECTOR_BYTES = {"flat": lambda d: 4 * d, "ivf_sq8": lambda d: d + 8, "ivf_flat": lambda d: 4 * d + 8,
                 "hnsw": lambda d: 4 * d}
#: fourcc, then faiss's index header: d (int32), ntotal (int64), two int64 dummies, is_trained
#: (1 byte), metric (int32).
_HEADER = struct.Struct("<4siqqqBi")
#: Widest embedding a FAISS file may claim (CLIP's largest is 1024).
MAX_DIM = 65536


class FaissFileError(ValueError):
    """A FAISS file that is not one of ours or does not fit the index it belongs to."""


def load_faiss_index(path: Path, dim: Optional[int] = None, count: Optional[int] = None):
    """The FAISS index in ``path``. Its header is checked before faiss reads it (a random or
    truncated file makes faiss raise a RuntimeError with a C++ trace, and a header's counts
    size its allocations): one of the kinds ``build_faiss_index`` writes, over inner product,
    a width in 1..MAX_DIM, and a file large enough for the vectors its header counts.
    ``dim`` / ``count``: the width and number of vectors the caller expects (the index's
    embeddings), compared with the header before faiss reads anything. Raises FaissFileError
    (a ValueError) naming the file."""
    faiss = require_faiss()
    path = Path(path)
    d, ntotal = _check_faiss_header(path)
    for name, want, have in (("dimension", dim, d), ("vector count", count, ntotal)):
        if want is not None and int(want) != have:
            raise FaissFileError(f"{path}: FAISS {name} is {have} but the index has {want}; "
                                 "the file belongs to another build (re-index with --faiss)")
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as e:
        # faiss's message is a C++ location, then "Error: <what failed>".
        why = (str(e).splitlines() or [type(e).__name__])[0].split("Error: ", 1)[-1]
        raise FaissFileError(f"{path}: truncated or damaged FAISS index (faiss: {why[:160]}); "
                             "re-index with --faiss") from None
    if (index.d, index.ntotal) != (d, ntotal):
        raise FaissFileError(f"{path}: FAISS read {index.ntotal} vectors of {index.d} but the header says {ntotal} of "
                             f"{d}; re-index with --faiss")
    return index


def _check_faiss_header(path: Path) -> Tuple[int, int]:
    """(d, ntotal) from the header of the FAISS file ``path``, checked against its size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size or head[:4] not in FAISS_MAGICS:
        what = "too short" if len(head) < _HEADER.size else f"starts with {head[:4]!r}"
        raise FaissFileError(f"{path}: not a FAISS index of ours ({what}; expected one of "
                             f"{sorted(m.decode() for m in FAISS_MAGICS)}); re-index with --faiss")
    magic, d, ntotal, _, _, _, metric = _HEADER.unpack(head)
    if metric != 0:  # faiss.METRIC_INNER_PRODUCT: the cosine ranking of L2-normalised embeddings
        raise FaissFileError(f"{path}: FAISS index with metric {metric}, not inner product; re-index with --faiss")
    if not 1 <= d <= MAX_DIM or ntotal < 0 or _HEADER.size + ntotal * _VECTOR_BYTES[FAISS_MAGICS[magic]](d) > size:
        raise FaissFileError(f"{path}: FAISS header says {ntotal} vectors of {d} dimensions but the file is "
                             f"{size} bytes (truncated or damaged); re-index with --faiss")
    return d, ntotal


def is_exact(index) -> bool:
    """True for an index whose scores are exact (flat, float32)."""
    faiss = require_faiss()
    return isinstance(index, faiss.IndexFlat)


def faiss_search(index, queries: np.ndarray, k: int, nprobe: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """float32 [Q, D] -> (scores [Q, k], rows [Q, k]); rows are -1 where fewer than k exist."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))


def faiss_candidates(index, query: np.ndarray, k: int, candidates: int = RERANK_CANDIDATES,
                     nprobe: Optional[int] = None) -> np.ndarray:
    """Rows (int64) worth re-ranking exactly for one query float32 [D]: the top ``k`` of an
    exact index, the top ``max(k, candidates)`` of an approximate one."""
    want = k if is_exact(index) else max(k, candidates)
    _, rows = faiss_search(index, query[None], min(want, index.ntotal), nprobe)
    rows = rows[0]
    return rows[rows >= 0].astype(np.int64)
