"""ActivityNet Captions in the layout distributed for CLIP4Clip: paragraph retrieval, one item
per video.

Files under ``root``::

    train_ids.json, val_ids.json    JSON lists of video ids "v_<YouTube id>"
    train.json, val_1.json          {"v_<id>": {"duration": s, "timestamps": [[start, end], ...],
                                                "sentences": [...]}}
    videos/<id>.<ext> or videos/v_<id>.<ext>, ext mp4, mkv or webm, in any subfolder

As in CLIP4Clip (``dataloader_activitynet_retrieval.py``), a video's sentences are joined into
one paragraph (each stripped, separated by a space) and the whole video is the clip. Split
"train" reads train_ids.json / train.json; "val" and "test" both read val_ids.json / val_1.json
(the evaluation everyone reports: 4917 paragraph-video pairs with the full data). Items: one per
video, in the order of the ids file. ``moments`` keeps each sentence with its [start, end] in
seconds, ``durations`` each video's length in seconds.

Annotation problems (unreadable files, malformed ids or entries, a listed id without an entry)
are collected from both files and raised together (``AnnotationError``) before any video is
looked at; entries of videos the ids file does not list are skipped, as CLIP4Clip does. Frames,
caches and missing videos: ``data.readers.base``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SplitIndex, VideoTextDataset, load_json_file
from .annotations import AnnotationError, AnnotationProblems, json_type, shown, walk_video_files

__all__ = ["ACTIVITYNET_VIDEO_EXTENSIONS", "ActivityNetDataset", "AnnotationError"]

#: Video file extensions looked for (as the official downloads come).
ACTIVITYNET_VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
_ENTRY = '{"duration": seconds, "timestamps": [[start, end], ...], "sentences": [str, ...]}'


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_entry(entry) -> str | None:
    """What is wrong with one video's annotation, or None."""
    if not isinstance(entry, dict):
        return f"is {shown(entry)}; expected {_ENTRY}"
    absent = [k for k in ("duration", "timestamps", "sentences") if k not in entry]
    if absent:
        return f"no {', '.join(repr(k) for k in absent)} field; expected {_ENTRY}"
    sentences, stamps, bad = entry["sentences"], entry["timestamps"], []
    if not _is_number(entry["duration"]) or entry["duration"] < 0:
        bad.append(f"'duration' is {shown(entry['duration'])}; expected seconds >= 0")
    if not isinstance(sentences, list) or not sentences:
        bad.append(f"'sentences' is {shown(sentences)}; expected a non-empty list of sentences")
    else:
        empty = [i for i, t in enumerate(sentences) if not isinstance(t, str) or not t.strip()]
        if empty:
            bad.append(f"'sentences' entries {empty[:5]} are empty or not text; expected a sentence each")
    if not (isinstance(stamps, list)
            and all(isinstance(p, list) and len(p) == 2 and all(_is_number(t) for t in p) for p in stamps)):
        bad.append(f"'timestamps' is {shown(stamps)}; expected a list of [start, end] seconds")
    elif isinstance(sentences, list) and len(stamps) != len(sentences):
        bad.append(f"{len(stamps)} 'timestamps' for {len(sentences)} 'sentences'; expected one per sentence")
    return "; ".join(bad) or None


def _video_key(name: str) -> str | None:
    """'v_<id>' for a file <id>.<ext> or v_<id>.<ext> (the two namings in circulation)."""
    stem, ext = os.path.splitext(name)
    if ext.lower() not in ACTIVITYNET_VIDEO_EXTENSIONS:
        return None
    return stem if stem.startswith("v_") else "v_" + stem


