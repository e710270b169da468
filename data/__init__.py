"""Data layer: the MSR-VTT, MSVD, DiDeMo, ActivityNet Captions and LSMDC readers, frame sampling
and keyframe selection, frame caches, CLIP preprocessing, synthetic data."""

from .base import EmptySplitError, MissingDataError, MissingVideosWarning, SplitVideos, UnreadableVideosError, VideoTextDataset
from .activitynet import ActivityNetDataset
from .collate import BrokenVideoWarning, collate_fn
from .didemo import DiDeMoDataset
from .frame_store import FrameStore, default_cache_dir
from .keyframes import SCHEMES, KeyframeParams, Keyframes, select_keyframes
from .lsmdc import LSMDCDataset
from .msrvtt import MSRVTTDataset
from .msvd import MSVDDataset
from .safe_pickle import UnsafePickleError, load_plain_pickle
from .synthetic import SyntheticConfig, default_synthetic_root, ensure_synthetic_dataset
from .transforms import (
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
from .video import (
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
    "UnsafePickleError",
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
    "default_cache_dir",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "load_plain_pickle",
    "normalize_uint8",
    "normalize_uint8_numpy",
    "pack_clip",
    "probe_video",
    "read_frames",
    "resize_shorter_side",
    "sample_frame_indices",
    "select_keyframes",
]
