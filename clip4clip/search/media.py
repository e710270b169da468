"""Reading a library video for the index: the frames to encode, a thumbnail, a playable copy.

Frames come from the data pipeline (``data.video.decode.read_frames``). The evaluation frames of a
video are usually a subset of its moment frames (same clock, denser or equal rate), so one
decoding pass serves both; otherwise, or when the file's metadata proved wrong, the evaluation
frames are read again on their own (so they are exactly what evaluation would read) and merged
into the moment frames. Either way every frame is encoded once (``Encoder.encode_for_index``).

Playback copies are made only for files browsers cannot play as they are (``browser_playable``):
H.264 MP4 through PyAV, at most 480p, CRF 28 under a bitrate cap, so a copy is a fraction of an
AVI's size (OpenCV's VP8 writer, the fallback without PyAV, has no rate control: its copies were
2.7x the original).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import cv2
import numpy as np
from PIL import Image

from data.video.decode import (VideoInfo, VideoMetadataWarning, VideoReadError, VideoTruncatedWarning,
                        probe_video, read_frames, sample_frame_indices)

from .encoder import Sampling

#: Longest side of a thumbnail in pixels.
THUMB_SIZE = 320
#: Playback copies are scaled down to at most this height and width (pixels): they are for
#: previewing, and a smaller frame is most of what keeps the index smaller than the library.
PROXY_MAX_HEIGHT = 480
PROXY_MAX_WIDTH = 854
#: x264 constant-rate factor of playback copies (23 is x264's default; 28 looks fine for previews
#: at about half the bytes), capped by ``proxy_maxrate``.
PROXY_CRF = 28
PROXY_BITS_PER_PIXEL = 0.1
PROXY_MAX_BITRATE = 1_500_000
#: (container extension, FourCC) pairs Chromium, Firefox and Safari all play as they are.
_PLAYABLE = {
    ".mp4": {"avc1", "h264", "avc3", "av01"},
    ".m4v": {"avc1", "h264", "avc3"},
    ".mov": {"avc1", "h264", "avc3"},
    ".webm": {"vp80", "vp90", "av01", "vp08", "vp09"},
}


@dataclass
class SampledForIndex:
    """moment_frames uint8 [Tm, H, W, 3] and moment_times float64 [Tm] (seconds, increasing):
    the frames scored for the best moment and segment; video_pos int64 [Tv]: the positions among
    them of the evaluation frames (``video_frames``), so each frame is decoded and encoded once;
    info: the file's metadata; notes: warnings about repaired metadata or truncation."""

    moment_frames: np.ndarray
    moment_times: np.ndarray
    video_pos: np.ndarray
    info: VideoInfo
    notes: List[str]

    @property
    def video_frames(self) -> np.ndarray:
        """uint8 [Tv, H, W, 3]: exactly the frames evaluation reads (``read_frames``)."""
        return self.moment_frames[self.video_pos]


