"""Moment localisation of the index: for a sentence and the video it describes, does the hit's
best segment (``segments.best_segment``) overlap the annotated moment?

This scores the segment the search page would play, inside the right video (the ranking of
videos is what retrieval metrics measure). DiDeMo gives the ground truth: ``times`` are
[start, end] indices of 5-second segments, from up to four annotators; a query's IoU is the
best over them (``segments.segment_metrics``).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

from .segments import Span, best_segment, segment_metrics

#: DiDeMo's segment length in seconds (its ``times`` count 5-second segments).
DIDEMO_SEGMENT_S = 5.0


def didemo_spans(times: Sequence[Sequence[int]], duration: float) -> List[Span]:
    """DiDeMo ``times`` ([[start_segment, end_segment], ...], inclusive) -> seconds, clipped to
    the video's duration (the last segment of a video may be shorter than 5 s)."""
    out = []
    for s, e in times:
        start = float(s) * DIDEMO_SEGMENT_S
        end = min(float(e + 1) * DIDEMO_SEGMENT_S, float(duration)) if duration > 0 else float(e + 1) * DIDEMO_SEGMENT_S
        out.append((start, max(start, end)))
    return out


def localise(index, relpath: str, sentence: str) -> Tuple[Span, float]:
    """The best segment (start, end) of ``sentence`` inside the indexed video at ``relpath``,
    and that video's duration."""
    vid = index.id_of(relpath)
    if vid is None:
        raise KeyError(f"{relpath} is not in the index at {index.path}")
    rec = index.video(vid)
    frames = index.frame_scores_embedding(vid, index.encode_query(sentence))
    scores = [f["score"] for f in frames]
    times = [f["time"] for f in frames]
    _, _, start, end = best_segment(scores, times, rec.duration)
    return (start, end), float(rec.duration)


def evaluate_moments(index, items: Iterable[Tuple[str, str, Sequence[Sequence[int]]]]) -> Dict[str, float]:
    """``items``: (relpath of the video in the index, sentence, DiDeMo times). Returns
    ``segment_metrics`` (R1@IoU0.5, R1@IoU0.7, mIoU in percent, num_queries) plus
    ``missing_videos`` (annotated videos absent from the index, skipped and counted)."""
    predicted, truth, missing = [], [], set()
    for relpath, sentence, times in items:
        try:
            span, duration = localise(index, relpath, sentence)
        except KeyError:
            missing.add(relpath)
            continue
        predicted.append(span)
        truth.append(didemo_spans(times, duration))
    out = segment_metrics(predicted, truth)
    out["missing_videos"] = len(missing)
    return out


def didemo_items(dataset) -> List[Tuple[str, str, List[List[int]]]]:
    """(relpath, sentence, times) of every description of a ``data.DiDeMoDataset`` split, with
    the relpath as the index records it when the library is the dataset's video folder."""
    items = []
    for video, moments in dataset.moments.items():
        if video not in dataset.video_order:  # dropped (missing) videos
            continue
        rel = str(dataset.video_path(video).relative_to(dataset.video_dir))
        items.extend((rel, sentence, times) for sentence, times in moments)
    return items


__all__ = ["DIDEMO_SEGMENT_S", "didemo_items", "didemo_spans", "evaluate_moments", "localise"]

