"""Data layer: MSR-VTT-format datasets, video frame sampling, CLIP preprocessing, synthetic data."""

from .collate import collate_fn
from .msrvtt import MSRVTTDataset, MissingDataError
from .synthetic import SyntheticConfig, default_synthetic_root, ensure_synthetic_dataset
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    clip_preprocess,
    clip_resize_crop,
    normalize_uint8,
    normalize_uint8_numpy,
    resize_shorter_side,
)
from .video import (
    VideoInfo,
    VideoMetadataWarning,
    VideoReadError,
    VideoTruncatedWarning,
    probe_video,
    read_frames,
    sample_frame_indices,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MSRVTTDataset",
    "MissingDataError",
    "SyntheticConfig",
    "VideoInfo",
    "VideoMetadataWarning",
    "VideoReadError",
    "VideoTruncatedWarning",
    "center_crop",
    "clip_preprocess",
    "clip_resize_crop",
    "collate_fn",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "normalize_uint8",
    "normalize_uint8_numpy",
    "probe_video",
    "read_frames",
    "resize_shorter_side",
    "sample_frame_indices",
]
