"""Missing, unreadable and zero-frame videos: refused or dropped up front for evaluation, skipped
and counted in training batches, never turned into all-zero samples."""

import shutil
import warnings
from pathlib import Path

import cv2
import pytest
import torch

from clip4clip.engine.tokenize_collate import TokenizeCollate
from data.splits import build_split
from data import (
    BrokenVideoWarning,
    MissingDataError,
    MissingVideosWarning,
    MSRVTTDataset,
    UnreadableVideosError,
    VideoReadError,
    collate_fn,
)
from toy_datasets import write_msrvtt_folder

S = 16


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_msrvtt_folder(tmp_path_factory.mktemp("policy") / "msrvtt", num_train=6, num_test=4, captions=2)


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "copy"))


def zero_frame_video(path: Path) -> None:
    """A valid AVI container holding no frame at all, under ``path`` (FFmpeg probes content)."""
    avi = path.with_suffix(".tmp.avi")
    cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"XVID"), 4, (64, 64)).release()
    avi.replace(path)


def fake_tokenizer(texts, max_words, return_lengths=False):
    out = torch.zeros(len(texts), max_words, dtype=torch.long), torch.ones(len(texts), max_words, dtype=torch.long)
    return (*out, torch.ones(len(texts), dtype=torch.long)) if return_lengths else out


# ---- evaluation splits: refuse, or drop and say so ---------------------------------------------


def test_missing_test_video_is_refused_then_dropped_when_allowed(root):
    (root / "videos" / "video7.mp4").unlink()
    with pytest.raises(MissingDataError, match=r"video7\{\.mp4,\.webm\}") as e:
        MSRVTTDataset(root, "test", image_size=S)
    assert "allow_missing" in str(e.value)
    with pytest.warns(MissingVideosWarning, match=r"1 video\(s\) missing or unreadable.*video7"):
        ds = MSRVTTDataset(root, "test", image_size=S, allow_missing=True)
    assert ds.missing_videos == ["video7"] and "file not found" in ds.missing_reasons["video7"]
    assert "video7" not in ds.text_video_ids and len(ds.texts) == 3 and ds.num_videos == 3
    assert [it["video_id"] for it in ds.video_dataset()] == ["video6", "video8", "video9"]


@pytest.mark.parametrize("damage", ["zero_bytes", "text", "zero_frames", "truncated"])
def test_unreadable_test_video_is_refused_up_front_naming_it(root, damage):
    p = root / "videos" / "video8.mp4"
    if damage == "zero_bytes":
        p.write_bytes(b"")
    elif damage == "text":
        p.write_text("not a video\n" * 30)
    elif damage == "zero_frames":
        zero_frame_video(p)
    else:
        p.write_bytes(p.read_bytes()[:400])
    with pytest.raises(UnreadableVideosError, match=r"1 of 4 video\(s\) cannot be read") as e:
        MSRVTTDataset(root, "test", image_size=S)
    assert len(e.value.missing) == 1 and "video8.mp4" in e.value.missing[0]
    if damage == "zero_frames":
        assert "no frame decodes" in e.value.missing[0]
    with pytest.warns(MissingVideosWarning):
        ds = build_split({"name": "msrvtt"}, root, "test", S, 0, progress=False, allow_missing=True)
    assert ds.missing_videos == ["video8"] and len(ds) == 3


def test_a_split_with_every_video_gone_is_an_error(root):
    shutil.rmtree(root / "videos")
    with pytest.raises(ValueError, match="no items left"), warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingVideosWarning)
        MSRVTTDataset(root, "test", image_size=S, allow_missing=True)


# ---- training: skip and count ------------------------------------------------------------------


def test_broken_training_video_becomes_a_marked_item_not_zeros(root):
    (root / "videos" / "video2.mp4").write_text("garbage")
    ds = MSRVTTDataset(root, "train", image_size=S)  # train is not checked up front (9k videos)
    with pytest.raises(VideoReadError, match="video2.mp4"):
        ds[2]
    ds = MSRVTTDataset(root, "train", image_size=S, skip_broken=True)
    item = ds[2]
    assert "video2.mp4" in item["broken"] and "video" not in item and item["text"] in ds.captions["video2"]
    assert "broken" not in ds[1]


def test_collate_drops_broken_items_and_counts_them(root):
    (root / "videos" / "video2.mp4").write_text("garbage")
    zero_frame_video(root / "videos" / "video4.mp4")
    ds = build_split({"name": "msrvtt", "max_frames": 4}, root, "train", S, 0, progress=False)  # skip_broken default
    collate = TokenizeCollate(fake_tokenizer, max_words=8)
    with pytest.warns(BrokenVideoWarning, match="video2"):
        batch = collate([ds[i] for i in range(4)])
    assert batch["num_broken"] == 1 and batch["broken"][0][0] == "video2"
    assert batch["video_id"] == ["video0", "video1", "video3"] and batch["video"].shape == (3, 4, 3, S, S)
    assert batch["input_ids"].shape == (3, 8) and len(batch["text"]) == 3
    with pytest.warns(BrokenVideoWarning):
        empty = collate([ds[2], ds[4]])
    assert empty == {"empty": True, "num_broken": 2, "broken": empty["broken"]} and len(empty["broken"]) == 2
    assert "no decodable frames" in dict(empty["broken"])["video4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = collate_fn([ds[0], ds[1]])
    assert ok["num_broken"] == 0 and ok["broken"] == []


def test_broken_videos_in_the_in_memory_cache_are_recorded(root):
    (root / "videos" / "video3.mp4").write_text("garbage")
    ds = MSRVTTDataset(root, "train", image_size=S, cache_frames=True, skip_broken=True, progress=False)
    assert list(ds._ram.broken) == ["video3"] and len(ds._ram) == 5
    assert "video3.mp4" in ds[3]["broken"] and ds[0]["video_mask"].sum() == 4
    with pytest.raises(UnreadableVideosError, match="video3.mp4"):
        MSRVTTDataset(root, "train", image_size=S, cache_frames=True, verify=True, progress=False)


def test_missing_training_video_needs_allow_missing(root):
    (root / "videos" / "video0.mp4").unlink()
    with pytest.raises(MissingDataError, match="video0"):
        build_split({"name": "msrvtt"}, root, "train", S, 0, progress=False)
    with pytest.warns(MissingVideosWarning):
        ds = build_split({"name": "msrvtt", "allow_missing": True}, root, "train", S, 0, progress=False)
    assert ds.missing_videos == ["video0"] and len(ds) == 5
