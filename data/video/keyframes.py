"""Keyframe selection: which frames of a video stand for it.

Two schemes, compared in the thesis:

``uniform``
    CLIP4Clip's sampling (``data.video.decode.sample_video``): candidates at ``fps`` frames per second
    of video (of the seconds in ``window`` when one is set, as CLIP4Clip's DiDeMo loader reads
    seconds 0..31 only), cut down to ``max_frames`` by ``slice_framepos``. Only the kept frames are
    converted to RGB; the others are merely grabbed.

``maxdiff``
    The frames that differ most from the frame before them, i.e. shot changes and fast motion
    (the seed's scheme). Every ``step``-th frame is evaluated: square centre crop, Gaussian
    blur (``blur`` x ``blur`` kernel, removes noise and compression artefacts), sum of absolute
    differences to the previously evaluated frame. The ``max_frames`` frames with the largest
    sums are kept, in temporal order. Ties go to the earlier frame. The first evaluated frame
    has no predecessor; it counts as a shot start (score +inf), so the opening shot is always
    represented even when nothing in it moves. ``step > 1`` skips the colour conversion and the
    differencing of the frames in between (they are still grabbed: the decoder needs them).

Both run one sequential pass over the file and keep at most ``max_frames`` frames in memory.
The loaders call the same function when no frame cache exists, so cached and decoded frames
are identical (``extract_frames.py`` stores exactly what ``select_keyframes`` returns).
"""

from __future__ import annotations

import heapq
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from ..defaults import video_defaults, with_video_defaults
from .decode import (
    FRAME_RULES,
    SLICE_FRAMEPOS,
    VideoReadError,
    VideoTruncatedWarning,
    check_window,
    open_video,
    sample_video,
)

__all__ = ["SCHEMES", "KeyframeParams", "Keyframes", "diff_score_image", "select_keyframes", "top_k_in_order",
           "window_for_rule"]

SCHEMES = ("uniform", "maxdiff")
_DEFAULTS = video_defaults()


def window_for_rule(value, rule: str) -> tuple[int, int] | None:
    """The window (``(first, last)`` seconds, both included) that ``dataset.window_seconds``
    gives frame rule ``rule``: null: the whole video; ``[first, last]``: that window under every
    rule; a mapping frame rule -> ``[first, last]`` or null: the entry of ``rule`` (a rule it
    does not name: the whole video). DiDeMo's config maps ``official`` to CLIP4Clip's ``[0, 31]``
    and ``exact`` to null."""
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in FRAME_RULES)
        if unknown:
            raise ValueError(f"window_seconds names frame rule(s) {unknown}; expected some of {FRAME_RULES} "
                             "(each mapped to [first, last] or null)")
        value = value.get(rule)
    return check_window(value)


