"""sample_frame_indices(rule="official"): CLIP4Clip's own frame indices, checked against a
transcription of its extractor (ArrowLuo/CLIP4Clip dataloaders/rawvideo_util.py,
``RawVideoExtractorCV2.video_to_tensor``) and of the dataloaders' ``slice_framepos`` step
(``_get_rawvideo``), on (frame count, fps) grids, generated videos and the real clips."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from toy_datasets import write_video
from data.video.decode import FRAME_RULES, _decode_selected, probe_video, sample_frame_indices

CLIPS = ("arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4")
SLICE_CODES = {"head": 0, "tail": 1, "uniform": 2}  # CLIP4Clip's --slice_framepos values


class FakeCapture:
    """The part of cv2.VideoCapture the extractor uses: it reports ``frame_count`` and ``fps``,
    and ``read()`` after ``set(POS_FRAMES, i)`` gives frame number i while i < frame_count."""

    def __init__(self, frame_count: int, fps: float):
        self.frame_count, self.fps, self.pos = frame_count, fps, 0

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_COUNT: float(self.frame_count), cv2.CAP_PROP_FPS: self.fps}[prop]

    def set(self, prop, value):
        assert prop == cv2.CAP_PROP_POS_FRAMES
        self.pos = int(value)

    def read(self):
        if self.pos >= self.frame_count:
            return False, None
        self.pos += 1
        return True, self.pos - 1

    def release(self):
        pass


class RecordingCapture(FakeCapture):
    """A real capture whose reads also give the frame number they were asked for."""

    def __init__(self, path):
        self.cap = cv2.VideoCapture(str(path))
        self.pos = 0

    def get(self, prop):
        return self.cap.get(prop)

    def set(self, prop, value):
        self.pos = int(value)
        self.cap.set(prop, value)

    def read(self):
        ok, frame = self.cap.read()
        self.pos += 1
        return ok, ((self.pos - 1, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)) if ok else None)

    def release(self):
        self.cap.release()


def official_read(cap, sample_fp: int, start_time=None, end_time=None) -> list:
    """What ``video_to_tensor(video_file, preprocess, sample_fp, start_time, end_time)`` reads from
    ``cap`` (no start/end time: the whole video), statement for statement; it returns the read
    frames themselves instead of preprocessing and stacking them."""
    if start_time is not None or end_time is not None:
        assert isinstance(start_time, int) and isinstance(end_time, int) and start_time > -1 and end_time > start_time
    assert sample_fp > -1
    frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(cap.get(cv2.CAP_PROP_FPS))
    total_duration = (frame_count + fps - 1) // fps
    start_sec, end_sec = 0, total_duration
    if start_time is not None:
        start_sec, end_sec = start_time, min(end_time, total_duration)
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(start_time * fps))
    interval = 1
    if sample_fp > 0:
        interval = fps // sample_fp
    else:
        sample_fp = fps
    if interval == 0:
        interval = 1
    inds = [ind for ind in np.arange(0, fps, interval)]
    assert len(inds) >= sample_fp
    inds = inds[:sample_fp]
    ret = True
    frames = []
    for sec in np.arange(start_sec, end_sec + 1):
        if not ret:
            break
        sec_base = int(sec * fps)
        for ind in inds:
            cap.set(cv2.CAP_PROP_POS_FRAMES, sec_base + ind)
            ret, frame = cap.read()
            if not ret:
                break
            frames.append(frame)
    cap.release()
    return frames


def official_slice(frames: list, max_frames: int, slice_framepos: int) -> list:
    """The dataloaders' cut of the read frames to max_frames (``_get_rawvideo``)."""
    if max_frames < len(frames):
        if slice_framepos == 0:
            return frames[:max_frames]
        if slice_framepos == 1:
            return frames[-max_frames:]
        sample_indx = np.linspace(0, len(frames) - 1, num=max_frames, dtype=int)
        return [frames[i] for i in sample_indx]
    return frames


def official_indices(frame_count: int, fps: float, sample_fp: int, max_frames: int, slice_framepos: str) -> list[int]:
    frames = official_read(FakeCapture(frame_count, fps), sample_fp)
    return [int(i) for i in official_slice(frames, max_frames, SLICE_CODES[slice_framepos])]


# ----------------------------------------------------------------------------------------------
# (frame count, fps) grids
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_fps", [1.5, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0])
def test_official_rule_equals_the_official_code(video_fps):
    counts = [0, 1, 5, 23, 24, 29, 30, 31, 59, 60, 61, 299, 300, 301, 500, 1798, 5000]
    for count, sample_fp, max_frames, pos in itertools.product(counts, (1, 2, 3), (1, 4, 12, 64), SLICE_CODES):
        if sample_fp > int(video_fps):
            continue  # the official extractor asserts; covered by test_official_rule_refuses_...
        got = sample_frame_indices(count, video_fps, float(sample_fp), max_frames, pos, rule="official")
        want = official_indices(count, video_fps, sample_fp, max_frames, pos)
        assert got.dtype == np.int64
        assert got.tolist() == want, (count, video_fps, sample_fp, max_frames, pos)
    # max_frames=None keeps every frame the extractor reads.
    assert sample_frame_indices(301, video_fps, max_frames=None, rule="official").tolist() == [
        int(i) for i in official_read(FakeCapture(301, video_fps), 1)]