class ActivityNetDataset(VideoTextDataset):
    """ActivityNet Captions paragraph-to-video retrieval as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", or "val" / "test" (both val_1).
        video_dir: folder of the videos, relative to root (or absolute).
        train_ids, val_ids, train_data, val_data: file names under root.
        **options: keyword options of ``data.readers.base.VideoTextDataset``.

    Attributes (besides the base class's): ``moments``: video -> [(sentence, (start_s, end_s))];
    ``durations``: video -> seconds.
    """

    dataset_name = "ActivityNet Captions"
    default_caption_mode = "all"  # one paragraph per video: both modes give the same items

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        video_dir: str = "videos",
        train_ids: str = "train_ids.json",
        val_ids: str = "val_ids.json",
        train_data: str = "train.json",
        val_data: str = "val_1.json",
        **options,
    ):
        self._files = {"train": (train_ids, train_data), "val": (val_ids, val_data), "test": (val_ids, val_data)}
        self.moments: dict[str, list[tuple[str, tuple[float, float]]]] = {}
        self.durations: dict[str, float] = {}
        super().__init__(root, split, video_dir=video_dir, **options)

    def _load_index(self) -> SplitIndex:
        ids_path, data_path = (self.root / name for name in self._files[self.split])
        missing_files = [str(p) for p in (ids_path, data_path) if not p.is_file()]
        if missing_files:
            return SplitIndex([], [], {}, {}, missing_files)

        problems = AnnotationProblems()
        ids = self._read_ids(ids_path, problems)
        try:
            data = load_json_file(data_path)
            if not isinstance(data, dict) or not data:
                what = "an empty object" if isinstance(data, dict) else f"a JSON {json_type(data)}"
                problems.add(data_path, None, f"top level is {what}; expected an object {{'v_<id>': {_ENTRY}}}")
                data = {}
        except ValueError as e:
            problems.add_error(e)
            data = {}
        if data:
            for key, entry in data.items():
                bad = _check_entry(entry) if key in ids else None  # unlisted: skipped, as CLIP4Clip does
                if bad:
                    problems.add(data_path, f"video {key!r}", bad)
            for key, i in ids.items():
                if key not in data:
                    problems.add(ids_path, f"entry {i}", f"{key!r} has no annotation in {data_path.name}")
        problems.raise_if_any(self.dataset_name, self.split, self.root)

        order = list(ids)
        captions = {v: [" ".join(t.strip() for t in data[v]["sentences"])] for v in order}
        self.moments = {v: [(t.strip(), (float(a), float(b)))
                            for t, (a, b) in zip(data[v]["sentences"], data[v]["timestamps"])] for v in order}
        self.durations = {v: float(data[v]["duration"]) for v in order}
        paths = walk_video_files(self.video_dir, _video_key)
        exts = ",".join(e[1:] for e in ACTIVITYNET_VIDEO_EXTENSIONS)
        missing_videos = {v: f"{self.video_dir}/{{{v},{v[2:]}}}.{{{exts}}}" for v in order if v not in paths}
        return SplitIndex(order, [captions[v][0] for v in order], captions,
                          {v: paths[v] for v in order if v in paths}, [], missing_videos)

    @staticmethod
    def _read_ids(path: Path, problems: AnnotationProblems) -> dict[str, int]:
        """video id -> its position in the ids file (first occurrence; repeats are ignored, as by
        CLIP4Clip)."""
        try:
            value = load_json_file(path)
        except ValueError as e:
            problems.add_error(e)
            return {}
        if not isinstance(value, list) or not value:
            problems.add(path, None, f"is {shown(value)}; expected a non-empty JSON list of video ids 'v_<YouTube id>'")
            return {}
        ids: dict[str, int] = {}
        for i, v in enumerate(value):
            if not (isinstance(v, str) and v.startswith("v_") and len(v) > 2):
                problems.add(path, f"entry {i}", f"is {shown(v)}; expected a video id 'v_<YouTube id>'")
            else:
                ids.setdefault(v, i)
        return ids

    def _layout(self) -> str:
        ids_name, data_name = self._files[self.split]
        return (
            f"  {ids_name}  (JSON list of video ids 'v_<YouTube id>')\n"
            f"  {data_name}  ({{'v_<id>': {_ENTRY}}})\n"
            f"  {self.video_dir.name}/<id>.mp4|mkv|webm or v_<id>.*  (one per video, in any subfolder)"
        )
