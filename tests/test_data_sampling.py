"""sample_frame_indices: CLIP4Clip's 1-fps sampling and head/tail/uniform slicing (pure function)."""

import math

import numpy as np
import pytest

from data.video.decode import ASSUMED_FPS, _sanitize_count, _sanitize_fps, sample_frame_indices


def test_fps1_takes_first_frame_of_each_second():
    # 30 fps, 10 s: frames 0, 30, ..., 270 (10 seconds -> 10 candidates, max_frames 12 keeps all)
    idx = sample_frame_indices(300, 30.0, fps=1.0, max_frames=12)
    assert idx.tolist() == list(range(0, 300, 30))
    assert idx.dtype == np.int64


def test_partial_last_second_counts():
    # 164 frames at 25 fps = 6.56 s: seconds 0..6 each have a first frame -> 7 (as CLIP4Clip)
    assert sample_frame_indices(164, 25.0).tolist() == [0, 25, 50, 75, 100, 125, 150]


def test_non_integer_video_fps_does_not_drift():
    # 29.97 fps, 60 s: the frame for second s is ceil(s * 29.97), not s * int(29.97) = s * 29
    idx = sample_frame_indices(1798, 29.97, max_frames=None)
    assert len(idx) == 60
    assert idx[59] == math.ceil(59 * 29.97) == 1769


def test_fps_above_one_spreads_inside_each_second():
    idx = sample_frame_indices(60, 30.0, fps=2.0, max_frames=None)
    assert idx.tolist() == [0, 15, 30, 45]
    idx = sample_frame_indices(56, 28.0, fps=4.0, max_frames=None)
    assert idx.tolist() == [0, 7, 14, 21, 28, 35, 42, 49]


def test_fps_above_video_fps_gives_every_frame_once():
    assert sample_frame_indices(8, 4.0, fps=10.0, max_frames=None).tolist() == list(range(8))


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("head", [0, 30, 60, 90]),
        ("tail", [600, 630, 660, 690]),
        # 24 candidates, linspace(0, 23, 4) = 0, 7.67, 15.33, 23 -> rounded 0, 8, 15, 23
        ("uniform", [0, 240, 450, 690]),
    ],
)
def test_slicing_when_more_candidates_than_max_frames(mode, expected):
    idx = sample_frame_indices(720, 30.0, fps=1.0, max_frames=4, slice_framepos=mode)
    assert idx.tolist() == expected


def test_uniform_keeps_first_and_last_candidate():
    idx = sample_frame_indices(30 * 100, 30.0, max_frames=12)
    assert len(idx) == 12 and idx[0] == 0 and idx[-1] == 99 * 30
    assert np.all(np.diff(idx) > 0)


def test_short_video_gives_fewer_frames():
    assert sample_frame_indices(75, 25.0, max_frames=12).tolist() == [0, 25, 50]
    assert sample_frame_indices(1, 25.0).tolist() == [0]
    assert sample_frame_indices(0, 25.0).tolist() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_frames=-1, video_fps=25.0),
        dict(num_frames=10, video_fps=0.0),
        dict(num_frames=10, video_fps=float("nan")),
        dict(num_frames=10, video_fps=25.0, fps=0.0),
        dict(num_frames=10, video_fps=25.0, max_frames=0),
        dict(num_frames=10, video_fps=25.0, slice_framepos="middle"),
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sample_frame_indices(**kwargs)


@pytest.mark.parametrize("reported", [0.0, -1.0, float("nan"), float("inf"), 1000.0, 90000.0, 0.5])
def test_unusable_fps_falls_back(reported):
    fps, note = _sanitize_fps(reported)
    assert fps == ASSUMED_FPS and note and "assuming" in note


@pytest.mark.parametrize("reported", [24.0, 25.0, 29.97, 30.0, 60.0])
def test_plausible_fps_kept(reported):
    assert _sanitize_fps(reported) == (reported, None)


def test_frame_count_sanitising():
    assert _sanitize_count(280.0) == 280
    for bad in (0.0, -1.0, float("nan"), 1e12):
        assert _sanitize_count(bad) is None
