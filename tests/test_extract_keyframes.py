"""Keyframe selection (uniform and maxdiff) on the three real clips and on generated videos."""

import functools
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.video import seeking
from data.video.keyframes import KeyframeParams, diff_score_image, select_keyframes, top_k_in_order
from toy_datasets import write_cut_video, write_video
from data.video.decode import VideoReadError, VideoTruncatedWarning, sample_frame_indices

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"
CLIPS = {"arm_wrestling.mp4": (28.0, 280), "eye_makeup.avi": (25.0, 164), "pool_cleaning.mp4": (30.0, 300)}


@functools.lru_cache(maxsize=4)
def _decode_all_bgr(path: str) -> np.ndarray:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(bgr)
    cap.release()
    return np.stack(out)


def decode_all_rgb(path) -> np.ndarray:
    """Reference: every frame, decoded with cap.read(), RGB [N, H, W, 3]."""
    return _decode_all_bgr(str(path))[..., ::-1]


# ---- uniform -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLIPS))
def test_uniform_is_clip4clip_sampling_on_real_clips(clips, name):
    fps, n = CLIPS[name]
    kf = select_keyframes(clips / name, KeyframeParams("uniform", max_frames=4))
    np.testing.assert_array_equal(kf.indices, sample_frame_indices(n, fps, 1.0, 4))
    assert (kf.fps, kf.num_frames) == (fps, n) and kf.duration == pytest.approx(n / fps)
    np.testing.assert_allclose(kf.timestamps, kf.indices / fps)
    np.testing.assert_array_equal(kf.frames, decode_all_rgb(clips / name)[kf.indices])


