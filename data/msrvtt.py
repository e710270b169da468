"""MSR-VTT in the layout distributed for CLIP4Clip (also what the synthetic dataset writes).

Files under ``root``::

    MSRVTT_data.json           {"videos": [...], "sentences": [{"video_id", "caption", ...}]}
    MSRVTT_train.9k.csv        column video_id (or MSRVTT_train.7k.csv)      -> split "train"
    MSRVTT_JSFUSION_test.csv   columns key,vid_key,video_id,sentence         -> split "test"
    MSRVTT_val.csv             same columns (the synthetic dataset only)     -> split "val"
    videos/<video_id>.mp4 or .webm

Items: train with ``caption_mode="random"``: one per video, with a caption drawn per epoch;
``caption_mode="all"``: one per (video, caption) pair; val/test: one per CSV row.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .frame_cache import FrameCache
from .transforms import clip_resize_crop, normalize_uint8_numpy
from .video import FRAME_ORDERS, SLICE_FRAMEPOS, read_frames

__all__ = ["MSRVTTDataset", "MissingDataError", "VIDEO_EXTENSIONS"]

#: Extensions tried, in order, for ``<video_dir>/<video_id><ext>``.
VIDEO_EXTENSIONS = (".mp4", ".webm")
_SHOW_MISSING = 20
_SPLITS = ("train", "val", "test")
_CAPTION_MODES = ("random", "all")


class MissingDataError(FileNotFoundError):
    """Files a dataset needs are missing; ``missing`` lists every one of them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


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


