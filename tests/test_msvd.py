"""MSVD reader (official layout, multi-caption evaluation) and a tiny end-to-end run on it."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.train_job import run_training
from data import MissingDataError, MSVDDataset, collate_fn
from toy_datasets import write_msvd_folder
from framework_utils import TINY_MODEL, compose_cfg

S = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_msvd_folder(tmp_path_factory.mktemp("msvd") / "msvd", splits=(6, 2, 3), captions=4)


@pytest.fixture
def copy(root, tmp_path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_captions_are_token_lists_joined_and_every_pair_is_an_item(root):
    raw = pickle.loads((root / "raw-captions.pkl").read_bytes())
    ds = MSVDDataset(root, "train", image_size=S, max_frames=4)
    assert ds.num_videos == 6 and len(ds) == 24  # caption_mode "all", as CLIP4Clip trains on MSVD
    first = (root / "train_list.txt").read_text().split()[0]
    assert ds.captions[first] == [" ".join(toks) for toks in raw[first]]
    item = ds[5]
    assert (item["video_id"], item["text"]) == (ds.text_video_ids[5], ds.texts[5])
    assert item["video"].shape == (4, 3, S, S) and item["video_mask"].tolist() == [1, 1, 1, 1]
    assert ds.video_path(first).suffix == ".avi"
    rnd = MSVDDataset(root, "train", image_size=S, caption_mode="random")
    assert len(rnd) == 6 and all(t in rnd.captions[v] for t, v in zip(rnd.texts, rnd.video_ids))


def test_test_split_scores_every_caption_and_decodes_each_video_once(root, monkeypatch):
    ds = MSVDDataset(root, "test", image_size=S)
    ids = (root / "test_list.txt").read_text().split()
    assert len(ds.texts) == 12 and ds.text_video_ids == [v for v in ids for _ in range(4)]
    assert ds.text_video_index == [i for i in range(3) for _ in range(4)]
    videos = ds.video_dataset()
    assert len(videos) == 3 and videos.video_ids == ids
    import data.readers.base as base
    calls = []
    original = base.select_keyframes
    monkeypatch.setattr(base, "select_keyframes", lambda p, k: calls.append(Path(p).stem) or original(p, k))
    batch = collate_fn([videos[i] for i in range(3)])
    assert calls == ids and batch["video_id"] == ids and batch["index"].tolist() == [0, 1, 2]
    assert "text" not in batch and batch["video"].shape == (3, 12, 3, S, S)
    assert torch.equal(batch["video"][1], ds[4]["video"])  # same frames as the caption items


def test_missing_files_are_listed_in_one_error_with_the_layout(copy):
    (copy / "raw-captions.pkl").unlink()
    vids = (copy / "val_list.txt").read_text().split()
    (copy / "YouTubeClips" / f"{vids[1]}.avi").unlink()
    with pytest.raises(MissingDataError) as e:
        MSVDDataset(copy, "val", image_size=S)
    assert len(e.value.missing) == 2
    msg = str(e.value)
    assert "raw-captions.pkl" in msg and f"{vids[1]}{{.avi,.mp4}}" in msg
    assert "val_list.txt  (one video id per line)" in msg and "YouTubeClips/<video_id>.avi" in msg


def test_bad_caption_file_is_named(copy):
    with open(copy / "raw-captions.pkl", "wb") as f:
        pickle.dump([["not", "a", "dict"]], f)
    with pytest.raises(ValueError, match=r"raw-captions.pkl: holds a list; expected a dict"):
        MSVDDataset(copy, "test", image_size=S)


class _TouchOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_crafted_caption_pickle_runs_no_code(copy, tmp_path):
    marker = tmp_path / "marker"
    raw = pickle.loads((copy / "raw-captions.pkl").read_bytes())
    first = next(iter(raw))
    raw[first] = [_TouchOnLoad(marker)] + raw[first]
    (copy / "raw-captions.pkl").write_bytes(pickle.dumps(raw))
    with pytest.raises(ValueError) as e:
        MSVDDataset(copy, "train", image_size=S)
    assert not marker.exists()
    assert str(e.value) == (f"{copy / 'raw-captions.pkl'}: refused to unpickle 'posix.system': raw-captions.pkl may "
                            "hold only dicts, lists and strings (a pickle that names a class or function can run code)")


def test_truncated_caption_pickle_is_named(copy):
    data = (copy / "raw-captions.pkl").read_bytes()
    (copy / "raw-captions.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"raw-captions.pkl: cannot unpickle \(truncated or not a pickle: ") as e:
        MSVDDataset(copy, "test", image_size=S)
    assert "\n" not in str(e.value)


def test_missing_test_video_policy(copy):
    vid = (copy / "test_list.txt").read_text().split()[0]
    (copy / "YouTubeClips" / f"{vid}.avi").unlink()
    with pytest.raises(MissingDataError, match=vid):
        MSVDDataset(copy, "test", image_size=S)
    with pytest.warns(UserWarning, match=r"1 video\(s\) missing"):
        ds = MSVDDataset(copy, "test", image_size=S, allow_missing=True)
    assert ds.missing_videos == [vid] and len(ds.texts) == 8 and vid not in ds.text_video_ids


def test_tiny_training_and_multi_caption_evaluation(root, tmp_path):
    out = tmp_path / "run"
    overrides = ["+experiment=demo", *TINY_MODEL, "dataset=msvd", f"dataset.root={root}", f"paths.output_dir={out}",
                 "dataset.max_frames=4", "trainer.epochs=1", "trainer.batch_size=8", "trainer.eval_batch_size=8",
                 "trainer.progress=false", "trainer.threads=1", "trainer.num_workers=0", "trainer.tensorboard=false"]
    metrics, _ = run_training(compose_cfg("train", overrides))
    assert metrics["test"]["t2v"]["num_queries"] == 12  # every test caption is a query
    assert metrics["val"]["t2v"]["num_queries"] == 8
    ev = compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}", f"paths.output_dir={tmp_path / 'ev'}",
                                  "trainer.progress=false"])
    result, _ = run_evaluation(ev)
    assert (result["dataset"], result["num_texts"], result["num_videos"]) == ("msvd", 12, 3)
    assert result["metrics"]["t2v"]["R1"] == pytest.approx(metrics["test"]["t2v"]["R1"])
