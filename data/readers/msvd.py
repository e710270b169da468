"""MSVD in the layout distributed for CLIP4Clip.

Files under ``root``::

    train_list.txt, val_list.txt, test_list.txt   one video id per line (1200 / 100 / 670)
    raw-captions.pkl                              pickled dict: video id -> list of captions,
                                                  each a list of tokens (about 40 per video)
    YouTubeClips/<video_id>.avi

Captions are the tokens joined by single spaces. Items: train with ``caption_mode="all"`` (as
CLIP4Clip): one per (video, caption) pair; ``"random"``: one per video with a caption drawn per
epoch. Val/test: one item per (video, caption) pair, videos in list order and captions in file
order, so evaluation scores every caption (multi-sentence retrieval); ``video_dataset()`` then
decodes each video once. Frames, caches and missing/broken videos: ``data.readers.base``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import MissingDataError, SplitIndex, VideoTextDataset, find_video_files, read_text_file
from clip4clip.core.safe_pickle import Budget, load_plain_pickle

__all__ = ["MSVDDataset", "MissingDataError", "MSVD_VIDEO_EXTENSIONS", "CAPTIONS_BUDGET", "load_msvd_captions"]

#: What ``raw-captions.pkl`` may make: MSVD's 80k captions (~600k tokens, ~3M characters) pickle
#: to ~5-10 MB; the bounds leave several times that, and stop a file of repeated references
#: (a few KB that expand into gigabytes of caption text) before it is built or joined.
CAPTIONS_BUDGET = Budget(max_bytes=64 << 20, max_values=10_000_000, max_chars=50_000_000)

#: Extensions tried, in order, for ``<video_dir>/<video_id><ext>`` (as distributed: .avi).
MSVD_VIDEO_EXTENSIONS = (".avi", ".mp4")
_LIST_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


def _read_list(path: Path) -> list[str]:
    """Video ids, one per non-empty line, surrounding whitespace removed. Raises ValueError naming
    the file when it is not UTF-8 or lists no video."""
    ids = [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: no video ids (empty file); expected one video id per line")
    return ids


def _caption_text(caption, path: Path, video_id: str) -> str:
    if isinstance(caption, str):  # some re-distributions store plain strings
        return " ".join(caption.split())
    if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
        return " ".join(caption)
    raise ValueError(f"{path}: caption of {video_id!r} is {type(caption).__name__} {caption!r:.80}; expected a list of tokens")


def load_msvd_captions(path: Path) -> dict[str, list[str]]:
    """video id -> captions (tokens joined by spaces), from ``raw-captions.pkl``.

    The file is a pickle, as distributed, read with ``clip4clip.core.safe_pickle.load_plain_pickle``: it
    may build only dicts, lists, tuples, strings and numbers, so a crafted file cannot run code;
    one that names any class or function raises ValueError naming the file and that global, and
    one larger than ``CAPTIONS_BUDGET`` (file size, values or characters, a shared reference
    counted each time) raises ValueError naming the file and the bound.
    """
    data = load_plain_pickle(path, holds="dicts, lists and strings", budget=CAPTIONS_BUDGET)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}; expected a dict video id -> list of token lists")
    out = {}
    for vid, caps in data.items():
        if not isinstance(caps, (list, tuple)):
            raise ValueError(f"{path}: value for {vid!r} is {type(caps).__name__}; expected a list of captions")
        out[str(vid)] = [_caption_text(c, path, vid) for c in caps]
    return out


class MSVDDataset(VideoTextDataset):
    """MSVD as a map-style torch Dataset (same items and interface as ``MSRVTTDataset``).

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        video_dir: folder of the videos, relative to root (or absolute).
        captions_file: the pickle of captions, under root.
        **options: keyword options of ``VideoTextDataset``.
    """

    dataset_name = "MSVD"

    default_caption_mode = "all"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        video_dir: str = "YouTubeClips",
        captions_file: str = "raw-captions.pkl",
        **options,
    ):
        self._captions_file = captions_file
        super().__init__(root, split, video_dir=video_dir, **options)

    def _load_index(self) -> SplitIndex:
        list_path = self.root / _LIST_FILES[self.split]
        caps_path = self.root / self._captions_file
        missing_files = [str(p) for p in (list_path, caps_path) if not p.is_file()]
        ids = list(dict.fromkeys(_read_list(list_path))) if list_path.is_file() else []
        paths, missing_videos = find_video_files(self.video_dir, ids, MSVD_VIDEO_EXTENSIONS)
        if missing_files:
            return SplitIndex(ids, [], {}, paths, missing_files, missing_videos)

        all_caps = load_msvd_captions(caps_path)
        no_caps = [v for v in ids if not all_caps.get(v)]
        if no_caps:
            raise ValueError(f"{caps_path}: {len(no_caps)} video(s) of {list_path.name} have no caption, e.g. {no_caps[:5]}")
        captions = {v: all_caps[v] for v in ids}
        if self.caption_mode == "random":
            video_ids, texts = ids, [None] * len(ids)
        else:
            pairs = [(v, c) for v in ids for c in captions[v]]
            video_ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        return SplitIndex(video_ids, texts, captions, paths, [], missing_videos)

    def _layout(self) -> str:
        return (
            f"  {_LIST_FILES[self.split]}  (one video id per line)\n"
            f"  {self._captions_file}  (pickled dict: video id -> list of captions, each a list of tokens)\n"
            f"  {self.video_dir.name}/<video_id>.avi  (one per video of the split)"
        )
