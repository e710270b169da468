"""Skipping whole stretches of a video without decoding them, only where that is exact.

``grab()`` skips the colour conversion of unused frames but still decodes them; sampling 12
frames from 30 s of 30 fps video decodes 900. Seeking (``CAP_PROP_POS_FRAMES``) avoids that, but
OpenCV's FFmpeg seek has two catches: it maps the target frame to a timestamp and back, which is
only exact when frame n has pts ``start + n * step`` (constant frame rate, no B-frame reordering,
no gaps); and it lands on a keyframe at least 16 frames before the target and decodes forward
from there, so a seek pays off only when keyframes are dense compared to the gap it jumps.

So, before seeking, ``scan_packets`` reads the packet headers in raw mode (no decoding: about
1 ms for a 10 s clip) and returns the keyframe positions only when the pts prove the mapping
exact; ``plan_seeks`` then seeks to a target only where that decodes fewer frames than grabbing
through; ``decode_planned`` checks the position after every frame and gives up (the caller falls
back to a plain sequential pass) at the first surprise. Files that fail the proof (most H.264
with B-frames, variable frame rate) simply take the sequential path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = ["PacketScan", "SeekMismatch", "decode_planned", "plan_seeks", "scan_packets", "worth_scanning"]

#: OpenCV's FFmpeg seek starts from a keyframe at or before ``target - 16`` (``delta = 16`` in
#: cap_ffmpeg_impl.hpp) and decodes forward to the target.
SEEK_BACKOFF = 16
#: The rest of a seek (demuxer seek, decoder flush), in frame decodes.
SEEK_OVERHEAD = 4
#: Mean gap (frames) between targets below which a packet scan cannot pay for itself.
MIN_MEAN_GAP = SEEK_BACKOFF + 8

_RAW_SUPPORTED = all(hasattr(cv2, n) for n in ("CAP_PROP_FORMAT", "CAP_PROP_LRF_HAS_KEY_FRAME", "CAP_PROP_PTS"))


class SeekMismatch(RuntimeError):
    """A planned seek did not land where expected; decode sequentially instead."""


@dataclass(frozen=True)
class PacketScan:
    """Packets of a video stream whose frame numbers are exactly known.

    num_frames: packets (= frames) in the stream; keyframes: int64 [K] sorted frame numbers of
    the keyframes (always starts with 0).
    """

    num_frames: int
    keyframes: np.ndarray


def worth_scanning(targets: Sequence[int]) -> bool:
    """True when the targets are far enough apart that seeking could skip decoding."""
    if len(targets) < 2:
        return bool(len(targets)) and int(targets[0]) > MIN_MEAN_GAP
    return (int(targets[-1]) - int(targets[0])) / (len(targets) - 1) >= MIN_MEAN_GAP


def scan_packets(path: str) -> PacketScan | None:
    """Keyframe positions of ``path``'s video stream, or None when seeking would not be exact.

    Reads packets in OpenCV's raw mode (demuxing only). Returns None when raw mode is
    unavailable, the file does not open, the first packet is not a keyframe, or the pts are not
    ``pts0 + n * step`` for every packet n (reordered B-frames, variable frame rate, gaps).
    """
    if not _RAW_SUPPORTED:
        return None
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not cap.isOpened():
            return None
        pts, keys = [], []
        while cap.grab():
            if cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
                keys.append(len(pts))
            pts.append(cap.get(cv2.CAP_PROP_PTS))
    finally:
        cap.release()
    if len(pts) < 2 or not keys or keys[0] != 0:
        return None
    p = np.asarray(pts, dtype=np.float64)
    step = p[1] - p[0]
    if not step > 0 or not np.array_equal(p, p[0] + step * np.arange(len(p))):
        return None
    return PacketScan(len(p), np.asarray(keys, dtype=np.int64))


def plan_seeks(targets: Sequence[int], keyframes: np.ndarray) -> list[bool]:
    """For each target (sorted frame numbers), whether to seek to it rather than grab through.

    Cost model in frame decodes: grabbing from the current position ``pos`` costs
    ``target - pos``; seeking costs ``target - k + SEEK_OVERHEAD`` with ``k`` the last keyframe
    at or before ``target - SEEK_BACKOFF`` (where OpenCV starts decoding).
    """
    plan, pos = [], 0
    for t in (int(x) for x in targets):
        k = int(keyframes[np.searchsorted(keyframes, max(t - SEEK_BACKOFF, 0), side="right") - 1])
        seek = t - k + SEEK_OVERHEAD < t - pos
        plan.append(seek)
        pos = t + 1
    return plan


def decode_planned(cap: cv2.VideoCapture, targets: Sequence[int], plan: Sequence[bool]) -> dict[int, np.ndarray]:
    """Decode ``targets`` (sorted) from a capture at frame 0, seeking where ``plan`` says.

    Returns {frame number: RGB uint8 [H, W, 3]}. Raises SeekMismatch when a frame does not
    decode or the capture's position is not the expected one after a frame.
    """
    frames, pos = {}, 0
    for t, seek in zip((int(x) for x in targets), plan):
        if seek:
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            pos = t
        while pos < t:
            if not cap.grab():
                raise SeekMismatch(f"stream ended at frame {pos} before frame {t}")
            pos += 1
        if not cap.grab():
            raise SeekMismatch(f"frame {t} does not decode")
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            raise SeekMismatch(f"frame {t} does not convert")
        pos = t + 1
        if int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) != pos:
            raise SeekMismatch(f"after frame {t} the capture reports position {cap.get(cv2.CAP_PROP_POS_FRAMES)}")
        frames[t] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return frames
