"""Search: the best segment of a hit from its frame scores, and segment metrics (IoU)."""
import pytest

from clip4clip.search.segments import SEGMENT_DROP, best_segment, iou, segment_metrics

TIMES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_the_segment_is_the_run_of_frames_around_the_best_within_10_percent():
    scores = [0.10, 0.50, 0.93, 1.00, 0.95, 0.60, 0.99, 0.20]
    # 0.93 and 0.95 are within 10% of 1.00; 0.60 stops the run, so 0.99 at 6 s is not in it.
    assert best_segment(scores, TIMES, 8.0) == (2, 4, 2.0, 5.0)
    # The last frame's segment ends with the video; a lone best frame is its own segment.
    assert best_segment([0.1, 0.2, 0.9], [0.0, 1.0, 2.0], 2.6) == (2, 2, 2.0, 2.6)
    assert best_segment([0.9, 0.1], [0.0, 1.0], 2.0) == (0, 0, 0.0, 1.0)
    # Everything alike: the whole video. Ties for the best: the earlier frame.
    assert best_segment([0.3] * 8, TIMES, 8.0) == (0, 7, 0.0, 8.0)
    assert best_segment([0.5, 0.1, 0.5], [0.0, 1.0, 2.0], 3.0) == (0, 0, 0.0, 1.0)
    # Negative scores (nothing matches well): still within 10% of the best.
    assert best_segment([-0.5, -0.21, -0.2, -0.3], [0.0, 1.0, 2.0, 3.0], 4.0) == (1, 2, 1.0, 3.0)
    assert SEGMENT_DROP == 0.10
    with pytest.raises(ValueError):
        best_segment([], [], 1.0)


def test_iou_and_segment_metrics():
    assert iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert iou((0, 5), (5, 10)) == 0.0 and iou((2, 4), (2, 4)) == 1.0 and iou((3, 3), (3, 3)) == 1.0
    pred = [(0.0, 10.0), (20.0, 25.0), (0.0, 4.0), (10.0, 30.0)]
    gt = [(0.0, 8.0),                  # IoU 0.8
          (0.0, 5.0),                  # 0
          [(10.0, 20.0), (0.0, 5.0)],  # annotators disagree: the best of them, 0.8
          (15.0, 25.0)]                # 0.5: counts as IoU >= 0.5, not as >= 0.7
    m = segment_metrics(pred, gt)
    assert m["num_queries"] == 4
    assert m["R1@IoU0.5"] == pytest.approx(75.0) and m["R1@IoU0.7"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx(100 * (0.8 + 0 + 0.8 + 0.5) / 4)
    with pytest.raises(ValueError, match="2 predicted segments for 1 queries"):
        segment_metrics(pred[:2], gt[:1])
    with pytest.raises(ValueError, match="end >= start"):
        segment_metrics([(5.0, 1.0)], [(0.0, 1.0)])
