"""read_frames / probe_video on the three real clips in ../shared/testdata/videos and on broken files."""

import functools
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.video.decode as video
from toy_datasets import write_video

from data.video.decode import (
    ASSUMED_FPS,
    VideoMetadataWarning,
    VideoReadError,
    VideoTruncatedWarning,
    probe_video,
    read_frames,
)

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"
# name -> (fps, frames, width, height), from the README next to the clips
CLIPS = {
    "arm_wrestling.mp4": (28.0, 280, 340, 256),
    "eye_makeup.avi": (25.0, 164, 320, 240),
    "pool_cleaning.mp4": (30.0, 300, 340, 256),
}


@functools.lru_cache(maxsize=8)
def _decode_all(path: str) -> np.ndarray:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(out)


def decode_all(path) -> np.ndarray:
    """Reference: every frame, decoded one by one with cap.read(), as RGB [N, H, W, 3] (cached)."""
    return _decode_all(str(path))


@pytest.mark.parametrize("name", list(CLIPS))
def test_probe(clips, name):
    fps, n, w, h = CLIPS[name]
    info = probe_video(clips / name)
    assert (info.fps, info.frame_count, info.width, info.height) == (fps, n, w, h)
    assert info.duration == pytest.approx(n / fps)
    assert not info.fps_assumed and not info.notes
    counted = probe_video(clips / name, count_frames=True)
    assert counted.frame_count == n and counted.frame_count_decoded


@pytest.mark.parametrize(
    "name, seconds",
    [("arm_wrestling.mp4", list(range(10))), ("eye_makeup.avi", list(range(7))), ("pool_cleaning.mp4", list(range(10)))],
)
def test_one_frame_per_second_matches_full_decode(clips, name, seconds):
    fps, n, w, h = CLIPS[name]
    frames, times = read_frames(clips / name, fps=1.0, max_frames=12)
    assert frames.dtype == np.uint8 and frames.shape == (len(seconds), h, w, 3)
    np.testing.assert_allclose(times, seconds)
    # The grab/retrieve pass picked exactly the frames at index second * fps.
    ref = decode_all(clips / name)
    assert len(ref) == n
    np.testing.assert_array_equal(frames, ref[[int(s * fps) for s in seconds]])


def test_uniform_head_tail_and_fps2_on_real_clip(clips):
    path = clips / "pool_cleaning.mp4"  # 30 fps, 10 s
    ref = decode_all(path)
    _, t = read_frames(path, max_frames=4, slice_framepos="uniform")
    np.testing.assert_allclose(t, [0, 3, 6, 9])
    _, t = read_frames(path, max_frames=3, slice_framepos="head")
    np.testing.assert_allclose(t, [0, 1, 2])
    f, t = read_frames(path, max_frames=3, slice_framepos="tail")
    np.testing.assert_allclose(t, [7, 8, 9])
    np.testing.assert_array_equal(f, ref[[210, 240, 270]])
    f, t = read_frames(path, fps=2.0, max_frames=None)
    np.testing.assert_allclose(t, np.arange(20) / 2)
    np.testing.assert_array_equal(f, ref[::15])


def test_frame_orders(clips):
    path = clips / "arm_wrestling.mp4"
    f, t = read_frames(path, max_frames=5)
    fr, tr = read_frames(path, max_frames=5, frame_order="reverse")
    np.testing.assert_array_equal(fr, f[::-1])
    np.testing.assert_array_equal(tr, t[::-1])
    fx, tx = read_frames(path, max_frames=5, frame_order="random", rng=np.random.default_rng(3))
    perm = np.random.default_rng(3).permutation(5)
    np.testing.assert_array_equal(fx, f[perm])
    np.testing.assert_array_equal(tx, t[perm])
    with pytest.raises(ValueError, match="frame_order"):
        read_frames(path, frame_order="backwards")


# ---- broken files ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.mp4"
    with pytest.raises(VideoReadError, match="nope.mp4.*does not exist") as e:
        read_frames(p)
    assert e.value.path == str(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.touch()
    with pytest.raises(VideoReadError, match=r"empty.mp4.*empty \(0 bytes\)"):
        read_frames(p)


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoReadError, match="notes.mp4.*cannot open"):
        read_frames(p)
    with pytest.raises(VideoReadError, match="notes.mp4"):
        probe_video(p)


def test_truncated_mp4_cannot_be_opened(clips, tmp_path):
    # These mp4s keep their 'moov' index at the end: the first half has no index, so FFmpeg
    # cannot open the file at all -> VideoReadError naming the file.
    data = (clips / "arm_wrestling.mp4").read_bytes()
    p = tmp_path / "half.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="half.mp4.*cannot open"):
        read_frames(p)


