"""A run checks what it can before the first step, and reports what it skipped or cut."""
import csv
import json
import shutil

import pytest

from clip4clip.engine.train_job import run_training
from data import MissingDataError
from framework_utils import compose_cfg, tiny_train_overrides

QUICK = ["trainer.epochs=1", "trainer.tensorboard=false"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The tiny synthetic dataset, generated once; tests edit copies of it."""
    root = tmp_path_factory.mktemp("checks") / "synthetic"
    run_training(compose_cfg("train", tiny_train_overrides(tmp_path_factory.mktemp("warm"), root, QUICK)))
    return root


@pytest.fixture
def data(tmp_path, generated):
    copy = tmp_path / "synthetic"
    shutil.copytree(generated, copy)
    return copy


def _train_ids(root):
    with open(root / "MSRVTT_train.9k.csv", newline="") as f:
        return [r["video_id"] for r in csv.DictReader(f)]


def _test_ids(root):
    with open(root / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        return [r["video_id"] for r in csv.DictReader(f)]


@pytest.mark.parametrize("key,value", [("trainer.batch_size", "2.5"), ("trainer.epochs", "1.5"),
                                       ("trainer.eval_batch_size", "true"), ("model.max_words", "16.5"),
                                       ("dataset.max_frames", "3.5"), ("trainer.num_workers", "0.5"),
                                       ("trainer.checkpoint_every_steps", "-1")])
def test_non_integer_counts_are_refused_naming_the_key(tmp_path, data, key, value):
    with pytest.raises(ValueError, match=f"{key}={value if value != 'true' else 'True'}.*whole number"):
        run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data, QUICK + [f"{key}={value}"])))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("value", ["maybe", "1"])
def test_a_flag_that_is_not_true_or_false_is_refused_naming_the_key(tmp_path, data, value):
    with pytest.raises(ValueError, match=f"trainer.keep_freed_memory={value if value == '1' else repr(value)}; expected true or false"):
        run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data,
                                                               QUICK + [f"trainer.keep_freed_memory={value}"])))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_integral_float_counts_are_accepted(tmp_path, data):
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data,
                                                                        QUICK + ["trainer.batch_size=16.0"])))
    assert metrics["history"][0]["step"] == 3  # 48 clips / 16


def test_missing_test_video_fails_before_training(tmp_path, data):
    (data / "videos" / f"{_test_ids(data)[0]}.mp4").unlink()
    with pytest.raises(MissingDataError, match="'test'"):
        run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data, QUICK)))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_header_only_test_csv_fails_before_training(tmp_path, data):
    path = data / "MSRVTT_JSFUSION_test.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="MSRVTT_JSFUSION_test.csv: no rows"):
        run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data, QUICK)))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_checkpoints_path_that_is_a_file_fails_before_training(tmp_path, data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("not a folder")
    with pytest.raises(PermissionError, match="checkpoints is a file"):
        run_training(compose_cfg("train", tiny_train_overrides(out, data, QUICK)))


def test_empty_and_over_long_captions_are_counted_and_reported_once(tmp_path, data, capsys):
    path = data / "MSRVTT_data.json"
    annotations = json.loads(path.read_text())
    empty_vid, long_vid = _train_ids(data)[:2]
    for s in annotations["sentences"]:
        if s["video_id"] == empty_vid:
            s["caption"] = "   "
        elif s["video_id"] == long_vid:
            s["caption"] = "a red circle moves left " * 2000  # 10,000 characters
    path.write_text(json.dumps(annotations))
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "run", data,
                                                                        ["trainer.tensorboard=false"])))
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "were longer than model.max_words=16" in line]
    assert len(warnings) == 1, out  # once per run, although both epochs saw them
    assert "cut to their first 14 tokens" in warnings[0] and "1 were empty" in warnings[0]
    for record in metrics["history"]:
        assert record["captions"] == {"seen": 48, "cut": 1, "empty": 1}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["captions"] == {"seen": 96, "cut": 2, "empty": 2}


def test_skipped_training_videos_are_reported_each_epoch_and_in_metrics(tmp_path, data, capsys):
    broken = _train_ids(data)[3]
    (data / "videos" / f"{broken}.mp4").write_bytes(b"not a video")
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        tmp_path / "run", data, ["trainer.tensorboard=false", "trainer.log_every=1000"])))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "unreadable training video(s) skipped" in line]
    assert len(lines) == 2 and all(broken in line for line in lines), out  # both epochs
    for record in metrics["history"]:
        assert list(record["skipped_videos"]) == [broken]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["skipped_videos"]["count"] == 1 and broken in saved["skipped_videos"]["videos"]
