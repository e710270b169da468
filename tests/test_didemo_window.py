"""DiDeMo's window (issue 24, item 2): CLIP4Clip's DiDeMo loader reads seconds 0..31 of each
video only, and so do we under the official frame rule (``dataset.window_seconds``); the exact
rule reads the whole video.

The reference is a transcription of CLIP4Clip's extractor with a start and end time
(ArrowLuo/CLIP4Clip ``dataloaders/rawvideo_util.py``, ``RawVideoExtractorCV2.video_to_tensor``,
the ``start_time is not None`` branch) fed with what its DiDeMo loader passes
(``dataloaders/dataloader_didemo_retrieval.py``: every video's ``start`` is ``[0]`` and ``end``
``[31]``, and ``_get_rawvideo`` hands ``int(0)``, ``int(31)`` to the extractor)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
from benchmark_layouts import DIDEMO, write_didemo
from framework_utils import compose_cfg
from omegaconf import OmegaConf
from test_frame_rule import SLICE_CODES, FakeCapture, official_read, official_slice
from toy_datasets import write_video

from data.frames.extract import ExtractSettings, extract_to_cache
from data.frames.store import load_manifest
from data.splits import build_split, dataset_videos
from data.video import decode
from data.video.decode import VideoReadError, sample_frame_indices, sample_video
from data.video.keyframes import KeyframeParams, select_keyframes, window_for_rule

#: What CLIP4Clip's DiDeMo loader gives its extractor for every video.
DIDEMO_START, DIDEMO_END = 0, 31


def official_read_window(cap, sample_fp: int, start_time: int, end_time: int) -> list:
    """``video_to_tensor(video_file, preprocess, sample_fp, start_time, end_time)``: the one
    transcription of the official extractor, with the window."""
    return official_read(cap, sample_fp, start_time, end_time)


def _didemo_cfg(*overrides) -> dict:
    return OmegaConf.to_container(compose_cfg("train", ["dataset=didemo", *overrides]).dataset, resolve=True)


# ----------------------------------------------------------------------------------------------
# The indices
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_fps", [23.976, 25.0, 29.97, 30.0])
def test_official_window_equals_the_official_extractor(video_fps):
    f = int(video_fps)
    counts = [1, 29, f * 31 - 1, f * 31, f * 31 + 1, f * 32 - 1, f * 32, f * 32 + 1, f * 45 + 7, f * 120]
    windows = [(DIDEMO_START, DIDEMO_END), (3, 10), (2, 3)]
    for count, sample_fp, max_frames, pos, (a, b) in itertools.product(counts, (1, 2), (12, 64, 200), SLICE_CODES,
                                                                       windows):
        got = sample_frame_indices(count, video_fps, float(sample_fp), max_frames, pos, rule="official", window=(a, b))
        read = official_read_window(FakeCapture(count, video_fps), sample_fp, a, b)
        want = [int(i) for i in official_slice(read, max_frames, SLICE_CODES[pos])]
        assert got.tolist() == want, (count, video_fps, sample_fp, max_frames, pos, (a, b))


def test_didemo_window_is_the_first_32_seconds():
    # 60 s at 25 fps, 1 frame per second: the frames of seconds 0..31 (32 of them), never 32..59.
    idx = sample_frame_indices(1500, 25.0, 1.0, None, rule="official", window=(0, 31))
    assert idx.tolist() == [25 * s for s in range(32)]
    assert sample_frame_indices(1500, 25.0, 1.0, None, rule="official").tolist() == [25 * s for s in range(60)]
    # A video shorter than the window is read whole, as the official min(end_time, duration).
    assert (sample_frame_indices(300, 25.0, 1.0, 64, rule="official", window=(0, 31)).tolist()
            == sample_frame_indices(300, 25.0, 1.0, 64, rule="official").tolist())


def test_exact_rule_window_is_sample_times_in_first_to_last_plus_one():
    assert sample_frame_indices(500, 25.0, 1.0, None, window=(2, 4)).tolist() == [50, 75, 100]
    assert sample_frame_indices(500, 25.0, 2.0, None, window=(2, 3)).tolist() == [50, 63, 75, 88]
    ntsc = sample_frame_indices(3000, 29.97, 1.0, None, window=(0, 31)).tolist()
    assert ntsc == [int(np.ceil(j * 29.97 - 1e-6)) for j in range(32)]
    for count, pos in itertools.product((7, 300, 1798), SLICE_CODES):  # no window: as before
        assert (sample_frame_indices(count, 29.97, 1.0, 12, pos, window=None).tolist()
                == sample_frame_indices(count, 29.97, 1.0, 12, pos).tolist())


def test_bad_windows_are_refused_by_name():
    for bad in ([3, 1], [-1, 4], [0.5, 4], [0], "0-31", [True, 3]):
        with pytest.raises(ValueError, match=r"window_seconds=.*expected \[first, last\]"):
            sample_frame_indices(100, 25.0, window=bad)
    with pytest.raises(ValueError, match=r"names frame rule\(s\) \['exakt'\]"):
        window_for_rule({"exakt": [0, 31]}, "exact")
    with pytest.raises(ValueError, match="applies to the uniform keyframes only"):
        KeyframeParams("maxdiff", window=(0, 31))


# ----------------------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------------------


def test_didemo_config_windows_the_official_rule_only():
    assert KeyframeParams.from_config(_didemo_cfg(), "train").window == (DIDEMO_START, DIDEMO_END)
    assert KeyframeParams.from_config(_didemo_cfg(), "test").window == (DIDEMO_START, DIDEMO_END)
    assert KeyframeParams.from_config(_didemo_cfg("dataset.frame_rule=exact"), "test").window is None
    assert KeyframeParams.from_config(_didemo_cfg("dataset.window_seconds=null"), "test").window is None
    assert KeyframeParams.from_config(_didemo_cfg("dataset.window_seconds.official=[0,60]"), "test").window == (0, 60)
    assert KeyframeParams.from_config(_didemo_cfg("dataset.keyframes=maxdiff"), "test").window is None
    other = OmegaConf.to_container(compose_cfg("train", ["dataset=msrvtt9k"]).dataset, resolve=True)
    assert KeyframeParams.from_config(other, "test").window is None  # the other datasets: whole videos
    assert window_for_rule([1, 2], "exact") == window_for_rule([1, 2], "official") == (1, 2)


def test_extraction_uses_the_datasets_window():
    from extract_frames import settings_from_config
    cfg = OmegaConf.to_container(compose_cfg("extract_frames", ["dataset=didemo"]), resolve=True)
    assert settings_from_config(cfg).keyframes.window == (DIDEMO_START, DIDEMO_END)
    cfg = OmegaConf.to_container(compose_cfg("extract_frames", ["dataset=didemo", "frame_rule=exact"]), resolve=True)
    assert settings_from_config(cfg).keyframes.window is None


# ----------------------------------------------------------------------------------------------
# A 40 s video: what is decoded
# ----------------------------------------------------------------------------------------------

FPS, SECONDS = 4, 40


class CountingCapture:
    """A real capture that records the frame numbers it grabs and retrieves, and any seek."""

    log: ClassVar[list] = []

    def __init__(self, cap):
        self.cap, self.pos = cap, 0
        self.grabbed, self.retrieved, self.seeks = [], [], []
        CountingCapture.log.append(self)

    def grab(self):
        ok = self.cap.grab()
        if ok:
            self.grabbed.append(self.pos)
            self.pos += 1
        return ok

    def retrieve(self, *args):
        self.retrieved.append(self.pos - 1)
        return self.cap.retrieve(*args)

    def read(self, *args):
        return self.retrieve(*args) if self.grab() else (False, None)

    def set(self, prop, value):
        self.seeks.append(value)
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.pos = int(value)
        return self.cap.set(prop, value)

    def __getattr__(self, name):
        return getattr(self.cap, name)


@pytest.fixture
def counting(monkeypatch):
    real = decode._open_capture
    CountingCapture.log = []
    monkeypatch.setattr(decode, "_open_capture", lambda path: CountingCapture(real(path)))
    return CountingCapture.log


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """40 s at 4 fps; frame n is a flat grey of value n (so a frame shows its own number)."""
    n = FPS * SECONDS
    frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 16, 16, 3)).copy()
    return write_video(tmp_path_factory.mktemp("window") / "long.avi", frames, FPS, fourcc="MJPG")


def test_frames_past_the_window_are_never_read_by_default(long_video, counting):
    params = KeyframeParams.from_config(_didemo_cfg(), "test")
    kf = select_keyframes(long_video, params)
    assert kf.indices.tolist() == [FPS * s for s in range(32)]  # seconds 0..31, 32 < max_frames=64
    assert np.abs(kf.frames[:, 8, 8, 0].astype(int) - kf.indices).max() <= 2  # they are those frames
    first_outside = FPS * (DIDEMO_END + 1)
    assert counting and all(not c.seeks for c in counting)
    assert max(i for c in counting for i in c.grabbed) < first_outside
    assert max(i for c in counting for i in c.retrieved) == FPS * DIDEMO_END


def test_the_exact_rule_reads_the_whole_video(long_video, counting):
    params = KeyframeParams.from_config(_didemo_cfg("dataset.frame_rule=exact"), "test")
    kf = select_keyframes(long_video, params)
    assert kf.indices.tolist() == [FPS * s for s in range(SECONDS)]
    assert max(i for c in counting for i in c.retrieved) == FPS * (SECONDS - 1)
    assert max(i for c in counting for i in c.grabbed) == FPS * SECONDS - 1  # to the end of the file


def test_a_window_past_the_end_of_a_video_is_an_unreadable_video(long_video):
    with pytest.raises(VideoReadError, match=r"no frame in window_seconds=\[45, 50\]"):
        sample_video(long_video, 1.0, 12, "uniform", "official", window=(45, 50))


def test_didemo_items_hold_the_first_32_seconds_under_the_official_rule(tmp_path):
    root = write_didemo(tmp_path / "didemo", seconds=SECONDS, fps=FPS)
    real = {}
    for rule, frames in (("official", 32), ("exact", SECONDS)):
        cfg = _didemo_cfg(f"dataset.root={root}", f"dataset.frame_rule={rule}")
        ds = build_split(cfg, root, "test", image_size=16, seed=0, progress=False)
        item = ds[0]
        assert int(item["video_mask"].sum()) == frames, rule
        real[rule] = item["video"][: frames]
    assert np.array_equal(real["official"].numpy(), real["exact"][:32].numpy())  # the same first 32 s


# ----------------------------------------------------------------------------------------------
# The frame cache keys on the window
# ----------------------------------------------------------------------------------------------


def test_a_cache_of_another_window_is_refused_not_reused(tmp_path):
    root = write_didemo(tmp_path / "didemo", seconds=SECONDS, fps=FPS)
    videos, missing = dataset_videos(_didemo_cfg(f"dataset.root={root}"), root)
    assert len(videos) == sum(map(len, DIDEMO.values())) and not missing
    whole = KeyframeParams.from_config(_didemo_cfg("dataset.window_seconds=null"), "test")
    windowed = KeyframeParams.from_config(_didemo_cfg(), "test")
    assert windowed.relevant()["window"] == [0, 31] and "window" not in whole.relevant()
    cache = tmp_path / "cache"
    extract_to_cache(videos, cache, ExtractSettings(keyframes=whole, size=16, progress=False))
    assert "window" not in load_manifest(cache)["params"]["keyframes"]
    with pytest.raises(ValueError, match=r"keyframes.window: None -> \[0, 31\]"):
        extract_to_cache(videos, cache, ExtractSettings(keyframes=windowed, size=16, progress=False))

    def split(*overrides):
        cfg = _didemo_cfg(f"dataset.root={root}", f"dataset.frame_cache.dir={cache}", *overrides)
        return build_split(cfg, root, "test", image_size=16, seed=0, progress=False)

    with pytest.raises(ValueError, match=r"window: cache has None, dataset wants \[0, 31\]"):
        split("dataset.frame_cache.use=auto")
    assert int(split("dataset.window_seconds=null")[0]["video_mask"].sum()) == SECONDS  # its own settings

    extract_to_cache(videos, cache, ExtractSettings(keyframes=windowed, size=16, progress=False, overwrite=True))
    assert load_manifest(cache)["params"]["keyframes"]["window"] == [0, 31]
    with pytest.raises(ValueError, match=r"window: cache has \[0, 31\], dataset wants None"):
        split("dataset.window_seconds=null")
    cached = split("dataset.frame_cache.use=true")[0]
    decoded = split("dataset.frame_cache.use=false")[0]
    assert int(cached["video_mask"].sum()) == 32
    assert np.array_equal(cached["video"].numpy(), decoded["video"].numpy())
