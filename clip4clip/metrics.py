"""Retrieval metrics for text-to-video evaluation (R@K, median and mean rank).

All functions take a similarity matrix as a numpy array or a torch tensor (any
device, any float or int dtype) and return plain Python numbers. Similarities
are compared in their own dtype, never rounded, so ties in the input stay ties.

Layouts
-------
* Square ``sim [N texts, N videos]``, ground truth on the diagonal
  (:func:`retrieval_metrics`); rows are text queries, so t2v ranks rows and
  v2t ranks the transpose.
* General multi-caption ``sim [T texts, V videos]`` plus
  ``text_video_index [T]`` (:func:`retrieval_metrics_multi`).
* The official CLIP4Clip MSVD layout ``sim [V, C, V]`` with padding rows for
  videos that have fewer than C captions (:func:`multi_sentence_metrics`).

Rank conventions
----------------
Ranks are 1-based: rank 1 means the correct item scored highest.

Tie rule (pessimistic): the rank of the ground truth is the number of items
that score ``>=`` it, i.e. every item tied with the ground truth is counted as
ranked before it. A degenerate model that outputs a constant therefore gets the
worst rank N for every query instead of R@1 = 100%. Without ties this is exactly
the rank the official ``compute_metrics`` computes. (The official code, which
finds the ground-truth value in a sorted row, adds one entry per tied position,
so its numbers are not well defined with ties.)

When a query has several correct items (v2t with several captions per video),
its rank is that of the best-ranked correct item ("any correct caption"):
``1 + #(wrong items scoring >= the best correct score)``. Correct items tied
with each other do not push each other down.

Values: NaN anywhere in the similarities is an error (it has no order); +inf and
-inf are ordinary values, except that a ground-truth score of -inf means the
query cannot be ranked and is an error (in the [V, C, V] layout such rows are
padding and are dropped).

Median convention
-----------------
``summarize(..., median="mean_of_middle")`` (the default) is ``np.median``: for
an even number of queries the mean of the two middle ranks. This is what the
official ``compute_metrics`` (t2v/v2t) uses. The official multi-sentence
``tensor_text_to_video_metrics`` uses ``torch.median``, which returns the lower
of the two middle values: ``median="lower"`` reproduces it. The two agree
whenever the two middle ranks are equal, which is the case for the reference
golden files (``metrics_golden.json``), so they are reproduced by either.

Memory
------
Ranks are computed by counting ``sim >= gt`` row-chunk by row-chunk
(``chunk_size`` rows at a time, default 1024): O(Q*N) time, O(chunk_size*N)
extra memory, no sort, so 10k x 10k (or larger) matrices are fine. Torch
tensors are copied to host memory one chunk at a time.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

__all__ = [
    "ranks",
    "summarize",
    "retrieval_metrics",
    "retrieval_metrics_multi",
    "format_table",
    "flatten",
]

DEFAULT_CHUNK_SIZE = 1024
MEDIAN_CONVENTIONS = ("mean_of_middle", "lower")
V2T_RULES = ("best_caption", "max_pool")

# How many offending indices an error message lists before "...".
_MAX_LISTED = 10


# ---------------------------------------------------------------------------
# Array helpers (numpy / torch without importing torch unless it is in use)
# ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_matrix(sim: Any, name: str = "sim", ndim: int = 2) -> Any:
    """Return ``sim`` as a numpy array or torch tensor with ``ndim`` dims."""
    if not _is_torch(sim):
        sim = np.asarray(sim)
        if sim.dtype == object or np.iscomplexobj(sim):
            raise TypeError(f"{name} must hold real numbers, got dtype {sim.dtype}")
    elif sim.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {sim.dtype}")
    if sim.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(sim.shape)}"
        )
    return sim


def _to_numpy(block: Any) -> np.ndarray:
    """Host numpy copy/view of a (small) block of a numpy array or tensor."""
    if _is_torch(block):
        block = block.detach()
        # float16/bfloat16 -> float32 is exact, so ties and order are kept;
        # numpy has no bfloat16.
        if block.is_floating_point() and block.element_size() < 4:
            block = block.float()
        return block.cpu().numpy()
    return np.asarray(block)


def _row_chunks(sim: Any, chunk_size: int):
    """Yield ``(start, numpy block of rows start:start+chunk_size)``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, sim.shape[0], chunk_size):
        yield start, _to_numpy(sim[start : start + chunk_size])


