"""Extract keyframes into a frame cache.

    python extract_frames.py dataset=msrvtt9k keyframes=maxdiff
    python extract_frames.py videos=/path/to/folder out=/path/to/cache

See configs/extract_frames.yaml for the options and data/extract.py for how the run works
(parallel workers, resumable, failures reported in <out>/failures.json).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Tuple

import hydra
from omegaconf import DictConfig

from clip4clip.core.errors import user_errors


def settings_from_config(cfg) -> Any:
    """ExtractSettings from the composed extract_frames config."""
    from clip4clip.engine.config_values import flag, positive_number, whole_number
    from data import KeyframeParams
    from data.frames.extract import ExtractSettings
    workers = cfg.get("workers", "auto")
    workers = min(8, os.cpu_count() or 1) if workers in (None, "auto") else whole_number(workers, "workers", 0)
    # Each value named as given (int('abc') and NaN's `<= 0` would not say which one is wrong).
    positive_number(cfg.get("fps"), "fps", optional=True)
    # The extraction config carries the same keys as a dataset config (keyframes, fps,
    # max_frames, slice_framepos, maxdiff): one conversion for both.
    kf = KeyframeParams.from_config(cfg, "train")
    return ExtractSettings(keyframes=kf, size=whole_number(cfg["size"], "size"), formats=tuple(cfg["formats"]),
                           jpeg_quality=whole_number(cfg["jpeg_quality"], "jpeg_quality"), workers=workers,
                           overwrite=flag(cfg["overwrite"], "overwrite"),
                           retry_failed=flag(cfg["retry_failed"], "retry_failed"), progress=flag(cfg["progress"], "progress"))


def run_extraction(cfg) -> Tuple[Any, dict]:
    """-> (ExtractReport, resolved config). Extracts a folder (``videos``) or a dataset."""
    from omegaconf import OmegaConf

    from data.splits import dataset_root, dataset_videos, frame_cache_dir
    from data import default_frame_cache_dir
    from data.frames.extract import extract_to_cache, videos_in_folder
    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    settings = settings_from_config(config)
    scheme, missing = settings.keyframes.scheme, {}
    if config.get("videos"):
        videos = videos_in_folder(config["videos"])
        out = config.get("out") or default_frame_cache_dir(Path(config["videos"]).expanduser(), scheme, settings.size)
        what = f"{len(videos)} videos in {config['videos']}"
    else:
        dcfg = config["dataset"]
        root = dataset_root(dcfg, progress=settings.progress)
        videos, missing = dataset_videos(dcfg, root)
        out = config.get("out") or frame_cache_dir({**dcfg, "frame_cache": {**dcfg.get("frame_cache", {}),
                                                                            "size": settings.size}}, root, scheme)
        what = f"{len(videos) + len(missing)} videos of {dcfg['name']} at {root}"
    if settings.progress:
        print(f"extracting {scheme} keyframes ({settings.keyframes.relevant()}) at {settings.size}px of "
              f"{what} into {out} ({', '.join(settings.formats)})", flush=True)
    report = extract_to_cache(videos, out, settings, missing=missing)
    return report, config


@hydra.main(config_path="configs", config_name="extract_frames", version_base="1.3")
def main(cfg: DictConfig) -> int:
    # FFmpeg's and OpenCV's own messages about broken files would bury the progress bar; every
    # failure is in the report with its reason. Set these variables yourself to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    with user_errors():
        report, _ = run_extraction(cfg)
    print(report.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
