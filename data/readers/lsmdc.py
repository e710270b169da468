"""LSMDC (Large Scale Movie Description Challenge) in the layout distributed for CLIP4Clip.

Files under ``root``::

    LSMDC16_annos_training.csv               -> split "train"
    LSMDC16_annos_val.csv                    -> split "val"
    LSMDC16_challenge_1000_publictect.csv    -> split "test" (the 1000-clip public test)
    videos/<movie>/<clip_id>.avi or videos/<clip_id>.avi   (any subfolder: one walk)

Despite the extension the annotation files are tab-separated, one clip-sentence pair per line,
six fields: ``clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence``.
Sentences contain quote characters that are text, not CSV quoting, so lines are split on tabs
as CLIP4Clip does (``dataloader_lsmdc_retrieval.py``), never parsed as CSV. A clip id is
``<movie>_<start>-<end>``, e.g. ``0001_American_Beauty_00.00.51.926-00.00.54.129`` in movie
folder ``0001_American_Beauty``.

Items: one per line (clip, sentence) for val/test and, with ``caption_mode="all"`` (default, as
CLIP4Clip trains), for train; ``caption_mode="random"``: one per train clip with a sentence drawn
per epoch. Every line's problems (field count, empty clip id or sentence) are collected and
raised together (``AnnotationError``) before any video is looked at. Frames, caches and missing
videos: ``data.readers.base``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .base import SplitIndex, VideoTextDataset, read_text_file
from .annotations import AnnotationError, AnnotationProblems, walk_video_files

__all__ = ["AnnotationError", "LSMDCDataset", "LSMDC_VIDEO_EXTENSIONS", "lsmdc_movie"]

#: Video file extensions looked for (as distributed: .avi).
LSMDC_VIDEO_EXTENSIONS = (".avi", ".mp4")
_FIELDS = "clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence"


def lsmdc_movie(clip_id: str) -> str:
    """The movie folder of a clip: the id up to its last underscore (``0001_American_Beauty``
    for ``0001_American_Beauty_00.00.51.926-00.00.54.129``)."""
    return clip_id.rsplit("_", 1)[0]


def _read_rows(path: Path, problems: AnnotationProblems) -> list[tuple[str, str]]:
    """(clip id, sentence) per non-empty line; problems recorded with their line numbers."""
    try:
        text = read_text_file(path)
    except ValueError as e:
        problems.add_error(e)
        return []
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        # CLIP4Clip strips each line before splitting, which drops trailing empty fields.
        while len(fields) > 6 and not fields[-1].strip():
            fields.pop()
        where = f"line {n}"
        if len(fields) != 6:
            problems.add(path, where, f"{len(fields)} tab-separated field(s); expected 6 ({_FIELDS})")
        elif not fields[0].strip():
            problems.add(path, where, f"empty clip id; expected 6 tab-separated fields ({_FIELDS})")
        elif not fields[5].strip():
            problems.add(path, where, f"empty sentence; expected 6 tab-separated fields ({_FIELDS})")
        else:
            rows.append((fields[0].strip(), fields[5].strip()))
    if not rows and not problems:
        problems.add(path, None, f"no rows (empty file); expected one clip-sentence pair per line ({_FIELDS})")
    return rows


def _clip_key(name: str) -> str | None:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in LSMDC_VIDEO_EXTENSIONS else None


class LSMDCDataset(VideoTextDataset):
    """LSMDC text-to-clip retrieval as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test" (the 1000-clip public test).
        video_dir: folder of the videos (movie subfolders or flat), relative to root (or absolute).
        train_file, val_file, test_file: the annotation files under root.
        **options: keyword options of ``data.readers.base.VideoTextDataset``.
    """

    dataset_name = "LSMDC"
    default_caption_mode = "all"  # one item per annotation line, as CLIP4Clip trains

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        video_dir: str = "videos",
        train_file: str = "LSMDC16_annos_training.csv",
        val_file: str = "LSMDC16_annos_val.csv",
        test_file: str = "LSMDC16_challenge_1000_publictect.csv",
        **options,
    ):
        self._files = {"train": train_file, "val": val_file, "test": test_file}
        super().__init__(root, split, video_dir=video_dir, **options)

    def _load_index(self) -> SplitIndex:
        path = self.root / self._files[self.split]
        if not path.is_file():
            return SplitIndex([], [], {}, {}, [str(path)])
        problems = AnnotationProblems()
        rows = _read_rows(path, problems)
        problems.raise_if_any(self.dataset_name, self.split, self.root)

        captions: dict[str, list[str]] = defaultdict(list)
        for clip, sentence in rows:
            captions[clip].append(sentence)
        captions = dict(captions)
        if self.split == "train" and self.caption_mode == "random":
            video_ids, texts = list(captions), [None] * len(captions)
        else:
            video_ids, texts = [c for c, _ in rows], [s for _, s in rows]
        paths = walk_video_files(self.video_dir, lambda name: k if (k := _clip_key(name)) in captions else None)
        missing_videos = {c: f"{self.video_dir / lsmdc_movie(c) / c}.avi (or {self.video_dir / c}.avi)"
                          for c in captions if c not in paths}
        return SplitIndex(video_ids, texts, captions, paths, [], missing_videos)

    def _layout(self) -> str:
        return (
            f"  {self._files[self.split]}  (tab-separated: {_FIELDS})\n"
            f"  {self.video_dir.name}/<movie>/<clip_id>.avi or {self.video_dir.name}/<clip_id>.avi"
            "  (one per clip of the split)"
        )
