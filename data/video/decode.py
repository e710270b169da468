"""Reading frames from video files with OpenCV, CLIP4Clip style.

Frame sampling follows CLIP4Clip's extractor: candidate frames are taken at ``fps`` frames per
second of video (with ``fps=1`` the first frame of every second), and when there are more
candidates than ``max_frames`` they are cut down to the first (``head``), last (``tail``) or an
evenly spread (``uniform``) subset. ``sample_frame_indices(rule="official")`` reproduces the
official code's integer arithmetic instead (int fps, truncated linspace), which differs for
fractional frame rates such as 29.97. A ``window`` of seconds restricts the candidates to
part of the video (CLIP4Clip's DiDeMo loader reads seconds 0..31 only).

Decoding is one sequential pass: ``grab()`` for every frame (it advances the demuxer/decoder but
skips the colour conversion and the copy into a numpy array) and ``retrieve()`` only for the
frames that are kept. Seeking with ``CAP_PROP_POS_FRAMES`` is used only where ``data.video.seeking``
proves it frame-exact (constant frame rate, no reordered B-frames) and cheaper (keyframes close
enough that it skips decoding); elsewhere it is slow (OpenCV seeks to a keyframe and decodes
forward anyway) and not frame-accurate for every codec.

Container metadata is not trusted blindly: fps that is zero, NaN or absurd is replaced by an
assumed 25 fps, and when the number of frames that actually decode differs from the reported
count, the frames are re-sampled from what decoded.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from clip4clip.core.errors import UserError

from ..defaults import video_defaults
from . import seeking

__all__ = [
    "ASSUMED_FPS",
    "FRAME_ORDERS",
    "FRAME_RULES",
    "SLICE_FRAMEPOS",
    "SampledVideo",
    "VideoInfo",
    "VideoReadError",
    "VideoTruncatedWarning",
    "VideoMetadataWarning",
    "check_readable",
    "check_window",
    "open_video",
    "probe_video",
    "read_frames",
    "sample_frame_indices",
    "sample_video",
    "window_end_frame",
]

#: fps assumed when the container reports none, NaN or an absurd value.
ASSUMED_FPS = 25.0
#: Reported fps outside this range (frames per second) are treated as broken metadata. Real
#: footage is 1..240 fps; broken containers report 0, NaN, 1000 or 90000 (a timebase).
_FPS_RANGE = (1.0, 240.0)
#: Reported frame counts above this are treated as broken (24 hours at 240 fps).
_MAX_PLAUSIBLE_FRAMES = 24 * 3600 * 240

# OpenCV's own thread pool is not fork-safe: a process that forks after the pool has started
# (DataLoader workers, multiprocessing pools) can deadlock in the child on the pool's lock (seen
# here after one cv2.GaussianBlur). The data layer parallelises across videos with processes and
# threads, where per-call parallelism only oversubscribes the cores, so it is switched off for
# the process as soon as the data layer is imported.
cv2.setNumThreads(1)

SLICE_FRAMEPOS = ("head", "tail", "uniform")
FRAME_ORDERS = ("normal", "reverse", "random")
#: Frames per clip when nothing says otherwise (CLIP4Clip's 12): the dataset config's
#: ``max_frames`` (configs/dataset/base/video.yaml, where the default is written once).
DEFAULT_MAX_FRAMES = video_defaults()["max_frames"]

#: ``sample_frame_indices`` rules: "exact" (time-based) or "official" (CLIP4Clip's own indices).
FRAME_RULES = ("exact", "official")


class VideoReadError(UserError, RuntimeError):
    """A video file could not be read. ``path`` and ``reason`` are kept as attributes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path!r}: {reason}")


class VideoTruncatedWarning(UserWarning):
    """Fewer frames decoded than the container reported; the decoded ones were used."""


class VideoMetadataWarning(UserWarning):
    """The container's fps or frame count was implausible and was replaced."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video file.

    fps: frames per second used for timing (``ASSUMED_FPS`` when the metadata was unusable).
    frame_count: number of frames (decoded count when the metadata was unusable or counted).
    width, height: frame size in pixels.
    duration: frame_count / fps, in seconds.
    fps_assumed: True when ``fps`` is ``ASSUMED_FPS`` rather than the container's value.
    frame_count_decoded: True when ``frame_count`` comes from decoding rather than metadata.
    notes: human-readable remarks about replaced metadata.
    """

    fps: float
    frame_count: int
    width: int
    height: int
    duration: float
    fps_assumed: bool = False
    frame_count_decoded: bool = False
    notes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------------------
