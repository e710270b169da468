"""Shared, cached resources for the search tests (tests/test_search*.py).

Training the tiny model and building the indexes take seconds each; they are made once per
test session (cached here, in the session's temporary folder) and reused by every module.

The model: a tiny CLIP (framework_utils.TINY_MODEL) trained from scratch on a small synthetic set for a few
seconds. Random weights would make "search for a caption, find its video in the top 3"
meaningless, and hand-built "exact" encoders would not exercise a real checkpoint; a short
run reliably learns colour and background (2 of the 4 attributes), which the test captions
are chosen to rely on in aggregate (see test_search_index.py).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from framework_utils import REPO, TINY_MODEL, compose_cfg

SHARED = REPO.parent / "shared"
REAL_VIDEOS = SHARED / "testdata" / "videos"

TRAIN_OVERRIDES = [
    "+experiment=demo", "model/head=meanP", *TINY_MODEL,
    "dataset.generator.num_train=256", "dataset.generator.num_val=16", "dataset.generator.num_test=24",
    "dataset.max_frames=4", "dataset.fps=0.5",
    "trainer.epochs=12", "trainer.batch_size=32", "trainer.eval_batch_size=32",
    "trainer.progress=false", "trainer.log_every=1000", "trainer.threads=1", "trainer.tensorboard=false",
    "trainer.vis_queries=0",
    # A 96-step run: the demo's from-scratch schedule (text tower held 500 steps, minimal-pair
    # batches, scale 100) is built for ~1000 steps; plain CLIP training learns faster here.
    "optim.hold_text_steps=0", "trainer.shuffle_block=1", "model.clip.logit_scale_init=null",
    "model.clip.vision_pos_init_std=null",
]

_cache: dict = {}


def base_dir(tmp_path_factory) -> Path:
    """One folder per test session for everything cached here."""
    path = tmp_path_factory.getbasetemp() / "search_shared"
    path.mkdir(exist_ok=True)
    return path


def real_videos() -> Path:
    """The three real clips; a missing folder fails the test (never skips it)."""
    import pytest
    if not REAL_VIDEOS.is_dir() or len(list(REAL_VIDEOS.glob("*.*"))) < 3:
        pytest.fail(f"real test clips not found at {REAL_VIDEOS}: the tests expect the project's 'shared' "
                    "folder beside the repository", pytrace=False)
    return REAL_VIDEOS


def trained_run(base: Path) -> dict:
    """{'checkpoint': best.pt, 'data': synthetic dataset root, 'run': run folder}, trained once."""
    if "run" not in _cache:
        from clip4clip.engine.train_job import run_training
        run, data = base / "run", base / "synthetic"
        cfg = compose_cfg("train", [*TRAIN_OVERRIDES, f"dataset.root={data}", f"paths.output_dir={run}"])
        run_training(cfg)
        _cache["run"] = {"checkpoint": run / "checkpoints" / "best.pt", "data": data, "run": run}
    return _cache["run"]


def split_captions(data: Path) -> dict:
    """video_id -> caption of the synthetic test split (unique captions)."""
    import csv
    with open(data / "MSRVTT_JSFUSION_test.csv", newline="", encoding="utf-8") as f:
        return {r["video_id"]: r["sentence"] for r in csv.DictReader(f)}


def synthetic_library(base: Path, data: Path) -> Path:
    """A library of the test-split clips in the MSR-VTT layout (videos/ + MSRVTT_data.json), so
    the index stores their captions. Copies, not links: the tests delete and add files."""
    lib = base / "synthetic_library"
    if not lib.exists():
        (lib / "videos").mkdir(parents=True)
        for vid in split_captions(data):
            shutil.copy2(data / "videos" / f"{vid}.mp4", lib / "videos" / f"{vid}.mp4")
        shutil.copy2(data / "MSRVTT_data.json", lib / "MSRVTT_data.json")
    return lib


def encoder(checkpoint: Path):
    from clip4clip.search import Encoder
    key = ("encoder", str(checkpoint))
    if key not in _cache:
        _cache[key] = Encoder.load(str(checkpoint))
    return _cache[key]


def built_index(name: str, videos: Path, checkpoint: Path, base: Path, **kwargs) -> Path:
    """An index of ``videos`` built once per session under ``base/name``."""
    key = ("index", name)
    if key not in _cache:
        from clip4clip.search import build_index
        out = base / name
        report = build_index(videos, out, encoder(checkpoint), progress=False, **kwargs)
        assert not report.failed, report.summary()
        _cache[key] = out
    return _cache[key]


def run_cli(*args: str, cwd: Path = REPO):
    """``python -m clip4clip.search ARGS`` in a subprocess: (returncode, stdout, stderr)."""
    import subprocess
    p = subprocess.run([sys.executable, "-m", "clip4clip.search", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def splice(first: Path, second: Path, out: Path, seconds_each: float = 4.0) -> None:
    """Write a video showing ``first`` for its first ``seconds_each`` s, then ``second`` from
    that time on (same size and rate; the synthetic clips are 64x64 at 4 fps)."""
    import cv2
    frames = []
    for path, keep in ((first, lambda t: t < seconds_each), (second, lambda t: t >= seconds_each)):
        cap = cv2.VideoCapture(str(path))
        fps = cap.get(cv2.CAP_PROP_FPS)
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if keep(i / fps):
                frames.append(frame)
            i += 1
        cap.release()
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()


# Session fixtures shared by the search test files (import them by name).
@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """One temp folder per test session for the trained run, libraries and indexes."""
    return base_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def run(base):
    """The tiny model trained once per session (see ``trained_run``)."""
    return trained_run(base)