@pytest.mark.parametrize("suffix, fourcc", [(".mp4", "mp4v"), (".avi", "XVID"), (".avi", "MJPG")])
def test_uniform_picks_expected_timestamps_on_a_generated_video(tmp_path, suffix, fourcc):
    # 20 s at 30 fps: candidates at 0..19 s; 12 of them spread evenly (rounded linspace).
    frames = np.zeros((600, 48, 64, 3), dtype=np.uint8)
    frames[:, :, :, 0] = (np.arange(600) % 256).astype(np.uint8)[:, None, None]
    frames[:, :, :, 1] = (np.arange(600) // 256 * 80).astype(np.uint8)[:, None, None]  # every frame distinct
    path = write_video(tmp_path / f"long{suffix}", frames, 30, fourcc=fourcc)
    kf = select_keyframes(path, KeyframeParams("uniform", max_frames=12))
    np.testing.assert_allclose(kf.timestamps, [0, 2, 3, 5, 7, 9, 10, 12, 14, 16, 17, 19])
    # These streams have short GOPs and no B-frames: the reader seeks past most frames instead
    # of decoding them, and still returns exactly the frames a full decode gives.
    scan = seeking.scan_packets(str(path))
    assert scan is not None and any(seeking.plan_seeks(kf.indices, scan.keyframes))
    np.testing.assert_array_equal(kf.frames, decode_all_rgb(path)[kf.indices])


def test_seeking_is_refused_for_reordered_streams(clips):
    # H.264 with B-frames: packet pts are not in frame order, so seeking is not provably exact.
    assert seeking.scan_packets(str(clips / "arm_wrestling.mp4")) is None
    assert seeking.plan_seeks([0, 100, 200], np.array([0])) == [False, False, False]
    # OpenCV starts decoding at the last keyframe <= target - 16: 80 for 100, 160 for 200
    assert seeking.plan_seeks([0, 100, 200], np.array([0, 80, 160])) == [False, True, True]
    assert seeking.plan_seeks([0, 100, 200], np.array([0, 90, 180])) == [False, False, True]


# ---- maxdiff -----------------------------------------------------------------------------------


def test_maxdiff_picks_the_frames_right_after_scene_cuts(tmp_path):
    path = write_cut_video(tmp_path / "cuts.mp4", cuts=[13, 29, 44], num_frames=60)
    kf = select_keyframes(path, KeyframeParams("maxdiff", max_frames=4))
    assert kf.indices.tolist() == [0, 13, 29, 44]  # the opening shot counts as a shot start
    np.testing.assert_array_equal(kf.frames, decode_all_rgb(path)[kf.indices])
    # every k-th frame: cuts on multiples of k are still found, and only such frames are chosen
    path = write_cut_video(tmp_path / "cuts3.mp4", cuts=[15, 30, 48], num_frames=60)
    kf = select_keyframes(path, KeyframeParams("maxdiff", max_frames=4, step=3))
    assert kf.indices.tolist() == [0, 15, 30, 48]
    kf = select_keyframes(path, KeyframeParams("maxdiff", max_frames=12, step=4))
    assert np.all(kf.indices % 4 == 0) and {0, 48}.issubset(kf.indices.tolist())


@pytest.mark.parametrize("name, step", [("eye_makeup.avi", 1), ("arm_wrestling.mp4", 3)])
def test_maxdiff_on_real_clips_matches_a_reference_computation(clips, name, step):
    params = KeyframeParams("maxdiff", max_frames=12, step=step, blur=9)
    kf = select_keyframes(clips / name, params)
    ref = _decode_all_bgr(str(clips / name))
    evaluated = np.arange(0, len(ref), step)
    imgs = [diff_score_image(ref[i], 9).astype(np.int64) for i in evaluated]
    scores = [np.inf] + [float(np.abs(b - a).sum()) for a, b in zip(imgs, imgs[1:])]
    np.testing.assert_array_equal(kf.indices, evaluated[top_k_in_order(np.array(scores), 12)])
    assert kf.indices[0] == 0 and np.all(np.diff(kf.indices) > 0) and kf.num_frames == CLIPS[name][1]
    np.testing.assert_array_equal(kf.frames, ref[kf.indices][..., ::-1])


def test_top_k_in_order_prefers_earlier_frames_on_ties():
    assert top_k_in_order(np.array([5, 1, 5, 3, 5]), 2).tolist() == [0, 2]
    assert top_k_in_order(np.array([np.inf, 2, 9, 9]), 3).tolist() == [0, 2, 3]
    assert top_k_in_order(np.array([1.0, 2.0]), 5).tolist() == [0, 1]


def test_short_video_keeps_every_evaluated_frame(tmp_path):
    path = write_cut_video(tmp_path / "short.mp4", cuts=[3], num_frames=6)
    assert select_keyframes(path, KeyframeParams("maxdiff", max_frames=12)).indices.tolist() == list(range(6))


def test_truncated_avi_keyframes_come_from_the_decoded_part(clips, tmp_path):
    p = tmp_path / "half.avi"
    data = (clips / "eye_makeup.avi").read_bytes()
    p.write_bytes(data[: len(data) // 2])
    decodable = len(decode_all_rgb(p))
    for scheme in ("uniform", "maxdiff"):
        with pytest.warns(VideoTruncatedWarning, match="half.avi"):
            kf = select_keyframes(p, KeyframeParams(scheme))
        assert kf.indices.max() < decodable and kf.num_frames == decodable
        assert any("decode" in n for n in kf.notes)


@pytest.mark.parametrize("scheme", ["uniform", "maxdiff"])
def test_unreadable_files_raise_naming_them(tmp_path, scheme):
    (tmp_path / "zero.mp4").touch()
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    for name, why in (("zero.mp4", "empty"), ("text.mp4", "cannot open"), ("nope.mp4", "does not exist")):
        with pytest.raises(VideoReadError, match=f"{name}.*{why}"):
            select_keyframes(tmp_path / name, KeyframeParams(scheme))


def test_params_are_validated_and_only_relevant_fields_are_compared():
    for bad in (dict(scheme="random"), dict(max_frames=0), dict(step=0), dict(blur=4), dict(slice_framepos="middle")):
        with pytest.raises(ValueError):
            KeyframeParams(**bad)
    assert KeyframeParams("uniform", step=5).relevant() == KeyframeParams("uniform").relevant()
    assert KeyframeParams("maxdiff", fps=2.0).relevant() == KeyframeParams("maxdiff").relevant()
    assert KeyframeParams("maxdiff", step=2).relevant() != KeyframeParams("maxdiff").relevant()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KeyframeParams("maxdiff", blur=0)


def _blur_in_child() -> bool:
    img = np.zeros((240, 320, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (9, 9), 0).shape == img.shape


def test_forked_workers_can_use_opencv_after_the_parent_did(clips):
    # OpenCV's thread pool deadlocked children forked after the parent had used it (DataLoader
    # workers, extraction workers); the data layer switches it off on import.
    import multiprocessing as mp
    select_keyframes(clips / "eye_makeup.avi", KeyframeParams("maxdiff"))
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_blur_in_child).get(timeout=30)
