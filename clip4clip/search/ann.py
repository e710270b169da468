"""Optional FAISS backend for large libraries (``pip install faiss-cpu`` or the ``search`` extra).

Inner product on L2-normalised embeddings is the cosine similarity that evaluation ranks by.
Below ``IVF_MIN_VIDEOS`` the index is ``IndexFlatIP`` (exact, like the default backend); above,
``IndexIVFFlat`` (approximate: only ``nprobe`` of ``nlist`` clusters are scanned per query;
see benchmarks/README.md for its recall@10 against exact search).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

#: Libraries smaller than this get an exact flat index: a scan of 50k x 512 takes milliseconds.
IVF_MIN_VIDEOS = 50_000
#: Default clusters scanned per query in IVF indexes.
DEFAULT_NPROBE = 32


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


def build_faiss_index(emb: np.ndarray, nlist: Optional[int] = None, train_size: int = 100_000,
                      seed: int = 0):
    """Index rows of float32 ``emb`` [N, D] (L2-normalised) for inner-product search.

    nlist: IVF clusters (default: the power of two nearest sqrt(N)); None and N below
    ``IVF_MIN_VIDEOS`` give an exact ``IndexFlatIP``. IVF centroids are trained on at most
    ``train_size`` random rows (k-means cost grows with it; FAISS wants >= 39 per cluster)."""
    faiss = require_faiss()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    if nlist is None and n < IVF_MIN_VIDEOS:
        index = faiss.IndexFlatIP(d)
        index.add(emb)
        return index
    nlist = nlist or 2 ** round(math.log2(max(math.sqrt(n), 1)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rows = np.random.default_rng(seed).choice(n, size=min(n, max(train_size, 39 * nlist)), replace=False)
    index.train(emb[np.sort(rows)])
    index.add(emb)
    index.nprobe = min(DEFAULT_NPROBE, nlist)
    return index


def save_faiss_index(index, path: Path) -> None:
    require_faiss().write_index(index, str(path))


def load_faiss_index(path: Path):
    return require_faiss().read_index(str(path))


def faiss_search(index, queries: np.ndarray, k: int, nprobe: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """float32 [Q, D] -> (scores [Q, k], rows [Q, k]); rows are -1 where fewer than k exist."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