def _count_nan(sim: Any, chunk_size: int) -> int:
    total = 0
    for _, block in _row_chunks(sim, chunk_size):
        if np.issubdtype(block.dtype, np.floating):
            total += int(np.count_nonzero(np.isnan(block)))
    return total


def _check_no_nan(sim: Any, chunk_size: int, name: str = "sim") -> None:
    n_nan = _count_nan(sim, chunk_size)
    if n_nan:
        raise ValueError(
            f"{name} contains {n_nan} NaN value(s) (shape {tuple(sim.shape)}); "
            "similarities must be comparable numbers (+/-inf are allowed)"
        )


def _gather(sim: Any, cols: np.ndarray) -> np.ndarray:
    """``sim[i, cols[i]]`` for every row i, as numpy."""
    rows = np.arange(sim.shape[0])
    if _is_torch(sim):
        torch = sys.modules["torch"]
        r = torch.as_tensor(rows, device=sim.device)
        c = torch.as_tensor(cols, device=sim.device)
        return _to_numpy(sim[r, c])
    return np.asarray(sim[rows, cols])


def _list(idx: np.ndarray) -> str:
    idx = [int(i) for i in np.asarray(idx).ravel()]
    shown = ", ".join(str(i) for i in idx[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(idx) > _MAX_LISTED else ''}]"


def _check_index(index: Any, length: int, upper: int, what: str) -> np.ndarray:
    """Validate an integer index vector of ``length`` entries in [0, upper)."""
    if _is_torch(index):
        index = index.detach().cpu().numpy()
    index = np.asarray(index)
    if index.shape != (length,):
        raise ValueError(f"{what} must have shape ({length},), got {index.shape}")
    if length and not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"{what} must hold integers, got dtype {index.dtype}")
    index = index.astype(np.int64, copy=False)
    bad = np.flatnonzero((index < 0) | (index >= upper))
    if bad.size:
        raise ValueError(
            f"{what} must lie in [0, {upper}); entries at positions {_list(bad)} "
            f"are {_list(index[bad])}"
        )
    return index


