"""MSRVTTDataset on a small synthetic dataset (the same files and code path as real MSR-VTT)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data import MSRVTTDataset, MissingDataError, VideoReadError, collate_fn, ensure_synthetic_dataset
from data.video.transforms import CLIP_MEAN, CLIP_STD

SMALL = dict(num_train=40, num_val=10, num_test=12)
S = 32  # small CLIP input side keeps the tests fast; the code path is the same as 224


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("msrvtt") / "small", seed=0, progress=False, **SMALL)


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_train_item(root):
    ds = MSRVTTDataset(root, "train", image_size=S)
    assert len(ds) == 40 and ds.num_videos == 40
    item = ds[3]
    assert item["video_id"] == "video3" and item["index"] == 3
    assert item["text"] in ds.captions["video3"]
    assert item["video"].shape == (12, 3, S, S) and item["video"].dtype == torch.float32
    # 8 s clip at 1 fps -> 8 real frames, then zero padding to max_frames=12
    assert item["video_mask"].dtype == torch.int64 and item["video_mask"].tolist() == [1] * 8 + [0] * 4
    assert item["video"][8:].abs().sum() == 0 and item["video"][:8].abs().sum(dim=(1, 2, 3)).min() > 0


def test_max_frames_smaller_than_clip(root):
    item = MSRVTTDataset(root, "train", image_size=S, max_frames=4)[0]
    assert item["video"].shape == (4, 3, S, S) and item["video_mask"].tolist() == [1, 1, 1, 1]


def test_uint8_output_matches_normalised(root):
    f = MSRVTTDataset(root, "test", image_size=S)[0]["video"]
    u = MSRVTTDataset(root, "test", image_size=S, normalize=False)[0]["video"]
    assert u.dtype == torch.uint8
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(f[:8], (u[:8].float() / 255 - mean) / std)


def test_random_caption_is_deterministic_per_epoch(root):
    a = MSRVTTDataset(root, "train", image_size=S, seed=7)
    b = MSRVTTDataset(root, "train", image_size=S, seed=7)
    epochs = []
    for e in range(3):
        a.set_epoch(e)
        b.set_epoch(e)
        assert a.texts == b.texts
        if e == 0:  # items carry the same texts (decoding every item each epoch would be slow)
            assert [a[i]["text"] for i in range(0, len(a), 7)] == a.texts[::7]
        assert all(t in a.captions[v] for t, v in zip(a.texts, a.video_ids))
        epochs.append(a.texts)
    assert epochs[0] != epochs[1] != epochs[2]  # different draws per epoch
    a.set_epoch(0)
    assert a.texts == epochs[0]  # and repeatable
    assert MSRVTTDataset(root, "train", image_size=S, seed=8).texts != epochs[0]


def test_epoch_reaches_persistent_workers(root):
    ds = MSRVTTDataset(root, "train", image_size=8, max_frames=2)
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=collate_fn)
    for epoch in (0, 1):
        ds.set_epoch(epoch)  # before iter(loader): workers prefetch as soon as it starts
        texts = [t for batch in loader for t in batch["text"]]
        assert texts == ds.texts, f"epoch {epoch}: workers did not see set_epoch"


def test_all_mode_has_one_item_per_caption(root):
    ds = MSRVTTDataset(root, "train", caption_mode="all", image_size=S)
    assert len(ds) == 40 * 5 and ds.num_videos == 40
    pairs = set(zip(ds.video_ids, ds.texts))
    assert len(pairs) == 200 and all(t in ds.captions[v] for v, t in pairs)
    item = ds[7]
    assert (item["video_id"], item["text"]) == (ds.video_ids[7], ds.texts[7])


def test_test_and_val_follow_csv_rows(root):
    ds = MSRVTTDataset(root, "test", image_size=S)
    assert len(ds) == 12 and ds.num_videos == 12
    assert ds.video_ids == [f"video{50 + i}" for i in range(12)]
    assert ds[0]["text"] == ds.texts[0] and "moves" in ds.texts[0] and len(set(ds.texts)) == 12
    val = MSRVTTDataset(root, "val", image_size=S)
    assert val.video_ids == [f"video{40 + i}" for i in range(10)]


def test_7k_csv(root):
    assert len(MSRVTTDataset(root, "train", train_csv="MSRVTT_train.7k.csv", image_size=S)) == 31


def test_frame_orders(root):
    normal = MSRVTTDataset(root, "test", image_size=S)[2]["video"]
    rev = MSRVTTDataset(root, "test", image_size=S, frame_order="reverse")[2]["video"]
    torch.testing.assert_close(rev[:8], normal[:8].flip(0))
    rnd = MSRVTTDataset(root, "test", image_size=S, frame_order="random", seed=1)
    x, y = rnd[2]["video"], rnd[2]["video"]
    torch.testing.assert_close(x, y)  # deterministic for (seed, epoch, index)
    perm = [next(j for j in range(8) if torch.equal(x[i], normal[j])) for i in range(8)]
    assert sorted(perm) == list(range(8)) and perm != list(range(8))
    assert x[8:].abs().sum() == 0  # padding stays at the end


def test_collate(root):
    ds = MSRVTTDataset(root, "test", image_size=S)
    batch = collate_fn([ds[0], ds[1], ds[2]])
    assert batch["video"].shape == (3, 12, 3, S, S) and batch["video_mask"].shape == (3, 12)
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["text"] == ds.texts[:3] and batch["video_id"] == ds.video_ids[:3]


def test_frame_cache_equals_decoding_and_works_with_workers(root):
    plain = MSRVTTDataset(root, "val", image_size=S)
    cached = MSRVTTDataset(root, "val", image_size=S, cache_frames=True, progress=False)
    assert len(cached._ram) == 10
    for i in range(len(plain)):
        torch.testing.assert_close(cached[i]["video"], plain[i]["video"])
    loader = DataLoader(cached, batch_size=5, num_workers=2, collate_fn=collate_fn)
    got = torch.cat([b["video"] for b in loader])
    torch.testing.assert_close(got, torch.stack([plain[i]["video"] for i in range(len(plain))]))
    with pytest.raises(MemoryError, match="budget"):
        MSRVTTDataset(root, "val", image_size=S, cache_frames=True, cache_budget_bytes=100_000, progress=False)


def test_frame_cache_pickles_without_its_numpy_view(root):
    import pickle
    cached = MSRVTTDataset(root, "val", image_size=S, cache_frames=True, progress=False)
    store = cached._ram
    vid = cached.video_order[3]
    frames = store.get(vid)  # makes the per-process numpy view
    assert not frames.flags.writeable  # a view into the shared store: nobody may write to it
    state = store.__getstate__()
    assert "_flat" not in state and state["_data"] is store._data
    again = pickle.loads(pickle.dumps(store))  # what a spawned DataLoader worker receives
    for v in cached.video_order:
        np.testing.assert_array_equal(again.get(v), store.get(v))


# ---- missing and broken files ------------------------------------------------------------------


def test_missing_videos_are_all_listed_up_front(copy):
    for i in (1, 5, 33):
        (copy / "videos" / f"video{i}.mp4").unlink()
    with pytest.raises(MissingDataError) as e:
        MSRVTTDataset(copy, "train", image_size=S)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert len(e.value.missing) == 3
    for i in (1, 5, 33):
        assert f"video{i}{{.mp4,.webm}}" in msg
    assert "Expected layout" in msg and "MSRVTT_train.9k.csv" in msg
    MSRVTTDataset(copy, "test", image_size=S)  # other splits are unaffected


def test_long_missing_list_is_truncated_in_the_message(copy):
    shutil.rmtree(copy / "videos")
    (copy / "MSRVTT_data.json").unlink()
    with pytest.raises(MissingDataError) as e:
        MSRVTTDataset(copy, "train", image_size=S)
    assert len(e.value.missing) == 41  # the JSON + 40 videos
    assert "MSRVTT_data.json" in e.value.missing[0]
    assert "... and 21 more" in str(e.value)


def test_missing_csv(copy):
    (copy / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="MSRVTT_JSFUSION_test.csv"):
        MSRVTTDataset(copy, "test", image_size=S)


def test_webm_videos_are_found(copy):
    (copy / "videos" / "video52.mp4").rename(copy / "videos" / "video52.webm")
    ds = MSRVTTDataset(copy, "test", image_size=S)
    assert ds.video_path("video52").suffix == ".webm"
    assert ds[2]["video_mask"].sum() == 8


def test_undecodable_video_raises_naming_it(copy):
    (copy / "videos" / "video51.mp4").write_text("not a video")
    ds = MSRVTTDataset(copy, "test", image_size=S, verify=False)  # verified splits refuse up front
    with pytest.raises(VideoReadError, match="video51.mp4"):
        ds[1]


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="split"):
        MSRVTTDataset(root, "validation")
    with pytest.raises(ValueError, match="caption_mode"):
        MSRVTTDataset(root, caption_mode="first")
    with pytest.raises(ValueError, match="max_frames"):
        MSRVTTDataset(root, max_frames=0)


def test_csv_without_expected_column(copy):
    (copy / "MSRVTT_val.csv").write_text("id,text\n1,hello\n")
    with pytest.raises(ValueError, match=r"MSRVTT_val.csv.*missing column"):
        MSRVTTDataset(copy, "val", image_size=S)


# ---- evaluation interface ----------------------------------------------------------------------


def test_evaluation_interface(root):
    ds = MSRVTTDataset(root, "test", image_size=S, max_frames=4)
    assert ds.texts == [ds[i]["text"] for i in range(len(ds))] and ds.text_video_ids == ds.video_ids
    videos = ds.video_dataset()
    assert len(videos) == ds.num_videos == 12 and videos.video_ids == ds.video_order == ds.text_video_ids
    item = videos[3]
    assert set(item) == {"video_id", "video", "video_mask", "index"} and item["index"] == 3
    torch.testing.assert_close(item["video"], ds[3]["video"])
    batch = next(iter(DataLoader(videos, batch_size=5, collate_fn=collate_fn)))
    assert batch["video_id"] == ds.video_order[:5] and "text" not in batch
    train = MSRVTTDataset(root, "train", caption_mode="all", image_size=S)
    assert train.text_video_index == [i for i in range(40) for _ in range(5)]
