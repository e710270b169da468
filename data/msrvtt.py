"""MSR-VTT in the layout distributed for CLIP4Clip (also what the synthetic dataset writes).

Files under ``root``::

    MSRVTT_data.json           {"videos": [...], "sentences": [{"video_id", "caption", ...}]}
    MSRVTT_train.9k.csv        column video_id (or MSRVTT_train.7k.csv)      -> split "train"
    MSRVTT_JSFUSION_test.csv   columns key,vid_key,video_id,sentence         -> split "test"
    MSRVTT_val.csv             same columns (the synthetic dataset only)     -> split "val"
    videos/<video_id>.mp4 or .webm

Items: train with ``caption_mode="random"``: one per video, with a caption drawn per epoch;
``caption_mode="all"``: one per (video, caption) pair; val/test: one per CSV row. Frames,
caches, the evaluation interface and missing/broken videos: ``data.base``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

from .base import MissingDataError, SplitIndex, VideoTextDataset, find_video_files

__all__ = ["MSRVTTDataset", "MissingDataError", "VIDEO_EXTENSIONS"]

#: Extensions tried, in order, for ``<video_dir>/<video_id><ext>``.
VIDEO_EXTENSIONS = (".mp4", ".webm")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; expected columns {list(columns)}, found {reader.fieldnames}")
        return [{c: row[c] for c in columns} for row in reader]


def _load_captions(path: Path) -> dict[str, list[str]]:
    """video_id -> captions, in file order, from MSRVTT_data.json's ``sentences``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "sentences" not in data:
        raise ValueError(f"{path}: no 'sentences' field; expected MSR-VTT's {{'videos': [...], 'sentences': [...]}}")
    caps: dict[str, list[str]] = defaultdict(list)
    for s in data["sentences"]:
        caps[s["video_id"]].append(s["caption"])
    return dict(caps)


class MSRVTTDataset(VideoTextDataset):
    """MSR-VTT (or the synthetic dataset) as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        train_csv: CSV naming the train videos ("MSRVTT_train.9k.csv" or "MSRVTT_train.7k.csv").
        video_dir: folder of the videos, relative to root (or absolute).
        caption_mode, fps, max_frames, slice_framepos, frame_order, image_size, seed: see
            ``data.base.VideoTextDataset``.
        data_json, test_csv, val_csv: file names under root.
        **options: keyword options of ``VideoTextDataset`` (normalize, keyframes, frame_cache,
            cache_frames, skip_broken, allow_missing, verify, ...).

    Items and the evaluation interface: see ``data.base.VideoTextDataset``. Val/test items are
    the CSV rows (one caption each).
    """

    dataset_name = "MSR-VTT"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        train_csv: str = "MSRVTT_train.9k.csv",
        video_dir: str = "videos",
        caption_mode: str = "random",
        fps: float = 1.0,
        max_frames: int = 12,
        slice_framepos: str = "uniform",
        frame_order: str = "normal",
        image_size: int = 224,
        seed: int = 0,
        *,
        data_json: str = "MSRVTT_data.json",
        test_csv: str = "MSRVTT_JSFUSION_test.csv",
        val_csv: str = "MSRVTT_val.csv",
        **options,
    ):
        self._files = {"train": train_csv, "val": val_csv, "test": test_csv, "json": data_json}
        super().__init__(
            root, split, video_dir=video_dir, caption_mode=caption_mode, fps=fps, max_frames=max_frames,
            slice_framepos=slice_framepos, frame_order=frame_order, image_size=image_size, seed=seed, **options,
        )

    def _load_index(self) -> SplitIndex:
        csv_name = self._files[self.split]
        csv_path = self.root / csv_name
        json_path = self.root / self._files["json"]
        needed = [csv_path] + ([json_path] if self.split == "train" else [])
        missing_files = [str(p) for p in needed if not p.is_file()]

        video_ids: list[str] = []
        texts: list[str | None] = []
        if csv_path.is_file():
            if self.split == "train":
                video_ids = [r["video_id"] for r in _read_csv(csv_path, ("video_id",))]
            else:
                rows = _read_csv(csv_path, ("key", "vid_key", "video_id", "sentence"))
                video_ids = [r["video_id"] for r in rows]
                texts = [r["sentence"] for r in rows]
        paths, missing_videos = find_video_files(self.video_dir, video_ids, VIDEO_EXTENSIONS)
        if missing_files:
            return SplitIndex(video_ids, texts, {}, paths, missing_files, missing_videos)

        if self.split == "train":
            captions = _load_captions(json_path)
            no_caps = [v for v in video_ids if not captions.get(v)]
            if no_caps:
                raise ValueError(
                    f"{json_path}: {len(no_caps)} train video(s) from {csv_path.name} have no caption in "
                    f"'sentences', e.g. {no_caps[:5]}"
                )
            captions = {v: captions[v] for v in dict.fromkeys(video_ids)}
            if self.caption_mode == "all":
                pairs = [(v, c) for v in video_ids for c in captions[v]]
                video_ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                texts = [None] * len(video_ids)  # drawn per epoch
        else:
            captions = defaultdict(list)
            for v, t in zip(video_ids, texts):
                captions[v].append(t)
            captions = dict(captions)
        return SplitIndex(video_ids, texts, captions, paths, [], missing_videos)

    def _layout(self) -> str:
        csv_name = self._files[self.split]
        train = self.split == "train"
        return (
            f"  {csv_name}{'  (column video_id)' if train else '  (columns key,vid_key,video_id,sentence)'}\n"
            + (f"  {self._files['json']}  ({{'videos': [...], 'sentences': [{{'video_id', 'caption'}}]}})\n" if train else "")
            + f"  {self.video_dir.name}/<video_id>.mp4 or .webm  (one per video of the split)"
        )