def _check_gt_not_neg_inf(gt: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(np.isneginf(gt)) if np.issubdtype(gt.dtype, np.floating) else []
    if len(bad):
        raise ValueError(
            f"the ground-truth score is -inf for {len(bad)} {what}(s) {_list(bad)}; "
            "such a query cannot be ranked (in the [V, C, V] layout use "
            "multi_sentence_metrics, which drops padding rows)"
        )


# ---------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------


def ranks(
    sim: Any, gt_index: Any = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """1-based rank of the ground-truth item for each query (pessimistic ties).

    Args:
        sim: [Q queries, N items] similarities (numpy or torch), higher = better.
        gt_index: [Q] int, column of each query's ground truth. ``None`` means
            the diagonal and requires Q == N.
        chunk_size: rows processed at once (memory is O(chunk_size * N)).

    Returns:
        np.ndarray [Q] int64, ``rank[q] = #{j : sim[q, j] >= sim[q, gt[q]]}``.

    Raises:
        ValueError: NaN in ``sim``, Q != N without ``gt_index``, ``gt_index`` of
            the wrong shape/range, or a ground-truth score of -inf.
    """
    sim = _as_matrix(sim)
    q, n = sim.shape
    if gt_index is None:
        if q != n:
            raise ValueError(
                f"sim has shape {tuple(sim.shape)}; the default ground truth is the "
                "diagonal, which needs a square [N, N] matrix (pass gt_index for "
                "[Q, N])"
            )
        gt_index = np.arange(q)
    gt_index = _check_index(gt_index, q, n, "gt_index")
    _check_no_nan(sim, chunk_size)

    gt = _gather(sim, gt_index)
    _check_gt_not_neg_inf(gt, "query")

    out = np.empty(q, dtype=np.int64)
    for start, block in _row_chunks(sim, chunk_size):
        g = gt[start : start + block.shape[0], None]
        # Counting ">=" (no sort) is the pessimistic tie rule and O(N) per row.
        out[start : start + block.shape[0]] = np.count_nonzero(block >= g, axis=1)
    return out


def _best_caption_video_ranks(
    sim: Any, text_video_index: np.ndarray, chunk_size: int
) -> np.ndarray:
    """v2t ranks with several captions per video ("any correct caption").

    Args:
        sim: [T texts, V videos], NaN-free (checked by the caller).
        text_video_index: [T] int64 in [0, V), every video present.

    Returns:
        [V] int64, ``1 + #(texts of other videos scoring >= the best own
        caption's score)`` for each video (a column of ``sim``).
    """
    v = sim.shape[1]
    own = _gather(sim, text_video_index)  # [T] score of each text on its video
    best = np.full(v, -np.inf, dtype=np.float64)
    # float64 holds float16/32 exactly and ints up to 2**53, so no ties are made.
    np.maximum.at(best, text_video_index, own.astype(np.float64))
    bad = np.flatnonzero(np.isneginf(best))
    if bad.size:
        raise ValueError(
            f"the best ground-truth caption score is -inf for {bad.size} video(s) "
            f"{_list(bad)}; such a query cannot be ranked"
        )
    # Count every text (own captions included) scoring >= the best own score,
    # column by column, accumulated over row chunks so sim is never transposed.
    count_ge = np.zeros(v, dtype=np.int64)
    for _, block in _row_chunks(sim, chunk_size):
        count_ge += np.count_nonzero(block >= best[None, :], axis=0)
    # Own captions tied with the best one are correct answers too: remove them
    # so that only wrong captions can push the video down.
    own_ge = np.bincount(
        text_video_index[own >= best[text_video_index]], minlength=v
    ).astype(np.int64)
    return 1 + count_ge - own_ge


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def summarize(rank: Any, *, median: str = "mean_of_middle") -> dict[str, float]:
    """Summary statistics of 1-based ranks.

    Args:
        rank: [Q] 1-based ranks (e.g. from :func:`ranks`).
        median: ``"mean_of_middle"`` (default, ``np.median``, as in the official
            ``compute_metrics``) or ``"lower"`` (lower middle value for an even
            count, ``torch.median``, as in the official multi-sentence
            ``tensor_text_to_video_metrics``).

    Returns:
        ``{"R1", "R5", "R10"}`` in percent, ``"MdR"`` median rank, ``"MnR"``
        mean rank, ``"std"`` population std of the ranks (official
        ``Std_Rank``), ``"num_queries"`` (int). All plain Python numbers.
    """
    if median not in MEDIAN_CONVENTIONS:
        raise ValueError(f"median must be one of {MEDIAN_CONVENTIONS}, got {median!r}")
    if _is_torch(rank):
        rank = rank.detach().cpu().numpy()
    r = np.asarray(rank).ravel()
    if r.size == 0:
        raise ValueError("cannot summarize an empty set of ranks (0 queries)")
    if not np.issubdtype(r.dtype, np.integer) and not np.all(r == np.round(r)):
        raise ValueError(f"ranks must be integers, got dtype {r.dtype} with fractions")
    if r.min() < 1:
        raise ValueError(f"ranks must be 1-based (>= 1), got minimum {r.min()}")
    n = r.size
    if median == "lower":
        md = float(np.sort(r)[(n - 1) // 2])
    else:
        md = float(np.median(r))
    # count * 100 / n: the same operation order as the official code, so the
    # float results match it bit for bit.
    return {
        "R1": float(np.count_nonzero(r <= 1)) * 100 / n,
        "R5": float(np.count_nonzero(r <= 5)) * 100 / n,
        "R10": float(np.count_nonzero(r <= 10)) * 100 / n,
        "MdR": md,
        "MnR": float(np.mean(r.astype(np.float64))),
        "std": float(np.std(r.astype(np.float64))),
        "num_queries": int(n),
    }


def retrieval_metrics(
    sim: Any,
    *,
    median: str = "mean_of_middle",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, dict[str, float]]:
    """t2v and v2t metrics for a square text-by-video matrix.

    Args:
        sim: [N texts, N videos]; text i matches video i.
        median: see :func:`summarize`.
        chunk_size: see :func:`ranks`.

    Returns:
        ``{"t2v": summary of row ranks, "v2t": summary of column ranks}``.
    """
    sim = _as_matrix(sim)
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"sim must be square [N texts, N videos], got shape {tuple(sim.shape)}; "
            "use retrieval_metrics_multi for several captions per video"
        )
    return {
        "t2v": summarize(ranks(sim, chunk_size=chunk_size), median=median),
        "v2t": summarize(ranks(sim.T, chunk_size=chunk_size), median=median),
    }


def retrieval_metrics_multi(
    sim: Any,
    text_video_index: Any,
    *,
    median: str = "mean_of_middle",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, dict[str, float]]:
    """t2v and v2t metrics with several captions per video.

    t2v: every text is a query ranked against all videos (gt = its video).
    v2t: every video is a query ranked against all texts; its rank is that of
    its best-ranked caption ("any correct caption"), i.e. ``1 + #(captions of
    other videos scoring >= its best caption)``.

    Args:
        sim: [T texts, V videos].
        text_video_index: [T] int, the video each text describes. Every video
            must have at least one caption.
        median: see :func:`summarize`.
        chunk_size: see :func:`ranks`.

    Returns:
        ``{"t2v": summary over T texts, "v2t": summary over V videos}``.
    """
    sim = _as_matrix(sim)
    t, v = sim.shape
    idx = _check_index(text_video_index, t, v, "text_video_index")
    missing = np.flatnonzero(np.bincount(idx, minlength=v) == 0)
    if missing.size:
        raise ValueError(
            f"{missing.size} video(s) have no caption in text_video_index: "
            f"{_list(missing)}; every video needs at least one"
        )
    t2v = ranks(sim, idx, chunk_size=chunk_size)  # also checks NaN / -inf gt
    v2t = _best_caption_video_ranks(sim, idx, chunk_size)
    return {
        "t2v": summarize(t2v, median=median),
        "v2t": summarize(v2t, median=median),
    }


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

_TABLE_COLUMNS = (("R@1", "R1"), ("R@5", "R5"), ("R@10", "R10"), ("MdR", "MdR"), ("MnR", "MnR"))


def format_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Fixed-width text table, one row per direction, one decimal.

    Args:
        metrics: ``{"t2v": summary, "v2t": summary}`` as returned by
            :func:`retrieval_metrics` (any directions; t2v and v2t first).

    Returns:
        e.g.::

                   R@1    R@5   R@10    MdR    MnR
            t2v   44.5   71.4   81.6    2.0   15.3
            v2t   42.7   70.9   80.6    2.0   11.6
    """
    order = [k for k in ("t2v", "v2t") if k in metrics]
    order += [k for k in metrics if k not in order and isinstance(metrics[k], Mapping)]
    if not order:
        raise ValueError(
            f"metrics has no direction to print (expected keys 't2v'/'v2t'), "
            f"got keys {list(metrics)}"
        )
    name_w = max(5, max(len(k) for k in order) + 1)
    header = " " * name_w + "".join(f"{col:>7}" for col, _ in _TABLE_COLUMNS)
    lines = [header]
    for direction in order:
        row = metrics[direction]
        missing = [key for _, key in _TABLE_COLUMNS if key not in row]
        if missing:
            raise KeyError(f"metrics[{direction!r}] lacks {missing}")
        lines.append(
            f"{direction:<{name_w}}"
            + "".join(f"{float(row[key]):>7.1f}" for _, key in _TABLE_COLUMNS)
        )
    return "\n".join(lines)


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics into ``{"t2v/R1": 44.5, ...}`` for loggers.

    Args:
        metrics: nested mapping with numeric leaves.
        prefix: prepended to every key, joined with "/" (``"val"`` gives
            ``"val/t2v/R1"``; a trailing "/" is not doubled).

    Returns:
        Flat ``dict[str, float]``.
    """
    out: dict[str, float] = {}
    base = prefix.rstrip("/")
    for key, value in metrics.items():
        name = f"{base}/{key}" if base else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            # Numbers, numpy scalars and one-element tensors; bools and strings
            # are almost certainly a mistake in a metrics dict.
            if isinstance(value, (bool, np.bool_, str, bytes)):
                raise TypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__}"
                )
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__}"
                ) from None
    return out
