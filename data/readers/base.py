"""What the video-text datasets share: where frames come from, items, the evaluation interface,
and the policy for missing and unreadable videos. Subclasses only read their annotation files
(``_load_index``) and describe their layout (``_layout``).

Frames of a video come from, in order: the in-memory store (``cache_frames=True``), the disk
frame cache written by ``extract_frames.py`` (when present and extracted with the same keyframe
settings), or decoding the file with the same keyframe selection. All three give the same
uint8 frames, which are then resized/cropped to ``image_size`` and (optionally) normalised.

Missing and unreadable videos are never turned into zero-filled samples:

* Missing video files are found up front: one ``MissingDataError`` lists every one of them
  (with the annotation files that are missing), unless ``allow_missing=True``, which drops those
  videos and their captions and says how many (``missing_videos``, ``MissingVideosWarning``).
* ``verify=True`` (default for val/test) also checks up front that every video can be read
  (cached, or it opens and its first frame decodes); unreadable ones are treated like missing
  files. Metrics are therefore never computed over a split with holes unless asked for.
* A video that fails while loading an item raises ``VideoReadError`` naming it, or, with
  ``skip_broken=True`` (training), gives ``{"video_id", "text", "index", "broken": reason}``,
  which the collate functions drop and count.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..frames.cache import FrameCache
from ..frames.store import FrameStore, default_frame_cache_dir
from ..video.keyframes import KeyframeParams, select_keyframes
from ..video.transforms import clip_resize_crop, pack_clip
from ..video.decode import FRAME_ORDERS, VideoReadError, check_readable

__all__ = [
    "EmptySplitError",
    "MissingDataError",
    "MissingVideosWarning",
    "SplitIndex",
    "SplitVideos",
    "UnreadableVideosError",
    "VideoTextDataset",
    "find_video_files",
    "load_json_file",
    "read_text_file",
]

_SHOW_MISSING = 20
_SPLITS = ("train", "val", "test")
_CAPTION_MODES = ("random", "all")
_CACHE_USE = {"auto": "auto", True: "require", "require": "require", "true": "require", False: "off", "off": "off", "false": "off"}


def _listing(lines: list[str]) -> tuple[str, str]:
    """The first ``_SHOW_MISSING`` lines indented, and an "... and N more" tail (or "")."""
    shown = "\n".join(f"  {m}" for m in lines[:_SHOW_MISSING])
    more = f"\n  ... and {len(lines) - _SHOW_MISSING} more" if len(lines) > _SHOW_MISSING else ""
    return shown, more


class MissingDataError(FileNotFoundError):
    """Files a dataset needs are missing; ``missing`` lists every one of them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


class UnreadableVideosError(MissingDataError):
    """Videos of a split exist but cannot be read; ``missing`` lists ``path: reason`` for each."""


class EmptySplitError(ValueError):
    """No item of a split is left (every video missing or unreadable); ``missing_reasons`` says why."""

    def __init__(self, message: str, missing_reasons: dict[str, str]):
        super().__init__(message)
        self.missing_reasons = missing_reasons


class MissingVideosWarning(UserWarning):
    """Videos were dropped from a split (``allow_missing=True``); the message says how many."""


