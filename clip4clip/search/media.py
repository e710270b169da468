"""Reading a library video for the index: the frames to encode, a thumbnail, a playable copy.

Frames come from the data pipeline (``data.video.read_frames``). The evaluation frames of a
video are usually a subset of its moment frames (same clock, denser or equal rate), so one
decoding pass serves both; otherwise, or when the file's metadata proved wrong, the evaluation
frames are read again on their own so they are exactly what evaluation would read.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
from PIL import Image

from data.video import (VideoInfo, VideoMetadataWarning, VideoReadError, VideoTruncatedWarning,
                        probe_video, read_frames, sample_frame_indices)

from .encoder import Sampling

#: Longest side of a thumbnail in pixels.
THUMB_SIZE = 320
#: Playback copies are scaled down to at most this height (pixels): they are for previewing.
PROXY_MAX_HEIGHT = 480
#: (container extension, FourCC) pairs Chromium, Firefox and Safari all play as they are.
_PLAYABLE = {
    ".mp4": {"avc1", "h264", "avc3", "av01"},
    ".m4v": {"avc1", "h264", "avc3"},
    ".mov": {"avc1", "h264", "avc3"},
    ".webm": {"vp80", "vp90", "av01", "vp08", "vp09"},
}


@dataclass
class SampledForIndex:
    """video_frames uint8 [Tv, H, W, 3]: the evaluation frames; moment_frames uint8 [Tm, H, W, 3]
    and moment_times float64 [Tm] (seconds): the frames scored for the best moment; info: the
    file's metadata; notes: warnings about repaired metadata or truncation."""

    video_frames: np.ndarray
    moment_frames: np.ndarray
    moment_times: np.ndarray
    info: VideoInfo
    notes: List[str]


def sample_for_index(path: Path, sampling: Sampling) -> SampledForIndex:
    """Decode what the index needs from one video. Raises VideoReadError naming the file."""
    info = probe_video(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moment_frames, moment_times = read_frames(path, sampling.moment_fps, sampling.moment_frames, "uniform")
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    repaired = any(issubclass(w.category, (VideoTruncatedWarning, VideoMetadataWarning)) for w in caught)
    video_frames = None
    if not repaired:  # metadata confirmed: the evaluation frames are computable without decoding
        idx = sample_frame_indices(info.frame_count, info.fps, sampling.fps, sampling.max_frames,
                                   sampling.slice_framepos, rule=sampling.frame_rule)
        want = idx / info.fps
        pos = np.minimum(np.searchsorted(moment_times, want - 1e-6), len(moment_times) - 1)
        if len(want) and np.allclose(moment_times[pos], want, atol=1e-6):
            video_frames = moment_frames[pos]
    if video_frames is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported by the first pass
            video_frames, _ = read_frames(path, sampling.fps, sampling.max_frames, sampling.slice_framepos,
                                          rule=sampling.frame_rule)
    if len(moment_frames) == 0 or len(video_frames) == 0:
        raise VideoReadError(path, "no decodable frames")
    return SampledForIndex(video_frames, moment_frames, moment_times, info, notes)


def write_thumbnail(frames: np.ndarray, times: np.ndarray, duration: float, dst: Path) -> None:
    """JPEG of the sampled frame nearest the middle of the video, longest side ``THUMB_SIZE``."""
    i = int(np.argmin(np.abs(times - duration / 2)))
    image = Image.fromarray(frames[i])
    scale = THUMB_SIZE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    image.save(dst, "JPEG", quality=85)


def fourcc(path: Path) -> str:
    """The video codec's FourCC as OpenCV reports it, lower case ('' when unknown)."""
    cap = cv2.VideoCapture(str(path))
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) if cap.isOpened() else 0
    finally:
        cap.release()
    return code.to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower() if code else ""


def browser_playable(path: Path) -> bool:
    """True when browsers play the file as it is (H.264 in MP4/MOV, VP8/VP9/AV1 in WebM).
    AVI, MKV, MPEG-4 Part 2 ('mp4v', the synthetic clips) and the rest need a playback copy."""
    return fourcc(path) in _PLAYABLE.get(path.suffix.lower(), set())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence OpenCV's FFmpeg notice about the WebM codec tag (printed straight to fd 2 for
    every writer; the file is fine), without hiding Python-level errors."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def write_proxy(src: Path, dst: Path, fps: Optional[float] = None) -> None:
    """Re-encode ``src`` as VP8 WebM (OpenCV's FFmpeg; no audio) with every frame kept at the
    same rate, so timestamps, and therefore best moments, are the same as in the original.
    Raises VideoReadError when the source does not decode or the copy cannot be written."""
    cap = cv2.VideoCapture(str(src))
    writer = None
    try:
        if not cap.isOpened():
            raise VideoReadError(src, "OpenCV cannot open it to make a playback copy")
        rate = fps or cap.get(cv2.CAP_PROP_FPS) or 25.0
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            h, w = frame.shape[:2]
            if h > PROXY_MAX_HEIGHT:
                w, h = round(w * PROXY_MAX_HEIGHT / h), PROXY_MAX_HEIGHT
            w, h = w - w % 2, h - h % 2  # VP8 wants even sides
            if writer is None:
                with _quiet_stderr():
                    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"VP80"), float(rate), (w, h))
                if not writer.isOpened():
                    raise VideoReadError(src, "OpenCV cannot write a VP8 WebM playback copy")
            if frame.shape[:2] != (h, w):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
            writer.write(frame)
            n += 1
        if n == 0:
            raise VideoReadError(src, "no frame decodes for the playback copy")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
