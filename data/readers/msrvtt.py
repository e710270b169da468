"""MSR-VTT in the layout distributed for CLIP4Clip (also what the synthetic dataset writes).

Files under ``root``::

    MSRVTT_data.json           {"videos": [...], "sentences": [{"video_id", "caption", ...}]}
    MSRVTT_train.9k.csv        column video_id (or MSRVTT_train.7k.csv)      -> split "train"
    MSRVTT_JSFUSION_test.csv   columns key,vid_key,video_id,sentence         -> split "test"
    MSRVTT_val.csv             same columns (the synthetic dataset only)     -> split "val"
    videos/<video_id>.mp4 or .webm

Items: train with ``caption_mode="random"``: one per video, with a caption drawn per epoch;
``caption_mode="all"``: one per (video, caption) pair; val/test: one per CSV row. Frames,
caches, the evaluation interface and missing/broken videos: ``data.readers.base``.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

from .annotations import json_type, shown
from .base import MissingDataError, SplitIndex, VideoTextDataset, find_video_files, load_json_file, read_text_file

__all__ = ["MSRVTTDataset", "MissingDataError", "VIDEO_EXTENSIONS"]

#: Extensions tried, in order, for ``<video_dir>/<video_id><ext>``.
VIDEO_EXTENSIONS = (".mp4", ".webm")


_SENTENCE = '{"video_id": str, "caption": str}'


def _read_csv(path: Path, columns: tuple[str, ...], *, rows_are: str, nonempty: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a split CSV, as dicts of ``columns``. Raises ValueError, one line naming the
    file (and line), for: not UTF-8, no header, a missing column, a row with fewer or more fields
    than the header, an empty ``nonempty`` field, malformed CSV, and no rows at all (``rows_are``
    says what each row is, for that message)."""
    text = read_text_file(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{path}: empty file; expected a header line with columns {list(columns)}, then {rows_are}")
        absent = [c for c in columns if c not in header]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; expected columns {list(columns)}, found {header}")
        rows = []
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row:  # more fields than the header (an unquoted comma?)
                raise ValueError(
                    f"{where}: {len(header) + len(row[None])} fields, the header has {len(header)} "
                    f"({','.join(header)}); quote fields that contain commas"
                )
            short = [c for c in header if row[c] is None]
            if short:
                raise ValueError(
                    f"{where}: {len(header) - len(short)} field(s), the header has {len(header)} "
                    f"({','.join(header)}); no value for {short}"
                )
            empty = [c for c in nonempty if not row[c].strip()]
            if empty:
                raise ValueError(f"{where}: empty {', '.join(repr(c) for c in empty)}; expected {rows_are}")
            rows.append({c: row[c] for c in columns})
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no rows (header only); expected {rows_are}")
    return rows


def _video_id(value, where: str) -> str:
    # MSR-VTT ids are strings ("video123"); an integer id is taken as its decimal string (what
    # the CSVs hold); anything else is refused rather than guessed at.
    if isinstance(value, str):
        if value.strip():
            return value
        what = "empty"
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    else:
        what = shown(value)
    raise ValueError(f"{where}: 'video_id' is {what}; expected {_SENTENCE}")


def _load_captions(path: Path) -> dict[str, list[str]]:
    """video_id -> captions, in file order, from MSRVTT_data.json's ``sentences``. Raises
    ValueError, one line naming the file and the record, when the file is not UTF-8 JSON of that
    shape."""
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: top level is a JSON {json_type(data)}; expected MSR-VTT's object "
            '{"videos": [...], "sentences": [...]}'
        )
    if "sentences" not in data:
        raise ValueError(f"{path}: no 'sentences' field; expected MSR-VTT's object " '{"videos": [...], "sentences": [...]}')
    sentences = data["sentences"]
    if not isinstance(sentences, list):
        raise ValueError(f"{path}: 'sentences' is a JSON {json_type(sentences)}; expected a list of {_SENTENCE}")
    caps: dict[str, list[str]] = defaultdict(list)
    for i, s in enumerate(sentences):
        where = f"{path}: sentences[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where} is a JSON {json_type(s)}; expected {_SENTENCE}")
        for key in ("video_id", "caption"):
            if key not in s:
                raise ValueError(f"{where}: no {key!r} field; expected {_SENTENCE}")
        caption = s["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"{where}: 'caption' is {shown(caption)}; expected {_SENTENCE}")
        caps[_video_id(s["video_id"], where)].append(caption)
    return dict(caps)



class MSRVTTDataset(VideoTextDataset):
    """MSR-VTT (or the synthetic dataset) as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        train_csv: CSV naming the train videos ("MSRVTT_train.9k.csv" or "MSRVTT_train.7k.csv").
        video_dir: folder of the videos, relative to root (or absolute).
        data_json, test_csv, val_csv: file names under root.
        **options: keyword options of ``VideoTextDataset`` (sampling or its fields, caption_mode,
            image_size, seed, normalize, frame_cache, cache_frames, skip_broken, allow_missing, ...).

    Items and the evaluation interface: see ``data.readers.base.VideoTextDataset``. Val/test items are
    the CSV rows (one caption each).
    """

    dataset_name = "MSR-VTT"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        train_csv: str = "MSRVTT_train.9k.csv",
        video_dir: str = "videos",
        data_json: str = "MSRVTT_data.json",
        test_csv: str = "MSRVTT_JSFUSION_test.csv",
        val_csv: str = "MSRVTT_val.csv",
        **options,
    ):
        self._files = {"train": train_csv, "val": val_csv, "test": test_csv, "json": data_json}
        super().__init__(root, split, video_dir=video_dir, **options)

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
                rows = _read_csv(csv_path, ("video_id",), rows_are="one row per train video", nonempty=("video_id",))
                video_ids = [r["video_id"] for r in rows]
            else:
                rows = _read_csv(csv_path, ("key", "vid_key", "video_id", "sentence"),
                                 rows_are="one row per caption (key,vid_key,video_id,sentence)",
                                 nonempty=("video_id", "sentence"))
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
