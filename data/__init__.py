"""Data layer: dataset readers (``readers/``), video decoding and frame sampling (``video/``),
frame caches (``frames/``), the synthetic dataset (``synthetic/``), and ``splits.py`` (the
``dataset`` config -> a split). The names below are the public API."""

from .readers.base import EmptySplitError, MissingDataError, MissingVideosWarning, SplitVideos, UnreadableVideosError, VideoTextDataset
from .readers.activitynet import ActivityNetDataset
from .readers.collate import BrokenVideoWarning, collate_fn
from .readers.didemo import DiDeMoDataset
from .frames.store import FrameStore, default_frame_cache_dir
from .video.keyframes import SCHEMES, KeyframeParams, Keyframes, select_keyframes
from .readers.lsmdc import LSMDCDataset
from .readers.msrvtt import MSRVTTDataset
from .readers.msvd import MSVDDataset
from .synthetic.generate import SyntheticConfig, default_synthetic_root, ensure_synthetic_dataset
from .video.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    clip_preprocess,
    clip_resize_crop,
    normalize_uint8,
    normalize_uint8_numpy,
    pack_clip,
    resize_shorter_side,
)
from .video.decode import (
    VideoInfo,
    VideoMetadataWarning,
    VideoReadError,
    VideoTruncatedWarning,
    check_readable,
    probe_video,
    read_frames,
    sample_frame_indices,
)

__all__ = [
    "ActivityNetDataset",
    "DiDeMoDataset",
    "LSMDCDataset",
    "BrokenVideoWarning",
    "CLIP_MEAN",
    "CLIP_STD",
    "EmptySplitError",
    "FrameStore",
    "KeyframeParams",
    "Keyframes",
    "MSRVTTDataset",
    "MSVDDataset",
    "MissingDataError",
    "MissingVideosWarning",
    "SCHEMES",
    "SplitVideos",
    "SyntheticConfig",
    "UnreadableVideosError",
    "VideoInfo",
    "VideoMetadataWarning",
    "VideoReadError",
    "VideoTextDataset",
    "VideoTruncatedWarning",
    "center_crop",
    "check_readable",
    "clip_preprocess",
    "clip_resize_crop",
    "collate_fn",
    "default_frame_cache_dir",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "normalize_uint8",
    "normalize_uint8_numpy",
    "pack_clip",
    "probe_video",
    "read_frames",
    "resize_shorter_side",
    "sample_frame_indices",
    "select_keyframes",
]