@dataclass(frozen=True)
class KeyframeParams:
    """How keyframes are chosen.

    scheme: "uniform" or "maxdiff". max_frames: frames kept (>= 1).
    uniform only: fps (candidates per second of video), slice_framepos (head/tail/uniform),
    rule: "exact" (time-based) or "official" (CLIP4Clip's frame indices, which every published
    table used; ``data.video.decode.sample_frame_indices``). window: ``(first, last)`` whole
    seconds, both included: only the candidates of those seconds (CLIP4Clip's DiDeMo loader
    reads seconds 0..31), or None: the whole video (``from_config`` picks it for the rule from
    ``dataset.window_seconds``: ``window_for_rule``).
    maxdiff only: step (evaluate every step-th frame, >= 1), blur (odd Gaussian kernel side in
    pixels of the source frame; 0 or 1 = no blur).
    """

    # The defaults are the dataset config's (configs/dataset/base/video.yaml), written once there.
    scheme: str = _DEFAULTS["keyframes"]
    max_frames: int = _DEFAULTS["max_frames"]
    fps: float = float(_DEFAULTS["fps"])
    slice_framepos: str = _DEFAULTS["slice_framepos"]
    step: int = _DEFAULTS["maxdiff"]["step"]
    blur: int = _DEFAULTS["maxdiff"]["blur"]
    rule: str = _DEFAULTS["frame_rule"]
    window: tuple[int, int] | None = window_for_rule(_DEFAULTS["window_seconds"], _DEFAULTS["frame_rule"])

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"keyframes={self.scheme!r}; expected one of {SCHEMES}")
        object.__setattr__(self, "window", check_window(self.window))  # a list becomes a tuple
        if self.window is not None and self.scheme != "uniform":
            raise ValueError(f"window_seconds={list(self.window)} with keyframes={self.scheme}: a window applies to "
                             "the uniform keyframes only (maxdiff scores the whole video)")
        if not isinstance(self.max_frames, int) or self.max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {self.max_frames!r}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        if self.slice_framepos not in SLICE_FRAMEPOS:
            raise ValueError(f"slice_framepos must be one of {SLICE_FRAMEPOS}, got {self.slice_framepos!r}")
        if self.rule not in FRAME_RULES:
            raise ValueError(f"frame_rule={self.rule!r}; expected one of {FRAME_RULES}")
        if self.rule == "official" and self.scheme == "uniform" and self.fps != int(self.fps):
            # Refused here, before any work, rather than at the first video decoded.
            raise ValueError(f"fps={self.fps} with frame_rule=official: CLIP4Clip samples a whole number of "
                             "frames per second; use an integer dataset.fps or dataset.frame_rule=exact")
        if not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"maxdiff step must be an int >= 1, got {self.step!r}")
        if not isinstance(self.blur, int) or self.blur < 0 or (self.blur > 1 and self.blur % 2 == 0):
            raise ValueError(f"maxdiff blur must be 0, 1 or an odd kernel side in pixels, got {self.blur!r}")

    #: Dataset-config / keyword names -> field names (``keyframes`` is the scheme; the maxdiff
    #: options live under ``maxdiff`` in the config).
    ALIASES = {"keyframes": "scheme", "maxdiff_step": "step", "maxdiff_blur": "blur", "frame_rule": "rule",
               "window_seconds": "window"}

    @classmethod
    def build(cls, base: "KeyframeParams | None" = None, **fields) -> "KeyframeParams":
        """``base`` (default: the class defaults) with the given fields replaced; ``None`` values
        are ignored, alias names (``keyframes``, ``maxdiff_step``, ``maxdiff_blur``) accepted.
        Unknown names raise TypeError naming them."""
        names = set(cls.__dataclass_fields__)
        given = {cls.ALIASES.get(k, k): v for k, v in fields.items() if v is not None}
        unknown = sorted(set(given) - names)
        if unknown:
            raise TypeError(f"unknown frame-sampling option(s) {unknown}; expected {sorted(names | set(cls.ALIASES))}")
        current = asdict(base) if base is not None else {}
        return cls(**{**current, **given})

    @classmethod
    def from_config(cls, cfg, split: str = "train") -> "KeyframeParams":
        """The sampling of ``split`` from a ``dataset`` config (plain mapping or OmegaConf): the one
        place config values become frame sampling, for datasets, extraction and search alike.
        ``keyframes`` is the train scheme, ``eval_keyframes`` that of val/test (two values, so a
        train x test comparison is one sweep); keys that are absent take the YAML defaults.
        ``window_seconds`` gives the uniform scheme the window of ``frame_rule``
        (``window_for_rule``); maxdiff scores the whole video."""
        cfg = with_video_defaults(cfg)
        scheme = cfg["keyframes"] if split == "train" else (cfg["eval_keyframes"] or cfg["keyframes"])
        md = cfg["maxdiff"]
        fps = cfg["fps"]
        window = window_for_rule(cfg["window_seconds"], cfg["frame_rule"])
        return cls.build(scheme=scheme, max_frames=cfg["max_frames"], fps=None if fps is None else float(fps),
                         slice_framepos=cfg["slice_framepos"], step=md["step"], blur=md["blur"],
                         rule=cfg["frame_rule"], window=window if scheme == "uniform" else None)

    def relevant(self) -> dict:
        """The fields that change the selected frames for this scheme (stored in cache manifests,
        compared when a cache is reused; fields of the other scheme are irrelevant)."""
        d = asdict(self)
        drop = ("step", "blur") if self.scheme == "uniform" else ("fps", "slice_framepos", "rule", "window")
        if d["rule"] == "exact":
            drop += ("rule",)  # caches extracted before the rule existed used the exact rule
        if d["window"] is None:
            drop += ("window",)  # ... and the whole video, as caches extracted before the window
        else:
            d["window"] = list(d["window"])  # as the JSON manifest stores it
        return {k: v for k, v in d.items() if k not in drop}