def _check_options(split: str, caption_mode: str, frame_order: str, frame_cache) -> str:
    """The dataset options that are choices, checked with a message naming each; returns what
    ``frame_cache`` means: "require" the disk cache, use it when present ("auto"), or "off"."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if caption_mode not in _CAPTION_MODES:
        raise ValueError(f"caption_mode must be one of {_CAPTION_MODES}, got {caption_mode!r}")
    if frame_order not in FRAME_ORDERS:
        raise ValueError(f"frame_order must be one of {FRAME_ORDERS}, got {frame_order!r}")
    key = frame_cache.lower() if isinstance(frame_cache, str) else frame_cache
    if key not in _CACHE_USE:
        raise ValueError(f"frame_cache={frame_cache!r}; expected auto, true (require) or false (off)")
    return _CACHE_USE[key]


@dataclass
class SplitIndex:
    """What a subclass reads from its annotation files.

    video_ids, texts: one entry per item (text None = a caption drawn per epoch);
    captions: video -> every caption; paths: video -> file, for the videos found;
    missing_files: annotation files not found; missing_videos: video -> the path(s) looked for.
    """

    video_ids: list[str]
    texts: list[str | None]
    captions: dict[str, list[str]]
    paths: dict[str, Path]
    missing_files: list[str] = field(default_factory=list)
    missing_videos: dict[str, str] = field(default_factory=dict)


def find_video_files(video_dir: Path, video_ids, extensions: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, str]]:
    """Look up ``<video_dir>/<id><ext>`` (first extension that exists) with one directory listing.
    Returns (found id -> path, missing id -> display string of what was looked for)."""
    try:
        present = {e.name for e in os.scandir(video_dir) if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        present = set()
    found, missing = {}, {}
    for v in dict.fromkeys(video_ids):
        ext = next((x for x in extensions if v + x in present), None)
        if ext is None:
            missing[v] = f"{video_dir / v}{{{','.join(extensions)}}}" if len(extensions) > 1 else f"{video_dir / v}{extensions[0]}"
        else:
            found[v] = video_dir / (v + ext)
    return found, missing


# ----------------------------------------------------------------------------------------------
# Reading annotation files: one-line errors that name the file and say what is wrong
# ----------------------------------------------------------------------------------------------


def read_text_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark is dropped). Raises ValueError
    ``<path>: not UTF-8 text (byte 0xff at offset N, line L)`` for other encodings."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{data[start]:02x} at offset {start}, line {line}); "
            "save the file as UTF-8"
        ) from None


def load_json_file(path: str | os.PathLike):
    """The JSON value in ``path``. Raises ValueError ``<path>: not valid JSON (line L, column C:
    <reason>)`` (saying when the file looks truncated) or ``<path>: not UTF-8 text (...)``."""
    text = read_text_file(path)
    if not text.strip():
        raise ValueError(f"{path}: empty file; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # An unterminated string runs to the end of the file; other errors at the very end mean
        # the file stops in the middle of a value.
        truncated = e.msg.startswith("Unterminated string") or e.pos >= len(text.rstrip())
        hint = "; the file ends early: truncated? Download or write it again" if truncated else ""
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}){hint}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None


class VideoTextDataset(Dataset):
    """Base of the map-style video-text datasets.

    Args (subclasses take the same keywords):
        root: dataset folder. split: "train", "val" or "test".
        sampling: the frame sampling (``data.video.keyframes.KeyframeParams``: scheme, max_frames,
            fps, slice_framepos, frame rule, window, maxdiff step/blur), e.g. ``KeyframeParams.from_config(cfg, split)``;
            None = its defaults. Any of its fields may also be given by keyword on top
            (``fps=``, ``max_frames=``, ``slice_framepos=``, ``keyframes=`` for the scheme,
            ``maxdiff_step=``, ``maxdiff_blur=``).
        caption_mode: train only: "random" (one item per video, a caption drawn per epoch, see
            ``set_epoch``) or "all" (one item per video-caption pair); None = the dataset's
            ``default_caption_mode``. Val/test: every caption.
        frame_order: "normal", "reverse" or "random" (a permutation per item and epoch).
        image_size: side S of the model input (shorter side resized, bicubic, centre crop).
        seed: seeds caption draws and random frame orders (with the epoch and the item index).
        normalize: True: ``video`` is CLIP-normalised float32; False: uint8 (normalise on the
            GPU with ``data.video.transforms.normalize_uint8``; 4x less to copy).
        frame_cache: "auto" (read the disk cache when one exists), True/"require" (it must), or
            False/"off" (always decode). frame_cache_dir: the cache folder; None =
            ``<root>/frames/<keyframes>-<frame_cache_size>``. frame_cache_format: "auto", "npy", "jpeg".
        cache_frames: load the whole split once, now, into shared memory (``data.frames.cache``);
            cache_budget_bytes bounds it.
        skip_broken: an unreadable video gives a ``broken`` item instead of raising.
        allow_missing: drop missing (and, when verified, unreadable) videos with their captions
            instead of raising; ``missing_videos`` lists them.
        verify: check up front that every video can be read (default: True except for train).
        progress: progress bars for long up-front work.

    Items: ``video_id`` str; ``text`` str; ``video`` [max_frames, 3, S, S] float32 (uint8 if
    normalize=False), zero after the real frames; ``video_mask`` int64 [max_frames], 1 for real
    frames; ``index`` int. Broken items: see the module docstring.

    Evaluation interface: ``texts`` (every caption to score, in order), ``text_video_ids`` (the
    video of each), ``video_dataset()`` (the unique videos, first-appearance order).
    """

    dataset_name = "dataset"

    #: Caption mode of the train split when none is given (MSVD and the paragraph datasets:
    #: every pair, as CLIP4Clip trains them).
    default_caption_mode = "random"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        video_dir: str,
        sampling: KeyframeParams | None = None,
        caption_mode: str | None = None,
        frame_order: str = "normal",
        image_size: int = 224,
        seed: int = 0,
        normalize: bool = True,
        frame_cache: bool | str = "auto",
        frame_cache_dir: str | os.PathLike | None = None,
        frame_cache_size: int = 224,
        frame_cache_format: str = "auto",
        cache_frames: bool = False,
        cache_budget_bytes: int = 2 * 2**30,
        skip_broken: bool = False,
        allow_missing: bool = False,
        verify: bool | None = None,
        progress: bool = True,
        **sampling_fields,
    ):
        caption_mode = caption_mode or self.default_caption_mode
        cache_use = _check_options(split, caption_mode, frame_order, frame_cache)
        # The one frame-sampling value (``KeyframeParams``): ``sampling`` as given, with any of
        # its fields passed by keyword (fps=, max_frames=, keyframes=, ...) on top. It validates
        # every field with a message naming it.
        self.sampling = KeyframeParams.build(sampling, **sampling_fields)

        self.root = Path(root)
        self.split = split
        self.caption_mode = caption_mode if split == "train" else "all"
        self.frame_order, self.image_size, self.seed, self.normalize = frame_order, image_size, seed, normalize
        self.video_dir = self.root / video_dir
        self.skip_broken, self.allow_missing = skip_broken, allow_missing
        self.verify = (split != "train") if verify is None else bool(verify)
        self.progress = progress
        # Shared memory so set_epoch reaches DataLoader workers, persistent ones included.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        #: video_id -> why it was dropped (missing file / unreadable), for allow_missing=True.
        self.missing_reasons: dict[str, str] = {}

        index = self._read_index()
        self._store = self._open_store(cache_use, frame_cache_dir, frame_cache_size, frame_cache_format)
        self._drop_missing(index.missing_videos)
        self._ram: FrameCache | None = None
        if cache_frames:
            self._ram = FrameCache.build(self.video_order, self._load_for_ram, cache_budget_bytes, progress=progress)
        self._check_readable()

    def _read_index(self) -> SplitIndex:
        """The subclass's annotation index; a missing annotation file is fatal, named with the layout."""
        index = self._load_index()
        if index.missing_files:
            shown = index.missing_files + list(index.missing_videos.values())
            raise self._missing_error(shown)
        self._item_videos, self._item_texts = index.video_ids, index.texts
        self.captions, self._paths = index.captions, index.paths
        return index

    def _drop_missing(self, missing_videos: dict[str, str]) -> None:
        """Videos whose file is absent: fatal, or dropped with their captions (``allow_missing``).
        A video the disk cache holds does not need its source file."""
        missing = {v: p for v, p in missing_videos.items() if self._store is None or v not in self._store}
        if missing:
            if not self.allow_missing:
                raise self._missing_error(list(missing.values()))
            self._drop({v: f"file not found: {p}" for v, p in missing.items()})

    def _check_readable(self) -> None:
        """``verify``: every video decodes (else fatal, or dropped with ``allow_missing``); then warn
        about what was dropped, and refuse a split left empty."""
        if self.verify:
            unreadable = self._find_unreadable()
            if unreadable and not self.allow_missing:
                raise self._unreadable_error(unreadable)
            self._drop(unreadable)
        if self.missing_reasons:
            self._warn_dropped()
        if not self._item_videos:
            raise EmptySplitError(
                f"{self.dataset_name} split {self.split!r} under {self.root} has no items left: all "
                f"{len(self.missing_reasons)} of its videos are missing or unreadable", self.missing_reasons)

    @property
    def keyframe_params(self) -> KeyframeParams:
        """The frame sampling (same object as ``sampling``; the frame cache compares it)."""
        return self.sampling

    @property
    def max_frames(self) -> int:
        return self.sampling.max_frames

    @property
    def fps(self) -> float:
        return self.sampling.fps

    @property
    def slice_framepos(self) -> str:
        return self.sampling.slice_framepos

    # ------------------------------------------------------------------------------------------
    # For subclasses
    # ------------------------------------------------------------------------------------------

    def _load_index(self) -> SplitIndex:
        raise NotImplementedError

    def _layout(self) -> str:
        """The expected files, one per line, for error messages."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------
    # Missing and unreadable videos
    # ------------------------------------------------------------------------------------------

    def _missing_error(self, missing: list[str]) -> MissingDataError:
        shown, more = _listing(missing)
        return MissingDataError(
            f"{self.dataset_name} data for split {self.split!r} is incomplete: {len(missing)} missing path(s):\n"
            f"{shown}{more}\nExpected layout under {self.root}:\n{self._layout()}\n"
            "(dataset.allow_missing=true drops missing videos and their captions instead)",
            missing,
        )

    def _unreadable_error(self, unreadable: dict[str, str]) -> UnreadableVideosError:
        lines = [unreadable[v] for v in unreadable]
        shown, more = _listing(lines)
        return UnreadableVideosError(
            f"{self.dataset_name} split {self.split!r}: {len(lines)} of {self.num_videos} video(s) cannot be read, "
            f"so metrics over this split would be wrong:\n{shown}{more}\n"
            "Replace the files, or pass allow_missing=True (dataset.allow_missing=true) to evaluate without them",
            lines,
        )

    def _drop(self, reasons: dict[str, str]) -> None:
        """Remove these videos and every item (caption) of theirs."""
        if not reasons:
            return
        self.missing_reasons.update(reasons)
        keep = [i for i, v in enumerate(self._item_videos) if v not in reasons]
        self._item_videos = [self._item_videos[i] for i in keep]
        self._item_texts = [self._item_texts[i] for i in keep]
        self.captions = {v: c for v, c in self.captions.items() if v not in reasons}

    def _warn_dropped(self) -> None:
        n = len(self.missing_reasons)
        examples = "; ".join(f"{v} ({r})" for v, r in list(self.missing_reasons.items())[:5])
        warnings.warn(
            f"{self.dataset_name} split {self.split!r}: {n} video(s) missing or unreadable were dropped with "
            f"their captions ({self.num_videos} videos, {len(self)} items remain): {examples}"
            + (" ..." if n > 5 else ""),
            MissingVideosWarning,
            stacklevel=3,
        )

    @property
    def missing_videos(self) -> list[str]:
        """Videos dropped because they were missing or unreadable (``allow_missing=True``)."""
        return list(self.missing_reasons)

    def _find_unreadable(self) -> dict[str, str]:
        """video_id -> "path: reason" for every video of the split that cannot be read."""
        vids = self.video_order
        if self._ram is not None:
            return {v: self._ram.broken[v] for v in vids if v in self._ram.broken}

        def check(v: str) -> str | None:
            try:
                if self._store is not None and v in self._store:
                    self._store.check_files(v)
                else:
                    check_readable(self._paths[v])
            except VideoReadError as e:
                return f"{e.path}: {e.reason}"
            return None

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # OpenCV releases the GIL
            results = list(tqdm(pool.map(check, vids), total=len(vids), desc=f"checking {self.split} videos",
                                unit="video", leave=False, disable=not self.progress or len(vids) < 500))
        return {v: r for v, r in zip(vids, results) if r is not None}

    # ------------------------------------------------------------------------------------------
    # Frame sources
    # ------------------------------------------------------------------------------------------

    def _open_store(self, use: str, directory, size: int, fmt: str) -> FrameStore | None:
        if use == "off":
            return None
        path = Path(directory).expanduser() if directory else default_frame_cache_dir(self.root, self.sampling.scheme, size)
        store = FrameStore.open_if_present(path, fmt)
        if store is None:
            if use == "require":
                raise FileNotFoundError(
                    f"dataset.frame_cache.use=require but there is no frame cache at {path}; run "
                    f"extract_frames.py for this dataset (keyframes={self.sampling.scheme}, size={size})"
                )
            return None
        store.check_compatible(self.sampling, self.image_size)
        return store

    @property
    def frame_store(self) -> FrameStore | None:
        """The disk frame cache in use, or None when videos are decoded."""
        return self._store

    def _load_uncached(self, video_id: str) -> np.ndarray:
        """uint8 [T, H, W, 3] keyframes from the disk cache, else decoded from the file."""
        if self._store is not None and video_id in self._store:
            return self._store.load(video_id)
        return select_keyframes(self._paths[video_id], self.sampling).frames

    def _load_for_ram(self, video_id: str) -> np.ndarray:
        frames = self._load_uncached(video_id)
        # Keep the smaller of source-size and model-size frames; items are resized either way
        # (a no-op for frames already at S x S).
        if frames.shape[1] * frames.shape[2] > self.image_size**2:
            frames = clip_resize_crop(frames, self.image_size)
        return frames

    def _raw_frames(self, video_id: str) -> np.ndarray:
        if self._ram is not None:
            if video_id in self._ram:
                return self._ram.get(video_id)
            path = self._paths.get(video_id, self.video_dir / video_id)
            reason = self._ram.broken.get(video_id, "not in the in-memory frame cache")
            raise VideoReadError(path, reason.removeprefix(f"{path}: "))  # the cache keeps "path: reason"
        return self._load_uncached(video_id)

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

    # ------------------------------------------------------------------------------------------
    # Evaluation interface and bookkeeping
    # ------------------------------------------------------------------------------------------

    @property
    def texts(self) -> list[str]:
        """Every item's caption, in item order (train "random": the draws of the current epoch).
        For val/test: every caption to score."""
        return [self._text(i) for i in range(len(self))]

    @property
    def text_video_ids(self) -> list[str]:
        """The video of each entry of ``texts``."""
        return list(self._item_videos)

    @property
    def video_ids(self) -> list[str]:
        """Video id of every item (same as ``text_video_ids``)."""
        return list(self._item_videos)

    @property
    def video_order(self) -> list[str]:
        """The unique videos of the split in first-appearance order (``video_dataset()``'s order)."""
        return list(dict.fromkeys(self._item_videos))

    @property
    def text_video_index(self) -> list[int]:
        """For each entry of ``texts``, the position of its video in ``video_order``."""
        pos = {v: i for i, v in enumerate(self.video_order)}
        return [pos[v] for v in self._item_videos]

    @property
    def num_videos(self) -> int:
        return len(dict.fromkeys(self._item_videos))

    def video_dataset(self) -> "SplitVideos":
        """A Dataset over the unique videos (``video_order``), so that each is decoded once however
        many captions it has. Items: {"video_id", "video", "video_mask", "index"}."""
        return SplitVideos(self)

    def video_path(self, video_id: str) -> Path:
        return self._paths[video_id]

    # ------------------------------------------------------------------------------------------
    # Items
    # ------------------------------------------------------------------------------------------

    def _pack(self, raw: np.ndarray, rng_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [T, h, w, 3] -> (video [max_frames, 3, S, S], video_mask int64 [max_frames])."""
        t = min(len(raw), self.max_frames)
        order = None
        if self.frame_order == "reverse":
            order = np.arange(t)[::-1]
        elif self.frame_order == "random":
            order = self._rng(rng_index, 1).permutation(t)
        return pack_clip(raw, self.max_frames, self.image_size, self.normalize, order)

    def _frames_or_broken(self, video_id: str) -> np.ndarray | str:
        try:
            return self._raw_frames(video_id)
        except VideoReadError as e:
            if not self.skip_broken:
                raise
            return f"{e.path}: {e.reason}"

    def __len__(self) -> int:
        return len(self._item_videos)

    def __getitem__(self, index: int) -> dict:
        index = int(index)  # samplers may hand numpy / torch integers
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        video_id = self._item_videos[index]
        raw = self._frames_or_broken(video_id)
        if isinstance(raw, str):
            return {"video_id": video_id, "text": self._text(index), "index": index, "broken": raw}
        video, mask = self._pack(raw, index)
        return {"video_id": video_id, "text": self._text(index), "video": video, "video_mask": mask, "index": index}


class SplitVideos(Dataset):
    """The unique videos of a split, for encoding each once (multi-caption evaluation).

    Items: {"video_id", "video" [max_frames, 3, S, S], "video_mask" [max_frames], "index"}, index
    = position in ``parent.video_order``; a ``broken`` item when the parent skips broken videos.
    """

    def __init__(self, parent: VideoTextDataset):
        self.parent = parent
        self.video_ids = parent.video_order

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        video_id = self.video_ids[index]
        raw = self.parent._frames_or_broken(video_id)
        if isinstance(raw, str):
            return {"video_id": video_id, "index": index, "broken": raw}
        video, mask = self.parent._pack(raw, index)
        return {"video_id": video_id, "video": video, "video_mask": mask, "index": index}
