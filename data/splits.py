"""Datasets from the ``dataset`` config group: the one place a ``dataset`` config becomes a
split (``build_split``), its folder (``dataset_root``) and its frame sampling (``split_sampling``)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Type

from .defaults import with_video_defaults
from .frames.store import default_frame_cache_dir
from .readers.activitynet import ActivityNetDataset
from .readers.base import EmptySplitError, MissingDataError, VideoTextDataset
from .readers.didemo import DiDeMoDataset
from .readers.lsmdc import LSMDCDataset
from .readers.msrvtt import MSRVTTDataset
from .readers.msvd import MSVDDataset
from .synthetic.generate import ensure_synthetic_dataset
from .video.keyframes import KeyframeParams


@dataclass(frozen=True)
class Reader:
    """A dataset name's reader: its class, the config keys naming its files (passed on only
    when set: the reader owns the defaults), and the layout hint for a missing ``dataset.root``."""

    cls: Type[VideoTextDataset]
    file_keys: Tuple[str, ...]
    layout: str


READERS: Dict[str, Reader] = {
    "synthetic": Reader(MSRVTTDataset, ("train_csv", "video_dir"), "(generated on first use)"),
    "msrvtt": Reader(MSRVTTDataset, ("train_csv", "video_dir"),
                     "the MSR-VTT annotation files (MSRVTT_data.json, MSRVTT_train.9k.csv, ...) and videos/"),
    "msvd": Reader(MSVDDataset, ("captions_file", "video_dir"),
                   "train_list.txt, val_list.txt, test_list.txt, raw-captions.pkl and YouTubeClips/"),
    "didemo": Reader(DiDeMoDataset, ("video_dir", "list_file", "data_file"),
                     "{train,val,test}_list.txt, {train,val,test}_data.json and videos/"),
    "activitynet": Reader(ActivityNetDataset, ("video_dir", "train_ids", "val_ids", "train_data", "val_data"),
                          "train_ids.json, val_ids.json, train.json, val_1.json and videos/"),
    "lsmdc": Reader(LSMDCDataset, ("video_dir", "train_file", "val_file", "test_file"),
                    "LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv "
                    "and videos/ (flat or one folder per movie)"),
}


def _reader(name) -> Reader:
    """The registered reader of ``dataset.name`` (READERS is the one list of datasets)."""
    if name not in READERS:
        raise ValueError(f"dataset.name={name!r}; expected one of {tuple(READERS)}")
    return READERS[name]


def dataset_root(cfg: Mapping, progress: bool = True) -> Path:
    """The folder to read; the synthetic dataset is generated here on first use."""
    name = cfg.get("name")
    reader = _reader(name)
    if name == "synthetic":
        gen = dict(cfg.get("generator") or {})
        return ensure_synthetic_dataset(cfg.get("root"), progress=progress, **gen)
    root = Path(str(cfg.get("root"))).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset.root={root} does not exist: point dataset.root at the folder "
                                f"holding {reader.layout}")
    return root


def split_sampling(cfg: Mapping, split: str):
    """The frame sampling of ``split`` (``data.KeyframeParams.from_config``: the one place the
    ``dataset`` config becomes frame sampling, for datasets, extraction and search)."""
    return KeyframeParams.from_config(cfg, split)


def frame_cache_dir(cfg: Mapping, root: Path, scheme: str) -> Path:
    """Where the frame cache of ``scheme`` lives: ``dataset.frame_cache.dir`` (``{keyframes}`` and
    ``{size}`` in it are filled in) or ``<root>/frames/<scheme>-<size>``."""
    fc = with_video_defaults(cfg)["frame_cache"]
    size = int(fc["size"])
    if fc["dir"]:
        return Path(str(fc["dir"]).replace("{keyframes}", scheme).replace("{size}", str(size))).expanduser()
    return default_frame_cache_dir(root, scheme, size)


def build_split(cfg: Mapping, root: Path, split: str, image_size: int, seed: int,
                progress: bool = True, allow_missing: Optional[bool] = None, verify: Optional[bool] = None):
    """A map-style dataset for ``split`` ('train', 'val', 'test') of the configured dataset.

    allow_missing: drop missing/unreadable videos (and their captions) instead of failing;
    None = ``dataset.allow_missing``. The dataset's ``missing_videos`` lists what was dropped.
    verify: check up front that every video reads (None: val/test yes, train no).
    Training items of unreadable videos come back marked ``broken`` (``dataset.skip_broken``),
    which ``TokenizeCollate`` drops and counts; val/test splits are checked up front instead.
    """
    cfg = with_video_defaults(cfg)  # a partial config takes the YAML defaults, not values written here
    reader = _reader(cfg.get("name"))
    sampling = split_sampling(cfg, split)
    fc = cfg["frame_cache"]
    train = split == "train"
    options = dict(
        split=split, sampling=sampling, caption_mode=cfg.get("caption_mode") if train else "all",
        frame_order=cfg["frame_order"] if train else cfg["eval_frame_order"],
        image_size=image_size, seed=seed, normalize=bool(cfg["normalize"]),
        frame_cache=fc["use"], frame_cache_dir=frame_cache_dir(cfg, root, sampling.scheme),
        frame_cache_size=int(fc["size"]), frame_cache_format=fc["format"],
        cache_frames=bool(cfg["cache_frames"]),
        cache_budget_bytes=int(float(cfg["cache_budget_gb"]) * 2 ** 30),
        skip_broken=train and bool(cfg["skip_broken"]),
        allow_missing=bool(cfg["allow_missing"]) if allow_missing is None else allow_missing,
        verify=verify, progress=progress,
    )
    # File names only when the config gives them: each reader owns its defaults.
    files = {k: cfg[k] for k in reader.file_keys if cfg.get(k)}
    return reader.cls(root, **files, **options)


def list_split(cfg: Mapping, root: Path, split: str, image_size: int = 224, seed: int = 0):
    """``split`` read for its listing only (its videos and captions): no frame cache, no
    up-front video checks, missing videos dropped, and no warnings (what is missing is reported
    where the videos are used). For the querybank's captions, search and extract_frames.py."""
    cfg = with_video_defaults(cfg)
    listing = {**cfg, "frame_cache": {**cfg["frame_cache"], "use": False}, "cache_frames": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_split(listing, root, split, image_size, seed, progress=False, allow_missing=True, verify=False)


def dataset_videos(cfg: Mapping, root: Path) -> Tuple[Dict[str, Path], Dict[str, str]]:
    """Every video the dataset's annotation files name, over all splits that have annotations:
    (video id -> file, video id -> what was looked for, for the missing ones). For extract_frames.py.
    Raises the first split's MissingDataError when no split has its annotation files."""
    found: Dict[str, Path] = {}
    missing: Dict[str, str] = {}
    errors = []
    for split in ("train", "val", "test"):
        try:
            ds = list_split(cfg, root, split)  # missing videos are reported as failures instead
        except EmptySplitError as e:  # every video of the split is missing
            dropped = e.missing_reasons
        except MissingDataError as e:  # this split's annotation file is absent (e.g. no MSR-VTT val)
            errors.append(e)
            continue
        else:
            found.update({v: ds.video_path(v) for v in ds.video_order})
            dropped = ds.missing_reasons
        for v, reason in dropped.items():
            missing.setdefault(v, reason.removeprefix("file not found: "))
    if not found and not missing:
        raise errors[0] if errors else ValueError(f"the dataset at {root} names no videos")
    return found, {v: r for v, r in missing.items() if v not in found}


def val_split_name(cfg: Mapping) -> Optional[str]:
    return cfg.get("val_split") or None
