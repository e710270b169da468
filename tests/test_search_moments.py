"""Moment localisation on DiDeMo's annotations: the best segment of each sentence inside its
video, scored against the annotated 5-second segments (IoU)."""
import pytest

from benchmark_layouts import DIDEMO, write_didemo
from clip4clip.search import SearchIndex
from clip4clip.search.moments import didemo_items, didemo_spans, evaluate_moments, localise
from clip4clip.search.segments import segment_metrics
from data import DiDeMoDataset
from search_utils import base, built_index, run  # noqa: F401  (fixtures)


def test_didemo_times_are_5_second_segments_clipped_to_the_video():
    assert didemo_spans([[0, 0], [1, 2]], 30.0) == [(0.0, 5.0), (5.0, 15.0)]
    assert didemo_spans([[5, 5]], 27.5) == [(25.0, 27.5)]  # the last segment is shorter


def test_moments_of_the_didemo_test_split_are_scored_against_their_annotations(tmp_path, base, run):  # noqa: F811
    root = write_didemo(tmp_path / "didemo")
    ds = DiDeMoDataset(root, "test", image_size=32, max_frames=4, progress=False)
    index_dir = built_index("didemo-test", root / "videos", run["checkpoint"], base, proxies="off")
    index = SearchIndex.open(index_dir)
    items = didemo_items(ds)
    assert len(items) == 4 * len(DIDEMO["test"])  # four descriptions per video, each scored
    got = evaluate_moments(index, items)
    assert got["num_queries"] == len(items) and got["missing_videos"] == 0
    assert 0 <= got["R1@IoU0.5"] <= 100 and 0 <= got["mIoU"] <= 100
    # The same as scoring each localised segment by hand.
    pred, truth = [], []
    for rel, sentence, times in items:
        span, duration = localise(index, rel, sentence)
        pred.append(span)
        truth.append(didemo_spans(times, duration))
    want = segment_metrics(pred, truth)
    assert {k: got[k] for k in want} == want
    # A video the index does not hold is counted, not fatal.
    extra = evaluate_moments(index, items + [("nowhere.mp4", "a sentence", [[0, 0]])])
    assert extra["missing_videos"] == 1 and extra["num_queries"] == len(items)
    with pytest.raises(KeyError, match="nowhere.mp4"):
        localise(index, "nowhere.mp4", "a sentence")