@dataclass
class Keyframes:
    """Selected frames of one video.

    frames: uint8 [T, H, W, 3] RGB at the source resolution, in temporal order (T <= max_frames);
    indices: int64 [T] frame numbers; fps: the video's frame rate (timing); num_frames: frames in
    the file (decoded count where the pass established it); notes: warnings met while reading.
    """

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    num_frames: int
    notes: list[str] = field(default_factory=list)

    @property
    def timestamps(self) -> np.ndarray:
        """float64 [T]: seconds from the start of the video."""
        return self.indices.astype(np.float64) / self.fps

    @property
    def duration(self) -> float:
        """Seconds: num_frames / fps."""
        return self.num_frames / self.fps


def diff_score_image(bgr: np.ndarray, blur: int) -> np.ndarray:
    """What maxdiff compares: the square centre crop of a frame, Gaussian-blurred. uint8 [S, S, 3]."""
    h, w = bgr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = bgr[top : top + s, left : left + s]
    if blur > 1:
        crop = cv2.GaussianBlur(crop, (blur, blur), 0)
    return np.ascontiguousarray(crop)


def top_k_in_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores (ties: the earlier position), in increasing order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return np.sort(order)


def _select_maxdiff(path: str | os.PathLike, params: KeyframeParams) -> Keyframes:
    cap, video_fps, reported, spath = open_video(path)
    # Min-heap of (score, -index, frame): its root is the weakest kept frame; a later frame
    # with an equal score has a smaller -index and so never displaces an earlier one.
    heap: list[tuple[float, int, np.ndarray]] = []
    prev = None
    i = 0
    try:
        while cap.grab():
            if i % params.step == 0:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break  # a frame that grabs but does not convert ends the usable stream
                img = diff_score_image(bgr, params.blur)
                # cv2.sumElems sums in double precision without a widened copy of the frame.
                score = math.inf if prev is None else float(sum(cv2.sumElems(cv2.absdiff(img, prev))[:3]))
                prev = img
                entry = (score, -i, bgr)
                if len(heap) < params.max_frames:
                    heapq.heappush(heap, entry)
                elif entry[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, entry)
            i += 1
    finally:
        cap.release()
    if i == 0 or not heap:
        raise VideoReadError(spath, "no decodable frames" + (f" (container reports {reported})" if reported else ""))
    if reported is not None and i < reported:
        warnings.warn(
            f"{spath}: container reports {reported} frames but only {i} decode (truncated or damaged file); "
            "keyframes chosen among the decoded frames",
            VideoTruncatedWarning,
            stacklevel=3,
        )
    kept = sorted(heap, key=lambda e: -e[1])
    frames = np.stack([cv2.cvtColor(e[2], cv2.COLOR_BGR2RGB) for e in kept])
    indices = np.array([-e[1] for e in kept], dtype=np.int64)
    return Keyframes(frames, indices, video_fps, i)


def select_keyframes(path: str | os.PathLike, params: KeyframeParams) -> Keyframes:
    """Choose and decode the keyframes of one video (see the module docstring for the schemes).

    Raises VideoReadError naming the file when it is missing, empty, not a video, or has no
    decodable frame. Warnings about repaired metadata or truncation are issued as usual and
    also returned in ``notes``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if params.scheme == "uniform":
            s = sample_video(path, params.fps, params.max_frames, params.slice_framepos, params.rule, params.window)
            kf = Keyframes(s.frames, s.indices, s.video_fps, s.num_frames)
        else:
            kf = _select_maxdiff(path, params)
    kf.notes = list(dict.fromkeys(str(w.message) for w in caught))
    for w in caught:  # re-issue, so callers' own filters still apply
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return kf
