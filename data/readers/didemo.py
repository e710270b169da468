"""DiDeMo (Distinct Describable Moments) in the layout distributed for CLIP4Clip: paragraph
retrieval, one item per video.

Files under ``root``::

    train_list.txt, val_list.txt, test_list.txt   one video file name per line, extension
                                                  included (e.g. 10015567@N08_3655084291_d8b58466fa.mov)
    train_data.json, val_data.json, test_data.json
                                                  LocalizingMoments records, a JSON list of
                                                  {"video", "description", "times", ...}
    videos/<file name from the list>              in any subfolder (one walk of the folder)

As in CLIP4Clip (``dataloader_didemo_retrieval.py``), every description of a video is joined,
in record order and separated by a space, into one paragraph; the video is the clip. The
official loader reads seconds 0..31 of it only (``start=0, end=31`` given to its extractor: the
annotations cover the first 30 s); ``configs/dataset/didemo.yaml`` does the same under the
official frame rule (``window_seconds``, applied by the frame sampling, ``data.KeyframeParams``)
and reads the whole video under the exact rule. Items:
one per video in list order, for every split. ``moments`` keeps each description with its
``times`` for segment evaluation: DiDeMo times are [start, end] indices of 5-second segments
(0..5), one pair per annotator.

Annotation problems (unreadable files, malformed records, a listed video that no record
describes) are collected from both files and raised together in one ``AnnotationError`` before
any video is looked at. Records of videos the list does not name are skipped, as CLIP4Clip does
(the distributed lists leave out a few of the described videos), and named in
``unlisted_videos``. Frames, caches and missing videos: ``data.readers.base``; the problem collection
and folder walk shared with ActivityNet and LSMDC: ``data.readers.annotations``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .annotations import AnnotationProblems, json_type, shown, walk_video_files
from .base import SplitIndex, VideoTextDataset, load_json_file, read_text_file

__all__ = ["DiDeMoDataset"]

_RECORD = '{"video": str, "description": str, "times": [[start_segment, end_segment], ...]}'


def read_name_list(path: Path, problems: AnnotationProblems, what: str) -> list[tuple[int, str]]:
    """(line number, name) for every non-empty line of a list file, whitespace stripped."""
    try:
        text = read_text_file(path)
    except ValueError as e:
        problems.add_error(e)
        return []
    names = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not names:
        problems.add(path, None, f"no entries (empty file); expected {what}, one per line")
    return names


# ----------------------------------------------------------------------------------------------
# DiDeMo
# ----------------------------------------------------------------------------------------------


def _times(value) -> list[list[int]] | None:
    """``times`` as a list of [start, end] integer pairs, or None when it is not one."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in pair)):
            return None
        out.append([pair[0], pair[1]])
    return out


def _check_record(rec) -> str | None:
    """What is wrong with a LocalizingMoments record, or None."""
    if not isinstance(rec, dict):
        return f"is {shown(rec)}; expected {_RECORD}"
    absent = [k for k in ("video", "description", "times") if k not in rec]
    if absent:
        return f"no {', '.join(repr(k) for k in absent)} field; expected {_RECORD}"
    video, desc = rec["video"], rec["description"]
    bad = []
    if not (isinstance(video, str) and video.strip()):
        bad.append(f"'video' is {shown(video)}; expected a video file name")
    if not isinstance(desc, str):
        bad.append(f"'description' is {shown(desc)}; expected a sentence")
    elif not desc.strip():
        bad.append("'description' is empty; expected a sentence")
    if _times(rec["times"]) is None:
        bad.append(f"'times' is {shown(rec['times'])}; expected a non-empty list of "
                   "[start_segment, end_segment] pairs of integers >= 0")
    return "; ".join(bad) or None


class DiDeMoDataset(VideoTextDataset):
    """DiDeMo paragraph-to-video retrieval as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        video_dir: folder of the videos, relative to root (or absolute).
        list_file, data_file: file names under root; ``{split}`` is replaced by the split.
        **options: keyword options of ``data.readers.base.VideoTextDataset``.

    Attributes (besides the base class's): ``moments``: video -> [(description, times)] in
    record order, ``times`` a list of [start_segment, end_segment] (5-second segments);
    ``unlisted_videos``: videos the data file describes but the list does not name (skipped).
    """

    dataset_name = "DiDeMo"
    default_caption_mode = "all"  # one paragraph per video: both modes give the same items

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        video_dir: str = "videos",
        list_file: str = "{split}_list.txt",
        data_file: str = "{split}_data.json",
        **options,
    ):
        self._list_file, self._data_file = list_file, data_file
        self.moments: dict[str, list[tuple[str, list[list[int]]]]] = {}
        self.unlisted_videos: list[str] = []
        super().__init__(root, split, video_dir=video_dir, **options)

    def _paths_of_split(self) -> tuple[Path, Path]:
        return (self.root / self._list_file.format(split=self.split),
                self.root / self._data_file.format(split=self.split))

    def _load_index(self) -> SplitIndex:
        list_path, data_path = self._paths_of_split()
        missing_files = [str(p) for p in (list_path, data_path) if not p.is_file()]
        if missing_files:
            return SplitIndex([], [], {}, {}, missing_files)

        problems = AnnotationProblems()
        listed = read_name_list(list_path, problems, "a video file name (with its extension)")
        line_of = {}
        for line, name in listed:
            line_of.setdefault(name, line)
        moments: dict[str, list[tuple[str, list[list[int]]]]] = defaultdict(list)
        try:
            records = load_json_file(data_path)
            if not isinstance(records, list):
                problems.add(data_path, None, f"top level is a JSON {json_type(records)}; expected a list of {_RECORD}")
                records = []
            elif not records:
                problems.add(data_path, None, f"no records (an empty list); expected a list of {_RECORD}")
        except ValueError as e:
            problems.add_error(e)
            records = []
        unlisted: dict[str, None] = {}
        for i, rec in enumerate(records):
            bad = _check_record(rec)
            if bad:
                problems.add(data_path, f"record {i}", bad)
            elif rec["video"] not in line_of:
                unlisted[rec["video"]] = None  # skipped, as CLIP4Clip does
            else:
                moments[rec["video"]].append((rec["description"].strip(), _times(rec["times"])))
        if records:
            # Listed videos that no record names (a malformed record of one is reported as such).
            named = {r["video"] for r in records if isinstance(r, dict) and isinstance(r.get("video"), str)}
            for name, line in line_of.items():
                if name not in named:
                    problems.add(list_path, f"line {line}", f"video {name!r} has no description in {data_path.name}")
        problems.raise_if_any(self.dataset_name, self.split, self.root)

        ids = list(line_of)
        self.moments = {v: moments[v] for v in ids}
        self.unlisted_videos = list(unlisted)
        captions = {v: [" ".join(d for d, _ in moments[v])] for v in ids}
        paths = walk_video_files(self.video_dir, lambda name: name if name in line_of else None)
        missing_videos = {v: str(self.video_dir / v) for v in ids if v not in paths}
        return SplitIndex(ids, [captions[v][0] for v in ids], captions, paths, [], missing_videos)

    def _layout(self) -> str:
        list_path, data_path = self._paths_of_split()
        return (
            f"  {list_path.name}  (one video file name per line, extension included)\n"
            f"  {data_path.name}  (JSON list of {_RECORD})\n"
            f"  {self.video_dir.name}/<video file name>  (one per listed video, in any subfolder)"
        )
