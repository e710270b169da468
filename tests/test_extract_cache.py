"""Frame-cache extraction: reports, resumability, crashes, settings; cache == on-the-fly frames."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data.frames.extract as extract
from data import FrameStore, KeyframeParams, MSVDDataset, select_keyframes
from data.frames.extract import ExtractSettings, extract_to_cache, videos_in_folder
from data.frames.store import load_manifest
from toy_datasets import write_msrvtt_folder
from data.video.transforms import clip_resize_crop
from extract_frames import run_extraction
from framework_utils import REPO, compose_cfg

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"
REAL = ["arm_wrestling.mp4", "eye_makeup.avi", "pool_cleaning.mp4"]


def settings(scheme="uniform", size=32, **kw):
    return ExtractSettings(keyframes=KeyframeParams(scheme, max_frames=kw.pop("max_frames", 4)), size=size,
                           progress=False, **kw)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """The three real clips beside a truncated mp4, a zero-byte file and a text file named .mp4."""
    d = tmp_path_factory.mktemp("messy")
    for n in REAL:
        shutil.copy(VIDEOS / n, d / n)
    data = (VIDEOS / "arm_wrestling.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "zero.mp4").touch()
    (d / "notes.mp4").write_text("this is not a video\n" * 40)
    (d / "readme.txt").write_text("not a video extension: ignored")
    return d


def test_broken_files_are_reported_by_name_and_the_rest_completes(messy, tmp_path):
    videos = videos_in_folder(messy)
    assert sorted(videos) == ["arm_wrestling", "eye_makeup", "notes", "pool_cleaning", "truncated", "zero"]
    report = extract_to_cache(videos, tmp_path / "c", settings(workers=2))  # worker processes
    assert sorted(report.extracted) == ["arm_wrestling", "eye_makeup", "pool_cleaning"]
    failures = json.loads(report.failures_file.read_text())
    assert failures == report.failed and sorted(failures) == ["notes", "truncated", "zero"]
    assert "empty (0 bytes)" in failures["zero"]["reason"]
    assert "cannot open" in failures["truncated"]["reason"] and failures["truncated"]["source"].endswith("truncated.mp4")
    assert "cannot open" in failures["notes"]["reason"]
    summary = report.summary()
    assert all(n in summary for n in ("notes", "truncated", "zero")) and "3 failed" in summary
    assert sorted(load_manifest(tmp_path / "c")["videos"]) == sorted(report.extracted)
    assert not (tmp_path / "c" / ".extract.lock").exists()


def test_missing_dataset_video_is_reported_and_the_others_extracted(tmp_path):
    root = write_msrvtt_folder(tmp_path / "msrvtt", num_train=3, num_test=2)
    (root / "videos" / "video1.mp4").unlink()
    (root / "videos" / "video4.mp4").write_bytes(b"")
    cfg = compose_cfg("extract_frames", ["dataset=msrvtt9k", f"dataset.root={root}", "workers=0", "progress=false",
                                         "size=32"])
    report, _ = run_extraction(cfg)
    assert report.out_dir == root / "frames" / "uniform-32"
    assert sorted(report.extracted) == ["video0", "video2", "video3"]
    assert report.failed["video1"]["reason"] == "file does not exist" and "video1" in report.failed["video1"]["source"]
    assert "empty" in report.failed["video4"]["reason"]


def test_entries_hold_what_the_loader_and_users_need(tmp_path):
    report = extract_to_cache({"pool": VIDEOS / "pool_cleaning.mp4"}, tmp_path, settings(size=48))
    e = load_manifest(tmp_path)["videos"]["pool"]
    assert e["indices"] == [0, 90, 180, 270] and e["timestamps"] == [0.0, 3.0, 6.0, 9.0]
    assert (e["fps"], e["video_frames"], e["duration"]) == (30.0, 300, 10.0)
    assert e["source"].endswith("pool_cleaning.mp4") and e["source_bytes"] == (VIDEOS / "pool_cleaning.mp4").stat().st_size
    arr = np.load(tmp_path / e["array"])
    expected = clip_resize_crop(select_keyframes(VIDEOS / "pool_cleaning.mp4", KeyframeParams(max_frames=4)).frames, 48)
    np.testing.assert_array_equal(arr, expected)
    assert len(e["frames"]) == 4 and all((tmp_path / f).is_file() for f in e["frames"])
    jpeg = FrameStore(tmp_path, "jpeg").load("pool")
    assert jpeg.shape == arr.shape and np.abs(jpeg.astype(int) - arr).mean() < 5  # lossy (4:2:0 at 48px), close
    assert report.extracted == ["pool"]


def test_second_run_skips_finished_videos_and_retries_failures(messy, tmp_path, monkeypatch):
    videos = videos_in_folder(messy)
    extract_to_cache(videos, tmp_path, settings())
    calls = []
    original = extract.extract_one
    monkeypatch.setattr(extract, "extract_one", lambda vid, *a: calls.append(vid) or original(vid, *a))
    report = extract_to_cache(videos, tmp_path, settings())
    assert sorted(report.skipped) == ["arm_wrestling", "eye_makeup", "pool_cleaning"]
    assert sorted(calls) == ["notes", "truncated", "zero"] and len(report.failed) == 3
    calls.clear()
    report = extract_to_cache(videos, tmp_path, settings(retry_failed=False))
    assert calls == [] and len(report.failed) == 3
    os.utime(messy / "eye_makeup.avi", (1, 1))  # a replaced source is extracted again
    report = extract_to_cache(videos, tmp_path, settings(retry_failed=False))
    assert calls == ["eye_makeup"] and report.extracted == ["eye_makeup"]


def test_a_crash_mid_video_leaves_no_entry_for_it(messy, tmp_path, monkeypatch):
    videos = {n: messy / f"{n}{Path(f).suffix}" for n, f in zip(["arm_wrestling", "eye_makeup", "pool_cleaning"], REAL)}
    real_write = extract.write_video_frames

    def dying_write(out_dir, video_id, frames, formats, quality):
        if video_id == "eye_makeup":  # its .npy is complete, its JPEGs are being written: killed
            real_write(out_dir, video_id, frames, ("npy",), quality)
            raise KeyboardInterrupt("simulated kill")
        return real_write(out_dir, video_id, frames, formats, quality)

    monkeypatch.setattr(extract, "write_video_frames", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract_to_cache(videos, tmp_path, settings())
    entries = load_manifest(tmp_path)["videos"]
    assert list(entries) == ["arm_wrestling"]  # finished before the crash: kept; the crashed one: absent
    assert not (tmp_path / ".extract.lock").exists()
    # A hard kill would also leave temporary files of a dead process: cleaned up on the next run.
    (tmp_path / "jpeg" / ".eye_makeup.tmp-999999999-dead").mkdir()
    monkeypatch.setattr(extract, "write_video_frames", real_write)
    report = extract_to_cache(videos, tmp_path, settings())
    assert report.skipped == ["arm_wrestling"] and sorted(report.extracted) == ["eye_makeup", "pool_cleaning"]
    assert not list((tmp_path / "jpeg").glob(".*"))


def test_cache_with_other_settings_is_refused_unless_overwrite(tmp_path):
    videos = {"eye": VIDEOS / "eye_makeup.avi"}
    extract_to_cache(videos, tmp_path, settings())
    with pytest.raises(ValueError, match=r"keyframes.scheme: 'uniform' -> 'maxdiff'"):
        extract_to_cache(videos, tmp_path, settings("maxdiff"))
    report = extract_to_cache(videos, tmp_path, settings("maxdiff", overwrite=True))
    assert report.extracted == ["eye"] and load_manifest(tmp_path)["params"]["keyframes"]["scheme"] == "maxdiff"


def test_cache_location_comes_from_the_dataset_config(tmp_path):
    from data.splits import frame_cache_dir
    assert frame_cache_dir({}, tmp_path, "maxdiff") == tmp_path / "frames" / "maxdiff-224"
    cfg = {"frame_cache": {"dir": str(tmp_path / "cache" / "{keyframes}-{size}px"), "size": 64}}
    assert frame_cache_dir(cfg, tmp_path, "uniform") == tmp_path / "cache" / "uniform-64px"


def test_command_line_folder_mode(messy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "extract_frames.py", f"videos={messy}", f"out={tmp_path / 'c'}",
                           "keyframes=maxdiff", "max_frames=3", "size=32", "workers=0", "progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 extracted" in proc.stdout and "3 failed" in proc.stdout and "truncated" in proc.stdout
    m = load_manifest(tmp_path / "c")
    assert m["params"]["keyframes"]["scheme"] == "maxdiff" and all(len(e["indices"]) == 3 for e in m["videos"].values())
    assert not (REPO / ".hydra").exists() and not (REPO / "extract_frames.log").exists()


# ---- the loaders read the cache --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_msvd(tmp_path_factory) -> Path:
    """An MSVD-format folder whose videos are the three real clips (test split)."""
    root = tmp_path_factory.mktemp("realmsvd")
    (root / "YouTubeClips").mkdir()
    ids = []
    for n in REAL:
        shutil.copy(VIDEOS / n, root / "YouTubeClips" / n)
        ids.append(Path(n).stem)
    for split in ("train", "val", "test"):
        (root / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
    import pickle
    with open(root / "raw-captions.pkl", "wb") as f:
        pickle.dump({i: [["a", "clip", "of", i], ["another", "caption"]] for i in ids}, f)
    return root


@pytest.mark.parametrize("scheme", ["uniform", "maxdiff"])
def test_cached_and_decoded_frames_are_identical_on_real_clips(real_msvd, scheme):
    # The datasets below are built with the exact frame rule (their default); MSVD's config says official.
    cfg = compose_cfg("extract_frames", ["dataset=msvd", f"dataset.root={real_msvd}", f"keyframes={scheme}",
                                         "max_frames=6", "size=64", "workers=0", "progress=false", "frame_rule=exact"])
    report, _ = run_extraction(cfg)
    assert len(report.extracted) == 3
    kw = dict(image_size=64, max_frames=6, keyframes=scheme, frame_cache_size=64, normalize=False)
    cached = MSVDDataset(real_msvd, "test", **kw).video_dataset()
    decoded = MSVDDataset(real_msvd, "test", frame_cache=False, **kw).video_dataset()
    assert cached.parent.frame_store is not None and decoded.parent.frame_store is None
    for i in range(3):
        a, b = cached[i], decoded[i]
        assert a["video"].dtype == torch.uint8 and torch.equal(a["video"], b["video"])
        assert torch.equal(a["video_mask"], b["video_mask"])
    # JPEGs instead of arrays: lossy but close; a smaller model input is resized from the cache.
    jpeg = MSVDDataset(real_msvd, "test", frame_cache_format="jpeg", **kw).video_dataset()[1]["video"]
    assert (jpeg.float() - decoded[1]["video"].float()).abs().mean() < 3
    small = MSVDDataset(real_msvd, "test", **{**kw, "image_size": 32}).video_dataset()[0]
    assert small["video"].shape == (6, 3, 32, 32)


def test_unusable_cache_is_refused_with_a_clear_message(real_msvd):
    cfg = compose_cfg("extract_frames", ["dataset=msvd", f"dataset.root={real_msvd}", "max_frames=6", "size=64",
                                         "workers=0", "progress=false", "frame_rule=exact"])
    run_extraction(cfg)
    kw = dict(keyframes="uniform", frame_cache_size=64)
    with pytest.raises(ValueError, match=r"rule: cache has 'exact', dataset wants 'official'"):
        MSVDDataset(real_msvd, "test", image_size=64, max_frames=6, frame_rule="official", **kw)
    with pytest.raises(ValueError, match=r"max_frames: cache has 6, dataset wants 4"):
        MSVDDataset(real_msvd, "test", image_size=64, max_frames=4, **kw)
    with pytest.raises(ValueError, match=r"64px frames but the model takes 96px"):
        MSVDDataset(real_msvd, "test", image_size=96, max_frames=6, **kw)
    with pytest.raises(FileNotFoundError, match=r"no frame cache at .*frames/uniform-128"):
        MSVDDataset(real_msvd, "test", image_size=64, max_frames=6, keyframes="uniform", frame_cache_size=128,
                    frame_cache="require")
