"""End to end on an MSR-VTT-format folder: extract a maxdiff frame cache, train a tiny model
from it (the model's 32px input resized from the 48px cache), test on the other scheme."""

from pathlib import Path

import pytest

from data.splits import build_split, split_sampling
from clip4clip.engine.train_job import run_training
from data.frames.store import load_manifest
from toy_datasets import write_msrvtt_folder
from extract_frames import run_extraction
from framework_utils import TINY_MODEL, compose_cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_msrvtt_folder(tmp_path_factory.mktemp("e2e") / "msrvtt", num_train=8, num_test=4, captions=3)


def test_extract_then_train_on_maxdiff_and_test_on_uniform(root, tmp_path):
    data = [f"dataset.root={root}", "dataset.max_frames=4", "dataset.frame_cache.size=48"]
    report, _ = run_extraction(compose_cfg("extract_frames", ["dataset=msrvtt9k", *data, "keyframes=maxdiff",
                                                              "workers=0", "progress=false"]))
    assert len(report.extracted) == 12 and not report.failed
    assert load_manifest(root / "frames" / "maxdiff-48")["params"]["size"] == 48

    # The thesis' comparison is a sweep over these two values (see configs/dataset/*.yaml):
    #   python train.py --multirun dataset.keyframes=uniform,maxdiff dataset.eval_keyframes=uniform,maxdiff
    overrides = ["+experiment=demo", *TINY_MODEL, "dataset=msrvtt9k", *data, "dataset.keyframes=maxdiff",
                 "dataset.eval_keyframes=uniform", f"paths.output_dir={tmp_path / 'run'}", "trainer.epochs=1",
                 "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.progress=false",
                 "trainer.threads=1", "trainer.num_workers=0", "trainer.tensorboard=false"]
    cfg = compose_cfg("train", overrides)
    assert (split_sampling(cfg.dataset, "train").scheme, split_sampling(cfg.dataset, "test").scheme) == ("maxdiff", "uniform")
    metrics, objs = run_training(cfg)
    train_ds = objs["trainer"].train_loader.dataset
    assert train_ds.frame_store is not None and train_ds.frame_store.directory == root / "frames" / "maxdiff-48"
    assert train_ds[0]["video"].shape == (4, 3, 32, 32)
    assert metrics["test"]["t2v"]["num_queries"] == 4 and len(metrics["history"]) == 1
    test_ds = build_split(cfg.dataset, root, "test", 32, 0, progress=False)
    assert test_ds.keyframe_params.scheme == "uniform" and test_ds.frame_store is None  # decoded on the fly