# Pure sampling logic
# ----------------------------------------------------------------------------------------------


def sample_frame_indices(
    num_frames: int,
    video_fps: float,
    fps: float = 1.0,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    slice_framepos: str = "uniform",
    *,
    rule: str = "exact",
    window: Sequence[int] | None = None,
) -> np.ndarray:
    """Indices of the frames to keep, in increasing order (int64 array of length <= max_frames).

    ``rule="exact"`` (default): candidates are the first frame at or after each time ``j / fps``
    seconds (j = 0, 1, ...) that lies inside the video, i.e. ``ceil(j * video_fps / fps)`` for
    ``fps=1``: the first frame of each second; for ``fps > 1``: ``fps`` frames evenly spread
    inside each second. If there are more than ``max_frames`` candidates, ``slice_framepos``
    chooses ``head`` (the first ``max_frames``), ``tail`` (the last) or ``uniform``
    (``np.linspace`` over the candidate positions, rounded to the nearest).

    ``rule="official"``: CLIP4Clip's own indices (``_official_candidates``): the frame rate is
    truncated to an int, so a 29.97 fps video is read every 29 frames (10 s of it give 11
    candidates where the exact rule gives 10), and ``uniform`` truncates the linspace positions
    (``np.linspace(..., dtype=int)``), which can pick a candidate one earlier. ``fps`` must then
    be a whole number of frames per second no larger than ``int(video_fps)`` (CLIP4Clip's
    ``--feature_framerate`` is an int, and its extractor asserts the rest).

    ``window=(first, last)``: only the candidates of seconds ``first`` .. ``last`` (whole
    seconds, both included) are kept, before the cut to ``max_frames``; None: the whole video.
    Under the official rule these are the frames CLIP4Clip's extractor reads when given
    ``start_time=first, end_time=last`` (seconds ``first`` .. ``min(last, duration)``, each
    second ``sec`` starting at frame ``sec * int(video_fps)``; its DiDeMo loader passes 0 and 31);
    under the exact rule, the sample times ``j / fps`` in ``[first, last + 1)``.

    ``max_frames=None`` keeps every candidate.

    num_frames: frames in the video (>= 0). video_fps: the video's frame rate (> 0).
    fps: sampling rate in frames per second of video (> 0). rule: "exact" or "official".
    """
    if rule not in FRAME_RULES:
        raise ValueError(f"rule must be one of {FRAME_RULES} (frame sampling rule), got {rule!r}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if not (video_fps > 0 and math.isfinite(video_fps)):
        raise ValueError(f"video_fps must be a positive finite number, got {video_fps}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps (sampling rate) must be a positive finite number, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if slice_framepos not in SLICE_FRAMEPOS:
        raise ValueError(f"slice_framepos must be one of {SLICE_FRAMEPOS}, got {slice_framepos!r}")
    window = check_window(window)
    if num_frames == 0:
        return np.zeros(0, dtype=np.int64)
    if rule == "official":
        cand = _official_candidates(int(num_frames), video_fps, fps)
        if window is not None:
            sec = cand // int(video_fps)  # the second whose frames CLIP4Clip reads this one for
            cand = cand[(sec >= window[0]) & (sec <= window[1])]
        # CLIP4Clip's uniform cut truncates the linspace positions (np.linspace(dtype=int)).
        return _cut(cand, max_frames, slice_framepos, np.floor)

    step = video_fps / fps  # frames between two sample times
    num_times = int(math.ceil(num_frames / step))  # sample times j/fps with j*step < num_frames
    times = np.arange(num_times, dtype=np.float64)
    if window is not None:  # sample times j / fps in [first, last + 1)
        times = times[(times >= window[0] * fps - 1e-9) & (times < (window[1] + 1) * fps - 1e-9)]
    # The small epsilon keeps an exact integer product (e.g. 3 * 10.0) from rounding up to the
    # next frame because of float error.
    cand = np.ceil(times * step - 1e-6).astype(np.int64)
    cand = cand[cand < num_frames]
    cand = np.unique(cand)  # fps > video_fps maps several times onto one frame
    return _cut(cand, max_frames, slice_framepos, np.round)


def _cut(cand: np.ndarray, max_frames: int | None, slice_framepos: str, to_int) -> np.ndarray:
    """At most ``max_frames`` of the candidate frames: the first, the last, or evenly spread
    (linspace positions made whole by ``to_int``: round for the exact rule, floor as upstream)."""
    if max_frames is None or len(cand) <= max_frames:
        return cand
    if slice_framepos == "head":
        return cand[:max_frames]
    if slice_framepos == "tail":
        return cand[-max_frames:]
    return cand[to_int(np.linspace(0, len(cand) - 1, num=max_frames)).astype(np.int64)]


def check_window(window) -> tuple[int, int] | None:
    """``window`` as ``(first, last)`` whole seconds (0 <= first <= last), or None; ValueError
    naming it otherwise (CLIP4Clip's extractor takes int start/end times too). Any sequence of
    two (an OmegaConf list too) is accepted."""
    if window is None:
        return None
    if (not isinstance(window, Sequence) or isinstance(window, (str, bytes)) or len(window) != 2
            or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in window)
            or not 0 <= window[0] <= window[1]):
        raise ValueError(f"window_seconds={window!r}; expected [first, last]: whole seconds, "
                         "0 <= first <= last (both included), or null for the whole video")
    return int(window[0]), int(window[1])


def window_end_frame(window: Sequence[int], video_fps: float, rule: str) -> int:
    """A frame number at or past which no candidate of ``window`` lies (its last second ends
    there): a video with at least that many frames has every candidate of the window."""
    last = int(window[1]) + 1
    if rule == "official":
        return last * int(video_fps)
    return int(math.ceil(last * video_fps)) + 1  # ceil(j * step) can reach ceil(last * video_fps)


def _official_candidates(num_frames: int, video_fps: float, fps: float) -> np.ndarray:
    """The frames CLIP4Clip's ``RawVideoExtractorCV2.video_to_tensor`` reads (its
    ``dataloaders/rawvideo_util.py``, whole video, ``sample_fp = fps``), as int64 indices.

    It works in whole frames per second: ``f = int(video_fps)``, ``interval = f // sample_fp``
    (1 if 0), in-second offsets ``range(0, f, interval)[:sample_fp]``, and for every second
    ``sec`` in ``0 .. ceil(num_frames / f)`` reads frame ``sec * f + offset``, stopping at the
    first read past the end. The indices increase, so that is every index below num_frames.
    """
    f = int(video_fps)
    if f < 1:
        raise ValueError(
            f"rule='official' needs video_fps >= 1 (CLIP4Clip steps by int(fps) frames), got {video_fps}"
        )
    if not float(fps).is_integer():
        raise ValueError(
            f"rule='official' samples a whole number of frames per second (CLIP4Clip's "
            f"--feature_framerate is an int), got fps={fps}"
        )
    sample_fp = int(fps)
    interval = max(f // sample_fp, 1)
    offsets = np.arange(0, f, interval)
    if len(offsets) < sample_fp:  # CLIP4Clip: assert len(inds) >= sample_fp
        raise ValueError(
            f"rule='official' cannot take fps={sample_fp} frames per second from a {video_fps:g} fps video "
            f"(at most int(video_fps) = {f})"
        )
    offsets = offsets[:sample_fp]
    total_duration = (num_frames + f - 1) // f
    cand = (np.arange(total_duration + 1)[:, None] * f + offsets[None, :]).reshape(-1)
    return cand[cand < num_frames].astype(np.int64)


def _sanitize_fps(reported: float) -> tuple[float, str | None]:
    """(fps to use, note or None). Unusable fps (0, negative, NaN, inf, absurd) -> ASSUMED_FPS."""
    if reported is not None and math.isfinite(reported) and _FPS_RANGE[0] <= reported <= _FPS_RANGE[1]:
        return float(reported), None
    return ASSUMED_FPS, (
        f"reported fps {reported!r} is outside {_FPS_RANGE[0]:g}..{_FPS_RANGE[1]:g}; "
        f"assuming {ASSUMED_FPS:g} fps"
    )


def _sanitize_count(reported: float) -> int | None:
    """Reported frame count as int, or None when it is unusable (<= 0, NaN, absurd)."""
    if reported is None or not math.isfinite(reported) or reported < 1 or reported > _MAX_PLAUSIBLE_FRAMES:
        return None
    return int(round(reported))


# ----------------------------------------------------------------------------------------------
# OpenCV access
# ----------------------------------------------------------------------------------------------


def _decode_threads() -> int:
    """FFmpeg decoding threads per capture: ``$CLIP4CLIP_DECODE_THREADS``, default 1 (0 = FFmpeg's choice)."""
    value = os.environ.get("CLIP4CLIP_DECODE_THREADS", "1")
    try:
        return max(int(value), 0)
    except ValueError:
        raise ValueError(f"CLIP4CLIP_DECODE_THREADS={value!r}; expected a non-negative integer") from None


def _open_capture(path: str) -> cv2.VideoCapture:
    """Open ``path`` with OpenCV's FFmpeg backend. Separate so tests can substitute a capture.

    One decoding thread by default: loading parallelises across videos (DataLoader workers, the
    frame cache's threads), and per-capture thread pools only add start-up cost and
    oversubscription (3x slower on the 64x64 synthetic clips, no gain on 340x256 footage).
    """
    threads = _decode_threads()
    if threads and hasattr(cv2, "CAP_PROP_N_THREADS"):
        return cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    return cv2.VideoCapture(path, cv2.CAP_FFMPEG)


def _check_file(path: str | os.PathLike) -> str:
    """Return ``path`` as str after checking it exists and is non-empty (VideoReadError if not)."""
    p = Path(path)
    if not p.exists():
        raise VideoReadError(p, "file does not exist")
    if not p.is_file():
        raise VideoReadError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoReadError(p, "file is empty (0 bytes)")
    return str(p)


def _open_checked(path: str) -> cv2.VideoCapture:
    cap = _open_capture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(
            path,
            "OpenCV (FFmpeg backend) cannot open it: not a video, an unsupported codec, or a "
            "corrupt/truncated container (an .mp4 cut short usually loses its 'moov' index)",
        )
    return cap


def _count_decodable(path: str, cap: cv2.VideoCapture | None = None) -> int:
    """Number of frames that decode, by grabbing to the end (from a fresh or given capture)."""
    own = cap is None
    cap = _open_checked(path) if own else cap
    try:
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        if own:
            cap.release()


def probe_video(path: str | os.PathLike, count_frames: bool = False) -> VideoInfo:
    """Metadata of a video, with broken values replaced.

    fps: the container's value, or ``ASSUMED_FPS`` (with a note) when it is 0/NaN/absurd.
    frame_count: the container's value; counted by decoding the whole file when the value is
    unusable or when ``count_frames=True`` (the only way to be sure; costs a full decode).
    Raises VideoReadError when the file is missing, empty, cannot be opened, or (when counted)
    has no decodable frame.
    """
    spath = _check_file(path)
    cap = _open_checked(spath)
    try:
        fps, fps_note = _sanitize_fps(cap.get(cv2.CAP_PROP_FPS))
        reported_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            ok, frame = cap.read()
            if ok and frame is not None:
                height, width = frame.shape[:2]
    finally:
        cap.release()

    notes = [fps_note] if fps_note else []
    count = _sanitize_count(reported_count)
    decoded = False
    if count is None or count_frames:
        n = _count_decodable(spath)
        if count is None:
            notes.append(f"reported frame count {reported_count!r} is unusable; counted {n} decodable frames")
        elif n != count:
            notes.append(f"container reports {count} frames but {n} decode; using {n}")
        count, decoded = n, True
        if n == 0:
            raise VideoReadError(spath, "no decodable frames")
    return VideoInfo(
        fps=fps,
        frame_count=count,
        width=width,
        height=height,
        duration=count / fps,
        fps_assumed=fps_note is not None,
        frame_count_decoded=decoded,
        notes=tuple(notes),
    )


def _decode_selected(cap: cv2.VideoCapture, indices: Sequence[int], verify_until: int | None):
    """One sequential pass over an open capture positioned at frame 0: retrieve the frames at
    ``indices``, only grab the others.

    Returns (frames dict index -> RGB uint8 [H,W,3], decoded_count or None). ``decoded_count`` is
    the number of frames in the file when the pass found out (decoding stopped early, or
    ``verify_until`` is given and frame ``verify_until`` exists, in which case the pass counts
    to the end); None when every wanted frame was read and the count was not checked.
    """
    wanted = set(int(i) for i in indices)
    last = max(wanted) if wanted else -1
    stop = last if verify_until is None else max(last, verify_until)
    frames: dict[int, np.ndarray] = {}
    i = 0
    while i <= stop:
        if not cap.grab():
            return frames, i
        if i in wanted:
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                # A frame that grabs but does not convert is as good as the end of the file.
                return frames, i
            frames[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        i += 1
    if verify_until is None:
        return frames, None
    # Frame ``verify_until`` (== the reported count) exists: the metadata undercounts.
    while cap.grab():
        i += 1
    return frames, i


@dataclass(frozen=True)
class SampledVideo:
    """Frames sampled from a video, with what is needed to place them in time.

    frames: uint8 [T, H, W, 3] RGB in increasing time; indices: int64 [T] frame numbers;
    video_fps: the frame rate used for timing (``ASSUMED_FPS`` if the metadata was unusable);
    num_frames: frames in the file (the decoded count when decoding found the metadata wrong).
    """

    frames: np.ndarray
    indices: np.ndarray
    video_fps: float
    num_frames: int

    @property
    def timestamps(self) -> np.ndarray:
        """float64 [T]: seconds from the start (frame index / fps)."""
        return self.indices.astype(np.float64) / self.video_fps


def _seek_plan(spath: str, idx: np.ndarray, count: int) -> list[bool] | None:
    """Where to seek when decoding ``idx`` (see ``data.video.seeking``): a plan when seeking past long
    stretches is provably exact and cheaper, else None (decode sequentially). Reads the packet
    headers with its own capture, so the caller's capture stays at frame 0."""
    if not seeking.worth_scanning(idx):
        return None
    scan = seeking.scan_packets(spath)
    if scan is None or scan.num_frames != count:
        return None
    plan = seeking.plan_seeks(idx, scan.keyframes)
    return plan if any(plan) else None


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, float, int | None, str]:
    """Open a video for a sequential pass: (capture at frame 0, fps, frame count or None, path).

    fps is sanitised (``ASSUMED_FPS`` with a ``VideoMetadataWarning`` when unusable); the count
    is the container's value, None when it is unusable. The caller releases the capture.
    Raises VideoReadError for a missing, empty or unopenable file.
    """
    spath = _check_file(path)
    cap = _open_checked(spath)
    video_fps, fps_note = _sanitize_fps(cap.get(cv2.CAP_PROP_FPS))
    if fps_note:
        warnings.warn(f"{spath}: {fps_note}", VideoMetadataWarning, stacklevel=3)
    return cap, video_fps, _sanitize_count(cap.get(cv2.CAP_PROP_FRAME_COUNT)), spath


def check_readable(path: str | os.PathLike) -> None:
    """Cheap test that a video will give frames: it exists, opens, and its first frame decodes.

    Raises VideoReadError (naming the file) otherwise. Costs one open and one decoded frame, so
    a whole evaluation split can be checked before any metric is computed.
    """
    spath = _check_file(path)
    cap = _open_checked(spath)
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        raise VideoReadError(spath, "opens but no frame decodes (zero frames or a corrupt stream)")


def sample_video(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    slice_framepos: str = "uniform",
    rule: str = "exact",
    window: Sequence[int] | None = None,
) -> SampledVideo:
    """Sample frames (see ``sample_frame_indices``, ``rule`` and ``window`` included) in one
    grab/retrieve pass; see ``read_frames`` for the robustness rules. Frames are in increasing
    time. With a ``window`` that the video covers, no frame after the window's last candidate
    is decoded. Raises VideoReadError when the window holds no frame of the video."""
    window = check_window(window)
    cap, video_fps, count, spath = open_video(path)
    try:
        reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if count is None:
            count = _count_decodable(spath)
            warnings.warn(
                f"{spath}: reported frame count {reported!r} is unusable; counted {count} frames",
                VideoMetadataWarning,
                stacklevel=2,
            )
            if count == 0:
                raise VideoReadError(spath, "no decodable frames")
        idx = sample_frame_indices(count, video_fps, fps, max_frames, slice_framepos, rule=rule, window=window)
        if window is not None and len(idx) == 0:
            raise VideoReadError(spath, f"no frame in window_seconds={list(window)} (the video has {count} frames "
                                 f"at {video_fps:g} fps)")
        frames = None
        plan = _seek_plan(spath, idx, count)
        if plan is not None:
            try:
                frames = seeking.decode_planned(cap, idx, plan)
            except seeking.SeekMismatch:
                cap.release()
                cap = _open_checked(spath)  # the attempt moved it: start again from frame 0
        if frames is not None:
            decoded = None  # the packet scan counted the frames: the metadata is confirmed
        else:
            # (Short clips never scan, and reuse the capture opened above: one open per video.)
            # The selection depends on the total count unless it is ``head`` and already full,
            # or a window that ends inside the video; only then is checking that the file really
            # ends at ``count`` skipped (checking can cost a decode of the rest of the file; for
            # uniform/tail under one sampling interval). A shorter file than reported still shows:
            # the pass stops before the last wanted frame.
            full_head = slice_framepos == "head" and max_frames is not None and len(idx) == max_frames
            inside = window is not None and count >= window_end_frame(window, video_fps, rule)
            frames, decoded = _decode_selected(cap, idx, None if full_head or inside else count)
    finally:
        cap.release()

    if decoded is not None and decoded != count:
        frames, idx, count = _resample_decoded(spath, frames, decoded, count, video_fps, fps, max_frames,
                                               slice_framepos, rule, window)
    out = np.ascontiguousarray(np.stack([frames[int(i)] for i in idx]))
    return SampledVideo(out, idx, video_fps, int(count))


def _resample_decoded(spath: str, frames: dict, decoded: int, count: int, video_fps: float, fps: float,
                      max_frames: int | None, slice_framepos: str, rule: str,
                      window: tuple[int, int] | None = None) -> tuple[dict, np.ndarray, int]:
    """The container's frame count was wrong (``decoded`` frames really decode): sample again from
    the decoded count, decoding a second time only if the new indices need frames not kept.
    -> (frames by index, indices, count)."""
    if decoded == 0:
        raise VideoReadError(spath, f"no decodable frames (container reports {count})")
    if decoded < count:
        warnings.warn(
            f"{spath}: container reports {count} frames but only {decoded} decode "
            "(truncated or damaged file); sampling from the decoded frames",
            VideoTruncatedWarning,
            stacklevel=3,
        )
    count = decoded
    idx = sample_frame_indices(decoded, video_fps, fps, max_frames, slice_framepos, rule=rule, window=window)
    if window is not None and len(idx) == 0:
        raise VideoReadError(spath, f"no frame in window_seconds={list(window)} (only {decoded} frames decode)")
    if not all(int(i) in frames for i in idx):
        cap = _open_checked(spath)
        try:
            frames, _ = _decode_selected(cap, idx, None)
        finally:
            cap.release()
        if not all(int(i) in frames for i in idx):  # the file changed under us / flaky decode
            raise VideoReadError(spath, "decoding is not repeatable (frames vanished on a second pass)")
    return frames, idx, count


def read_frames(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    slice_framepos: str = "uniform",
    frame_order: str = "normal",
    rng: np.random.Generator | None = None,
    rule: str = "exact",
    window: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample frames from a video file.

    Returns ``(frames, timestamps)``: frames uint8 [T, H, W, 3] RGB, timestamps float64 [T] in
    seconds (frame index / fps), T <= max_frames, in ``frame_order``: ``normal`` (increasing
    time), ``reverse`` or ``random`` (a permutation drawn from ``rng``; a fresh generator when
    None). Sampling: see ``sample_frame_indices`` (``rule``, ``window``).

    Robustness: unusable fps metadata -> ``ASSUMED_FPS``. If fewer frames decode than the
    container reports (a truncated or damaged file), the frames are re-sampled from the decoded
    range and a ``VideoTruncatedWarning`` is issued; if more exist than reported, the real count
    is used. Only when no frame decodes at all does it raise. Raises VideoReadError (naming the
    file) for a missing/empty/unopenable file or one without decodable frames.
    """
    if frame_order not in FRAME_ORDERS:
        raise ValueError(f"frame_order must be one of {FRAME_ORDERS}, got {frame_order!r}")
    sampled = sample_video(path, fps, max_frames, slice_framepos, rule, window)
    out, times = sampled.frames, sampled.timestamps
    if frame_order == "reverse":
        out, times = out[::-1], times[::-1]
    elif frame_order == "random":
        perm = (rng if rng is not None else np.random.default_rng()).permutation(len(out))
        out, times = out[perm], times[perm]
    return np.ascontiguousarray(out), np.ascontiguousarray(times)