def test_the_rules_differ_where_the_issue_says():
    # 29.97 fps, 10 s: the official code steps by int(29.97) = 29 frames and reads 11 frames;
    # the exact rule takes the first frame of each second, ceil(j * 29.97), j = 0..9.
    official = sample_frame_indices(300, 29.97, max_frames=None, rule="official")
    exact = sample_frame_indices(300, 29.97, max_frames=None)
    assert official.tolist() == [29 * s for s in range(11)]
    assert exact.tolist() == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    # 20 s at 25 fps: the same 20 candidates (integer fps), but max_frames=12 "uniform" takes
    # linspace(0, 19, 12) truncated officially and rounded by the exact rule.
    cand = [25 * s for s in range(20)]
    assert sample_frame_indices(500, 25.0, max_frames=None, rule="official").tolist() == cand
    assert sample_frame_indices(500, 25.0, max_frames=None).tolist() == cand
    trunc = [0, 1, 3, 5, 6, 8, 10, 12, 13, 15, 17, 19]
    rounded = [0, 2, 3, 5, 7, 9, 10, 12, 14, 16, 17, 19]
    assert sample_frame_indices(500, 25.0, max_frames=12, rule="official").tolist() == [cand[i] for i in trunc]
    assert sample_frame_indices(500, 25.0, max_frames=12).tolist() == [cand[i] for i in rounded]
    # head and tail agree whenever the candidates do.
    for pos in ("head", "tail"):
        assert (sample_frame_indices(500, 25.0, 1.0, 12, pos, rule="official").tolist()
                == sample_frame_indices(500, 25.0, 1.0, 12, pos).tolist())


def test_default_rule_is_unchanged():
    for count, fps, max_frames, pos in itertools.product((0, 7, 300, 1798), (25.0, 29.97), (None, 4, 12), SLICE_CODES):
        assert (sample_frame_indices(count, fps, 1.0, max_frames, pos).tolist()
                == sample_frame_indices(count, fps, 1.0, max_frames, pos, rule="exact").tolist())
    assert FRAME_RULES == ("exact", "official")


def test_official_rule_refuses_what_the_official_code_cannot_do():
    with pytest.raises(ValueError, match=r"rule must be one of \('exact', 'official'\).*got 'clip4clip'"):
        sample_frame_indices(100, 25.0, rule="clip4clip")
    with pytest.raises(ValueError, match=r"whole number of frames per second.*fps=0.5"):
        sample_frame_indices(100, 25.0, fps=0.5, rule="official")
    with pytest.raises(ValueError, match=r"cannot take fps=30 frames per second from a 25 fps video"):
        sample_frame_indices(100, 25.0, fps=30.0, rule="official")
    with pytest.raises(AssertionError):  # ... which the official code asserts
        official_read(FakeCapture(100, 25.0), 30)
    with pytest.raises(ValueError, match=r"needs video_fps >= 1"):
        sample_frame_indices(100, 0.5, rule="official")
    assert sample_frame_indices(0, 25.0, rule="official").tolist() == []


# ----------------------------------------------------------------------------------------------
# Video files: the official code run on a real capture reads the frames the rule names
# ----------------------------------------------------------------------------------------------


def _check_file(path, max_frames: int, slice_framepos: str) -> tuple[list[int], list[int]]:
    """(official, exact) indices for a file; asserts the official rule equals the official code
    run on the file itself (its own metadata and seeks), frames included."""
    info = probe_video(path)
    read = official_read(RecordingCapture(path), 1)
    sliced = official_slice(read, max_frames, SLICE_CODES[slice_framepos])
    got = sample_frame_indices(info.frame_count, info.fps, 1.0, max_frames, slice_framepos, rule="official")
    assert got.tolist() == [i for i, _ in sliced]
    cap = cv2.VideoCapture(str(path))
    try:
        decoded, _ = _decode_selected(cap, got, None)  # our sequential decode of the same indices
    finally:
        cap.release()
    for i, frame in sliced:
        assert np.array_equal(decoded[i], frame), f"{path.name}: frame {i} differs between seek and decode"
    exact = sample_frame_indices(info.frame_count, info.fps, 1.0, max_frames, slice_framepos)
    return got.tolist(), exact.tolist()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rule")
    rng = np.random.default_rng(0)
    out = {}
    for name, fps, n in (("ntsc.mp4", 30000 / 1001, 300), ("long.avi", 25.0, 500)):
        frames = rng.integers(0, 256, size=(n, 24, 32, 3), dtype=np.uint8)
        out[name] = write_video(folder / name, frames, fps, fourcc="mp4v" if name.endswith("mp4") else "MJPG")
    return out


def test_generated_videos(generated):
    ntsc, long = generated["ntsc.mp4"], generated["long.avi"]
    assert probe_video(ntsc).fps == pytest.approx(29.97) and probe_video(ntsc).frame_count == 300
    official, exact = _check_file(ntsc, 64, "uniform")
    assert len(official) == 11 and len(exact) == 10 and official[-1] == 290
    official, exact = _check_file(long, 12, "uniform")
    assert official != exact and len(official) == len(exact) == 12
    assert _check_file(long, 12, "head")[0] == list(range(0, 300, 25))


def test_real_clips(clips):
    # Integer frame rates (28, 25, 30 fps): the candidates agree; only the truncated "uniform"
    # cut can differ, e.g. 6 of pool_cleaning's 10 seconds.
    for name in CLIPS:
        for max_frames, pos in ((12, "uniform"), (4, "uniform"), (4, "tail")):
            official, exact = _check_file(clips / name, max_frames, pos)
            assert official == exact, (name, max_frames, pos)
    official, exact = _check_file(clips / "pool_cleaning.mp4", 6, "uniform")
    assert official == [0, 30, 90, 150, 210, 270] and exact == [0, 60, 120, 150, 210, 270]