def sample_for_index(path: Path, sampling: Sampling) -> SampledForIndex:
    """Decode what the index needs from one video. Raises VideoReadError naming the file.

    The evaluation frames are always among the moment frames: when the moment sampling does
    not already contain them (a long video whose ``moment_frames`` are spread more thinly than
    the evaluation's, or different rates), they are decoded on their own and merged in, so the
    index holds up to ``max_frames`` more moment frames than ``moment_frames``."""
    info = probe_video(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moment_frames, moment_times = read_frames(path, sampling.moment_fps, sampling.moment_frames, "uniform")
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    repaired = any(issubclass(w.category, (VideoTruncatedWarning, VideoMetadataWarning)) for w in caught)
    video_pos = None
    if not repaired and len(moment_times):  # metadata confirmed: evaluation's frames are known without decoding
        idx = sample_frame_indices(info.frame_count, info.fps, sampling.fps, sampling.max_frames,
                                   sampling.slice_framepos, rule=sampling.frame_rule)
        video_pos = _positions(moment_times, idx / info.fps)
    if video_pos is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported by the first pass
            video_frames, video_times = read_frames(path, sampling.fps, sampling.max_frames, sampling.slice_framepos,
                                                    rule=sampling.frame_rule)
        if len(video_frames):
            moment_frames, moment_times, video_pos = _merge(moment_frames, moment_times, video_frames, video_times)
    if len(moment_frames) == 0 or video_pos is None or len(video_pos) == 0:
        raise VideoReadError(path, "no decodable frames")
    return SampledForIndex(moment_frames, moment_times, video_pos, info, notes)


def _positions(times: np.ndarray, want: np.ndarray) -> Optional[np.ndarray]:
    """Positions in sorted ``times`` of each of ``want`` (seconds); None unless all are there."""
    if not len(want) or not len(times):
        return None
    pos = np.minimum(np.searchsorted(times, want - 1e-6), len(times) - 1)
    return pos.astype(np.int64) if np.allclose(times[pos], want, atol=1e-6) else None


def _merge(frames: np.ndarray, times: np.ndarray, extra: np.ndarray, extra_times: np.ndarray):
    """Moment frames with the evaluation frames merged in by time (the evaluation's pixels win
    where both have a frame) -> (frames, times, positions of ``extra``)."""
    keep = np.ones(len(times), dtype=bool)
    for t in extra_times:
        keep &= ~np.isclose(times, t, atol=1e-6)
    all_times = np.concatenate([times[keep], extra_times])
    order = np.argsort(all_times, kind="stable")
    frames = np.concatenate([frames[keep], extra])[order] if len(frames) else extra
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    return np.ascontiguousarray(frames), all_times[order], where[int(keep.sum()):]


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


def proxy_encoder() -> str:
    """'h264' when PyAV (``pip install av``, in the search extra) can write H.264, else 'vp8'
    (OpenCV's FFmpeg, which has no bitrate control: copies come out several times larger)."""
    try:
        import av
        av.codec.Codec("libx264", "w")
    except Exception:  # noqa: BLE001 - no PyAV, or a build without libx264
        return "vp8"
    return "h264"


def proxy_size(width: int, height: int) -> tuple:
    """Playback-copy frame size: at most ``PROXY_MAX_HEIGHT`` high and ``PROXY_MAX_WIDTH`` wide,
    aspect kept, even sides (4:2:0 chroma needs them)."""
    scale = min(1.0, PROXY_MAX_HEIGHT / max(height, 1), PROXY_MAX_WIDTH / max(width, 1))
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


def proxy_maxrate(width: int, height: int, fps: float) -> int:
    """Bitrate cap (bits/s) of a playback copy: ``PROXY_BITS_PER_PIXEL`` per pixel per frame,
    at most ``PROXY_MAX_BITRATE``, at least 100 kbit/s."""
    return int(min(PROXY_MAX_BITRATE, max(100_000, PROXY_BITS_PER_PIXEL * width * height * max(fps, 1.0))))


def write_proxy(src: Path, dst: Path, fps: Optional[float] = None) -> Path:
    """Write a playback copy of ``src`` for browsers: ``dst`` with the suffix of the codec used
    (``.mp4``: H.264 through PyAV, CRF ``PROXY_CRF`` under a ``proxy_maxrate`` cap, at most
    ``PROXY_MAX_HEIGHT`` p, 2 s keyframe interval, moov atom first so playback starts at once;
    ``.webm``: VP8 through OpenCV when PyAV is missing). No audio. Every frame is kept at the same
    constant rate, so timestamps, and therefore best moments and segments, are the same as in the
    original. Returns the path written. Raises VideoReadError when the source does not decode
    or the copy cannot be written."""
    cap = cv2.VideoCapture(str(src))
    try:
        if not cap.isOpened():
            raise VideoReadError(src, "OpenCV cannot open it to make a playback copy")
        rate = fps or cap.get(cv2.CAP_PROP_FPS) or 25.0
        frames = _frames(cap)
        if proxy_encoder() == "h264":
            return _write_h264(src, dst.with_suffix(".mp4"), frames, float(rate))
        return _write_vp8(src, dst.with_suffix(".webm"), frames, float(rate))
    finally:
        cap.release()


def _frames(cap) -> Iterator[np.ndarray]:
    while True:
        ok, frame = cap.read()
        if not ok or frame is None:
            return
        yield frame


def _write_h264(src: Path, dst: Path, frames: Iterator[np.ndarray], rate: float) -> Path:
    import av
    from fractions import Fraction
    fr = Fraction(rate).limit_denominator(1001)
    out = stream = None
    n = 0
    try:
        for frame in frames:
            if out is None:
                h, w = frame.shape[:2]
                w, h = proxy_size(w, h)
                out = av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"})
                stream = out.add_stream("libx264", rate=fr)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                maxrate = proxy_maxrate(w, h, rate)
                stream.options = {"crf": str(PROXY_CRF), "preset": "veryfast", "profile": "main",
                                  "maxrate": str(maxrate), "bufsize": str(2 * maxrate),
                                  "g": str(max(1, round(2 * rate)))}
                stream.codec_context.time_base = 1 / fr
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
            vf = vf.reformat(width=stream.width, height=stream.height, format="yuv420p",
                             interpolation="AREA")
            vf.pts, vf.time_base = n, 1 / fr
            for packet in stream.encode(vf):
                out.mux(packet)
            n += 1
        if out is None:
            raise VideoReadError(src, "no frame decodes for the playback copy")
        for packet in stream.encode(None):
            out.mux(packet)
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg errors name no file
        raise VideoReadError(src, f"cannot write an H.264 playback copy: {e}") from e
    finally:
        if out is not None:
            out.close()
    return dst


def _write_vp8(src: Path, dst: Path, frames: Iterator[np.ndarray], rate: float) -> Path:
    writer = None
    n = 0
    try:
        for frame in frames:
            h, w = frame.shape[:2]
            w, h = proxy_size(w, h)
            if writer is None:
                with _quiet_stderr():
                    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"VP80"), rate, (w, h))
                if not writer.isOpened():
                    raise VideoReadError(src, "OpenCV cannot write a VP8 WebM playback copy")
            if frame.shape[:2] != (h, w):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
            writer.write(frame)
            n += 1
        if n == 0:
            raise VideoReadError(src, "no frame decodes for the playback copy")
    finally:
        if writer is not None:
            writer.release()
    return dst