def test_truncated_avi_returns_the_frames_that_decode(clips, tmp_path):
    # An AVI cut in half still opens and reports 164 frames, but only the first ~77 decode:
    # read_frames re-samples from the decoded range and warns.
    data = (clips / "eye_makeup.avi").read_bytes()
    p = tmp_path / "half.avi"
    p.write_bytes(data[: len(data) // 2])
    decodable = decode_all(p)
    assert 0 < len(decodable) < 164
    with pytest.warns(VideoTruncatedWarning, match="half.avi"):
        frames, times = read_frames(p)
    expected_seconds = list(range(int(np.ceil(len(decodable) / 25))))
    np.testing.assert_allclose(times, expected_seconds)
    np.testing.assert_array_equal(frames, decodable[[25 * s for s in expected_seconds]])


# ---- lying metadata ----------------------------------------------------------------------------


class LyingCapture:
    """A real capture whose reported fps / frame count are replaced."""

    def __init__(self, path, fps=None, count=None):
        self._cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        self._fps, self._count = fps, count

    def get(self, prop):
        if prop == cv2.CAP_PROP_FPS and self._fps is not None:
            return self._fps
        if prop == cv2.CAP_PROP_FRAME_COUNT and self._count is not None:
            return self._count
        return self._cap.get(prop)

    def __getattr__(self, name):
        return getattr(self._cap, name)


def lie(monkeypatch, **kw):
    monkeypatch.setattr(video, "_open_capture", lambda path: LyingCapture(path, **kw))


@pytest.mark.parametrize("bad_fps", [0.0, float("nan")])  # more values: test_data_sampling
def test_unusable_fps_assumes_25(clips, monkeypatch, bad_fps):
    lie(monkeypatch, fps=bad_fps)
    path = clips / "arm_wrestling.mp4"
    info = probe_video(path)
    assert info.fps == ASSUMED_FPS and info.fps_assumed and "assuming" in info.notes[0]
    with pytest.warns(VideoMetadataWarning, match="arm_wrestling"):
        frames, times = read_frames(path, max_frames=None)
    # 280 frames read as 25 fps = 11.2 s -> 12 candidates at frames 0, 25, ..., 275
    np.testing.assert_allclose(times, np.arange(12))
    np.testing.assert_array_equal(frames, decode_all(path)[::25])


@pytest.mark.parametrize("bad_count", [1000.0, 100.0, 0.0])
def test_wrong_frame_count_trusts_what_decodes(clips, monkeypatch, bad_count):
    path = clips / "eye_makeup.avi"  # 164 frames; the AVI decodes fastest
    truth_frames, truth_times = read_frames(path, max_frames=4)
    lie(monkeypatch, count=bad_count)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames, times = read_frames(path, max_frames=4)
    np.testing.assert_array_equal(times, truth_times)
    np.testing.assert_array_equal(frames, truth_frames)
    if bad_count == 1000.0:  # over-reported: looks like a truncated file
        assert any(issubclass(w.category, VideoTruncatedWarning) for w in caught)
    if bad_count <= 0:  # unusable: counted up front
        assert any(issubclass(w.category, VideoMetadataWarning) for w in caught)
        assert probe_video(path).frame_count == 164


def test_capture_is_released(clips, monkeypatch):
    opened = []

    def tracking(path):
        cap = LyingCapture(path)
        orig = cap._cap.release
        state = {"released": False}

        def release():
            state["released"] = True
            orig()

        cap.release = release
        opened.append(state)
        return cap

    monkeypatch.setattr(video, "_open_capture", tracking)
    read_frames(clips / "eye_makeup.avi")
    read_frames(clips / "arm_wrestling.mp4", max_frames=2, slice_framepos="head")
    assert opened and all(s["released"] for s in opened)


def test_webm_or_other_extension_content_is_probed(clips, tmp_path):
    # FFmpeg probes content, not the extension: an mp4 renamed .webm still reads.
    p = tmp_path / "clip.webm"
    shutil.copy(clips / "arm_wrestling.mp4", p)
    assert read_frames(p)[0].shape[0] == 10


def _count_opens(monkeypatch) -> list[str]:
    opened = []
    real = video._open_capture

    def counting(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(video, "_open_capture", counting)
    return opened


def test_a_short_clip_is_opened_once(tmp_path, monkeypatch):
    # 16 frames at 2 fps, 4 sampled: too close together for a packet scan to pay, so the
    # capture opened to read the metadata decodes them too (the synthetic data's case).
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    path = str(write_video(tmp_path / "short.mp4", frames, 2))
    truth = decode_all(path)
    opened = _count_opens(monkeypatch)
    got, times = read_frames(path, fps=0.5, max_frames=4)
    assert opened == [path]
    np.testing.assert_array_equal(times, [0, 2, 4, 6])
    np.testing.assert_array_equal(got, truth[[0, 4, 8, 12]])


def test_a_seek_that_misses_decodes_again_from_frame_zero(clips, monkeypatch):
    import data.video.seeking as seeking
    path = clips / "eye_makeup.avi"
    truth_frames, truth_times = read_frames(path, max_frames=4)

    def missing(cap, targets, plan):
        for _ in range(7):  # moves the capture, as a real failed attempt would
            cap.grab()
        raise seeking.SeekMismatch("landed elsewhere")

    monkeypatch.setattr(video, "_seek_plan", lambda spath, idx, count: [True] * len(idx))
    monkeypatch.setattr(seeking, "decode_planned", missing)
    opened = _count_opens(monkeypatch)
    frames, times = read_frames(path, max_frames=4)
    assert len(opened) == 2  # the fallback starts from a fresh capture
    np.testing.assert_array_equal(times, truth_times)
    np.testing.assert_array_equal(frames, truth_frames)