class MSRVTTDataset(Dataset):
    """MSR-VTT (or the synthetic dataset) as a map-style torch Dataset.

    Args:
        root: dataset folder (layout in the module docstring).
        split: "train", "val" or "test".
        train_csv: CSV naming the train videos ("MSRVTT_train.9k.csv" or "MSRVTT_train.7k.csv").
        video_dir: folder of the videos, relative to root (or absolute).
        caption_mode: train only: "random" (one item per video, one random caption per epoch,
            see ``set_epoch``) or "all" (one item per video-caption pair).
        fps, max_frames, slice_framepos: frame sampling, see ``data.video.sample_frame_indices``.
        frame_order: "normal", "reverse" or "random" (a permutation per item and epoch).
        image_size: side S of the CLIP input (resize shorter side + centre crop).
        seed: seeds caption choice and random frame order (with the epoch and the item index).
        normalize: True: ``video`` is CLIP-normalised float32; False: raw uint8 (normalise later,
            e.g. on the GPU with ``data.transforms.normalize_uint8``; 4x less to move around).
        cache_frames: decode the whole split once, now, into a shared-memory store (see
            ``data.frame_cache``); every epoch then skips decoding. Needs ``cache_budget_bytes``.
        data_json, test_csv, val_csv: file names under root.

    ``__getitem__(i)`` returns a dict: ``video_id`` str; ``text`` str; ``video`` [max_frames, 3, S, S]
    float32 (uint8 if normalize=False), zero after the real frames; ``video_mask`` int64
    [max_frames], 1 for real frames; ``index`` int. A video that cannot be decoded raises
    ``VideoReadError`` naming it.
    """

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
        normalize: bool = True,
        cache_frames: bool = False,
        cache_budget_bytes: int = 2 * 2**30,
        data_json: str = "MSRVTT_data.json",
        test_csv: str = "MSRVTT_JSFUSION_test.csv",
        val_csv: str = "MSRVTT_val.csv",
        progress: bool = True,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if caption_mode not in _CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {_CAPTION_MODES}, got {caption_mode!r}")
        if slice_framepos not in SLICE_FRAMEPOS:
            raise ValueError(f"slice_framepos must be one of {SLICE_FRAMEPOS}, got {slice_framepos!r}")
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"frame_order must be one of {FRAME_ORDERS}, got {frame_order!r}")
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive int (items are padded to it), got {max_frames!r}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")

        self.root = Path(root)
        self.split = split
        self.caption_mode = caption_mode if split == "train" else "all"
        self.fps, self.max_frames, self.slice_framepos = fps, max_frames, slice_framepos
        self.frame_order, self.image_size, self.seed, self.normalize = frame_order, image_size, seed, normalize
        self.video_dir = self.root / video_dir
        # Shared memory so set_epoch reaches DataLoader workers, persistent ones included.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        self._load_index(train_csv, data_json, test_csv, val_csv)

        self.num_videos = len(dict.fromkeys(self._item_videos))
        self._cache: FrameCache | None = None
        if cache_frames:
            self._cache = FrameCache.build(self._item_videos, self._decode_for_cache, cache_budget_bytes, progress=progress)

    # ------------------------------------------------------------------------------------------
    # Index loading and the up-front file check
    # ------------------------------------------------------------------------------------------

    def _load_index(self, train_csv: str, data_json: str, test_csv: str, val_csv: str) -> None:
        csv_name = {"train": train_csv, "val": val_csv, "test": test_csv}[self.split]
        csv_path = self.root / csv_name
        json_path = self.root / data_json
        needed = [csv_path] + ([json_path] if self.split == "train" else [])
        missing = [str(p) for p in needed if not p.is_file()]

        video_ids: list[str] = []
        texts: list[str | None] = []
        self.captions: dict[str, list[str]] = {}
        if csv_path.is_file():
            if self.split == "train":
                video_ids = [r["video_id"] for r in _read_csv(csv_path, ("video_id",))]
            else:
                rows = _read_csv(csv_path, ("key", "vid_key", "video_id", "sentence"))
                video_ids = [r["video_id"] for r in rows]
                texts = [r["sentence"] for r in rows]

        self._paths: dict[str, Path] = {}
        missing += self._find_videos(video_ids)
        if missing:
            raise self._missing_error(missing, csv_name, data_json)

        if self.split == "train":
            self.captions = _load_captions(json_path)
            no_caps = [v for v in video_ids if not self.captions.get(v)]
            if no_caps:
                raise ValueError(
                    f"{json_path}: {len(no_caps)} train video(s) from {csv_path.name} have no caption in "
                    f"'sentences', e.g. {no_caps[:5]}"
                )
            self.captions = {v: self.captions[v] for v in dict.fromkeys(video_ids)}
            if self.caption_mode == "all":
                pairs = [(v, c) for v in video_ids for c in self.captions[v]]
                video_ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                texts = [None] * len(video_ids)  # drawn per epoch
        else:
            self.captions = defaultdict(list)
            for v, t in zip(video_ids, texts):
                self.captions[v].append(t)
            self.captions = dict(self.captions)
        self._item_videos, self._item_texts = video_ids, texts

    def _find_videos(self, video_ids: list[str]) -> list[str]:
        """Fill ``self._paths``; return the missing ones as display strings."""
        try:
            present = {e.name for e in os.scandir(self.video_dir) if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing = []
        for v in dict.fromkeys(video_ids):
            for ext in VIDEO_EXTENSIONS:
                if v + ext in present:
                    self._paths[v] = self.video_dir / (v + ext)
                    break
            else:
                missing.append(f"{self.video_dir / v}{{{','.join(VIDEO_EXTENSIONS)}}}")
        return missing

    def _missing_error(self, missing: list[str], csv_name: str, data_json: str) -> MissingDataError:
        shown = "\n".join(f"  {m}" for m in missing[:_SHOW_MISSING])
        more = f"\n  ... and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        return MissingDataError(
            f"MSR-VTT data for split {self.split!r} is incomplete: {len(missing)} missing path(s):\n{shown}{more}\n"
            f"Expected layout under {self.root}:\n"
            f"  {csv_name}{'  (column video_id)' if self.split == 'train' else '  (columns key,vid_key,video_id,sentence)'}\n"
            + (f"  {data_json}  ({{'videos': [...], 'sentences': [{{'video_id', 'caption'}}]}})\n" if self.split == "train" else "")
            + f"  {self.video_dir.name}/<video_id>.mp4 or .webm  (one per video of the split)",
            missing,
        )

    # ------------------------------------------------------------------------------------------
    # Epoch-dependent choices
    # ------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for random captions / frame orders. Call before ``iter(loader)``:
        DataLoader workers start prefetching as soon as the iterator is created."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        # Keyed by (seed, epoch, item, stream), not by process: the same item gets the same draw
        # whichever DataLoader worker loads it, and different items get independent draws.
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def _text(self, index: int) -> str:
        text = self._item_texts[index]
        if text is not None:
            return text
        caps = self.captions[self._item_videos[index]]
        return caps[int(self._rng(index, 0).integers(len(caps)))]

    @property
    def texts(self) -> list[str]:
        """Text of every item (for train "random": the captions drawn for the current epoch)."""
        return [self._text(i) for i in range(len(self))]

    @property
    def video_ids(self) -> list[str]:
        """Video id of every item (test/val: CSV order)."""
        return list(self._item_videos)

    def video_path(self, video_id: str) -> Path:
        return self._paths[video_id]

    # ------------------------------------------------------------------------------------------
    # Frames
    # ------------------------------------------------------------------------------------------

    def _decode(self, video_id: str) -> np.ndarray:
        frames, _ = read_frames(self._paths[video_id], self.fps, self.max_frames, self.slice_framepos)
        return frames

    def _decode_for_cache(self, video_id: str) -> np.ndarray:
        frames = self._decode(video_id)
        # Keep the smaller of source-size and CLIP-size frames; __getitem__ resizes either way
        # (a no-op for frames already at S x S).
        if frames.shape[1] * frames.shape[2] > self.image_size**2:
            frames = clip_resize_crop(frames, self.image_size)
        return frames

    def __len__(self) -> int:
        return len(self._item_videos)

    def __getitem__(self, index: int) -> dict:
        index = int(index)  # samplers may hand numpy / torch integers
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        video_id = self._item_videos[index]
        raw = self._cache.get(video_id) if self._cache is not None else self._decode(video_id)
        frames = clip_resize_crop(np.ascontiguousarray(raw), self.image_size)  # uint8 [T, S, S, 3]
        if self.frame_order == "reverse":
            frames = frames[::-1]
        elif self.frame_order == "random":
            frames = frames[self._rng(index, 1).permutation(len(frames))]

        t, s = len(frames), self.image_size
        chw = frames.transpose(0, 3, 1, 2)
        # numpy, not torch, for the arithmetic: single-threaded, so a busy main process
        # (num_workers=0) does not pay for torch's intra-op thread pool contending for cores.
        video = np.zeros((self.max_frames, 3, s, s), dtype=np.float32 if self.normalize else np.uint8)
        if self.normalize:
            normalize_uint8_numpy(chw, out=video[:t])
        else:
            video[:t] = chw
        video = torch.from_numpy(video)
        mask = torch.zeros(self.max_frames, dtype=torch.int64)
        mask[:t] = 1
        return {"video_id": video_id, "text": self._text(index), "video": video, "video_mask": mask, "index": index}
