"""Text-to-video search over a video library: index it, query it, browse it.

    python -m clip4clip.search index --videos DIR --checkpoint CKPT --out INDEX [--shard I/N]
    python -m clip4clip.search merge --out INDEX PARTIAL...      # the shards' partial indexes
    python -m clip4clip.search search --index INDEX "a man is cooking" -k 10
    python -m clip4clip.search serve --index INDEX [--threads 4]

Python: ``SearchIndex.open(INDEX).search("a man is cooking", k=10)`` -> ``Hit`` list (path,
score, best moment, best segment). See ``indexer`` (building, merging), ``journal`` (resuming a
killed run), ``query`` (searching), ``segments`` (best segment, IoU metrics), ``ann`` (FAISS for
large libraries), ``web`` (page and API, served by waitress).
"""
from .encoder import Encoder, Sampling, TextUse
from .indexer import IndexMismatchError, IndexReport, build_index, merge_indexes
from .query import CaptionHit, Hit, SearchIndex, SearchResult
from .segments import best_segment, segment_metrics

__all__ = ["CaptionHit", "Encoder", "Hit", "IndexMismatchError", "IndexReport", "Sampling", "SearchIndex",
           "SearchResult", "TextUse", "best_segment", "build_index", "merge_indexes", "segment_metrics"]
