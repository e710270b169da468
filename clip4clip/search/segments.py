"""Best segment of a hit, from its per-frame scores, and segment metrics (IoU).

The index scores each moment frame of a video against the query (cosine similarity of the
frame's image-tower feature and the text embedding). The best segment is the **contiguous run
of frames around the best frame whose scores are within ``SEGMENT_DROP`` (10 %) of the best
score** (``score >= best - SEGMENT_DROP * |best|``): it grows left and right from the best frame
and stops at the first frame below that threshold. Each moment frame stands for the time from
it to the next moment frame (the last one: to the end of the video), so the segment is
``[time of its first frame, time of the frame after its last one)``.

``segment_metrics`` scores predicted segments against ground-truth (start, end) spans, as
moment-retrieval benchmarks (DiDeMo, Charades-STA) do: the rate of queries whose segment has an
IoU >= 0.5 with the ground truth, and the mean IoU.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np

#: A frame belongs to the best segment when its score is within this fraction of the best one.
SEGMENT_DROP = 0.10

Span = Tuple[float, float]


def best_segment(scores: Sequence[float], times: Sequence[float], duration: float,
                 drop: float = SEGMENT_DROP) -> Tuple[int, int, float, float]:
    """(first frame, last frame, start s, end s) of the best segment (see the module docstring).

    scores [T] and times [T] (seconds, increasing) of the moment frames; duration: of the video
    in seconds (the last frame's segment ends there). Ties for the best frame go to the earlier."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or len(s) != len(t):
        raise ValueError(f"expected the same number (>= 1) of scores and times, got {s.shape} and {t.shape}")
    b = int(np.argmax(s))
    threshold = s[b] - drop * abs(s[b])
    lo = b
    while lo > 0 and s[lo - 1] >= threshold:
        lo -= 1
    hi = b
    while hi + 1 < len(s) and s[hi + 1] >= threshold:
        hi += 1
    end = float(t[hi + 1]) if hi + 1 < len(t) else max(float(duration), float(t[hi]))
    return lo, hi, float(t[lo]), end


def iou(a: Span, b: Span) -> float:
    """Temporal intersection over union of two (start, end) spans in seconds (0 when disjoint)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def segment_metrics(predicted: Sequence[Span],
                    ground_truth: Sequence[Union[Span, Sequence[Span]]]) -> Dict[str, float]:
    """Score one predicted (start, end) span per query against its ground truth.

    ground_truth: per query one (start, end) span, or several (annotators who disagree, as in
    DiDeMo): a query's IoU is then the best over them. Returns percentages like the retrieval
    metrics: ``R1@IoU0.5`` (queries with IoU >= 0.5), ``R1@IoU0.7``, ``mIoU`` (mean IoU), and
    ``num_queries``."""
    if len(predicted) != len(ground_truth):
        raise ValueError(f"{len(predicted)} predicted segments for {len(ground_truth)} queries")
    if not predicted:
        raise ValueError("no queries to score")
    ious = []
    for p, g in zip(predicted, ground_truth):
        spans = [g] if _is_span(g) else list(g)
        if not spans:
            raise ValueError("a query without a ground-truth span")
        for a, b in [p, *spans]:
            if not (np.isfinite(a) and np.isfinite(b) and b >= a):
                raise ValueError(f"a span must be (start, end) with end >= start, got {(a, b)}")
        ious.append(max(iou(tuple(map(float, p)), tuple(map(float, s))) for s in spans))
    ious = np.asarray(ious)
    return {"R1@IoU0.5": float(100 * np.mean(ious >= 0.5)), "R1@IoU0.7": float(100 * np.mean(ious >= 0.7)),
            "mIoU": float(100 * ious.mean()), "num_queries": len(ious)}


def _is_span(x) -> bool:
    return len(x) == 2 and all(np.isscalar(v) for v in x)
