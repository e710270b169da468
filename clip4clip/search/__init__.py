"""Text-to-video search over a video library: index it, query it, browse it.

    python -m clip4clip.search index --videos DIR --checkpoint CKPT --out INDEX
    python -m clip4clip.search search --index INDEX "a man is cooking" -k 10
    python -m clip4clip.search serve --index INDEX

Python: ``SearchIndex.open(INDEX).search("a man is cooking", k=10)`` -> ``Hit`` list (path,
score, best-moment timestamp). See ``indexer`` (building), ``query`` (searching), ``web`` (page).
"""
from .encoder import Encoder, Sampling
from .indexer import IndexMismatchError, IndexReport, build_index
from .query import CaptionHit, Hit, SearchIndex

__all__ = ["CaptionHit", "Encoder", "Hit", "IndexMismatchError", "IndexReport", "Sampling", "SearchIndex",
           "build_index"]
