"""The on-disk frame cache: what ``extract_frames.py`` writes and the datasets read.

Decoding video in the data loader starves the GPU (the thesis measured >50% of the time in
loading, <20% GPU use), so the keyframes of every video are chosen, resized and cropped to
``size`` once, and stored. Layout of a cache folder::

    manifest.json    {"format", "version", "params": {...}, "videos": {video_id: entry}}
    failures.json    {video_id: {"source": path, "reason": why}}: videos the last run could not read
    npy/<id>.npy     uint8 [T, size, size, 3] RGB, one array per video (format "npy")
    jpeg/<id>/NN.jpg one JPEG per frame, NN = 00, 01, ... in temporal order (format "jpeg")

``params`` holds the keyframe parameters that change the frames (``KeyframeParams.relevant``)
and ``size``; a cache is only used by a dataset whose settings match. An entry holds ``frames``
(JPEG paths relative to the cache), ``array`` (the .npy path), ``indices`` (frame numbers),
``timestamps`` (seconds), ``fps`` (source frame rate), ``video_frames`` (frames in the source),
``duration`` (seconds), ``source`` / ``source_bytes`` / ``source_mtime`` (to notice a changed
video) and ``notes`` (warnings met while decoding).

Files are written under temporary names and renamed into place; an entry is added to the
manifest only after its files are complete, and the manifest itself is replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from clip4clip.core.atomic import atomic_write, atomic_write_text, replace_dir, tmp_path
from clip4clip.core.npy import NpyFormatError, read_npy_header
from clip4clip.core.paths import plain_relative
from ..video.keyframes import KeyframeParams
from ..video.decode import VideoReadError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "FORMATS",
    "FrameStore",
    "cache_params",
    "confined_file",
    "default_frame_cache_dir",
    "load_manifest",
    "new_manifest",
    "save_manifest",
    "write_video_frames",
]

CACHE_FORMAT = "clip4clip-frame-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
FAILURES = "failures.json"
#: Stored formats: uint8 arrays (lossless, no decoding on load) and JPEG (what the seed stored).
FORMATS = ("npy", "jpeg")


def default_frame_cache_dir(root: str | os.PathLike, scheme: str, size: int) -> Path:
    """Where a dataset's cache lives unless configured otherwise: ``<root>/frames/<scheme>-<size>``."""
    return Path(root) / "frames" / f"{scheme}-{int(size)}"


def cache_params(keyframes: KeyframeParams, size: int) -> dict:
    """The parameters a cache is extracted with (stored in, and compared against, its manifest)."""
    return {"keyframes": keyframes.relevant(), "size": int(size)}


def new_manifest(params: dict) -> dict:
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "params": params, "videos": {}}


def load_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of a cache folder; None when there is none. Raises ValueError naming the file
    when it is not a frame-cache manifest (or one of another version)."""
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte at offset {e.start}); delete the cache folder and "
                         "extract again") from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete the cache folder and extract again") from None
    if not isinstance(m, dict) or m.get("format") != CACHE_FORMAT or not isinstance(m.get("videos"), dict):
        raise ValueError(f"{path}: not a frame-cache manifest (expected format {CACHE_FORMAT!r} with a 'videos' map)")
    if m.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: frame-cache version {m.get('version')!r}; this code reads version {CACHE_VERSION}. Extract again")
    for video_id, entry in m["videos"].items():
        _check_entry_files(path, video_id, entry)
    return m


def _check_entry_files(manifest: Path, video_id: str, entry) -> None:
    """The file names of one manifest entry, read before any is opened: a manifest edited by
    hand (or copied from elsewhere) must not make the loader read files outside the cache."""
    if not isinstance(entry, dict):
        raise ValueError(f"{manifest}: entry {video_id!r} is {type(entry).__name__}; expected an object")
    names = [("array", entry["array"])] if "array" in entry else []
    frames = entry.get("frames", [])
    if not isinstance(frames, list):
        raise ValueError(f"{manifest}: entry {video_id!r} 'frames' is {type(frames).__name__}; expected a list of file names")
    names += [("frames", f) for f in frames]
    for field_name, rel in names:
        if not plain_relative(rel):
            raise ValueError(f"{manifest}: entry {video_id!r} '{field_name}' names {rel!r:.80}; expected a relative "
                             "path inside the cache folder (no '..', not absolute). Delete the cache folder and "
                             "extract again")


def confined_file(directory: Path, rel: str) -> Path | None:
    """``directory / rel`` when it resolves (symbolic links followed) to a file inside
    ``directory``; None when it leads outside it (``rel`` itself was checked with the manifest)."""
    path = directory / rel
    root = os.path.realpath(directory)
    return path if os.path.commonpath([root, os.path.realpath(path)]) == root else None


def save_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    """Replace the manifest atomically (a reader sees the old or the new one, never a mix)."""
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, separators=(",", ":")) + "\n")


def _check_video_id(video_id: str) -> None:
    if not video_id or video_id in (".", "..") or "/" in video_id or "\\" in video_id or video_id.startswith("."):
        raise ValueError(f"video id {video_id!r} cannot name a cache file (empty, '/', '\\\\' or a leading '.')")


def write_video_frames(
    directory: str | os.PathLike, video_id: str, frames: np.ndarray, formats: tuple[str, ...], jpeg_quality: int = 95
) -> dict:
    """Store one video's frames (uint8 [T, S, S, 3] RGB) in ``formats``; returns the entry fields
    naming the files (``array`` and/or ``frames``). Each file/folder appears complete or not at all."""
    _check_video_id(video_id)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"frame cache formats {list(formats)}; expected a non-empty subset of {FORMATS}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"expected uint8 frames [T, S, S, 3], got {frames.dtype} {frames.shape}")
    directory = Path(directory)
    fields: dict = {}
    if "npy" in formats:
        rel = f"npy/{video_id}.npy"
        (directory / "npy").mkdir(exist_ok=True)

        def save(p: Path) -> None:
            with open(p, "wb") as f:  # a file object: np.save would append ".npy" to the temp name
                np.save(f, np.ascontiguousarray(frames))

        atomic_write(directory / rel, save)
        fields["array"] = rel
    if "jpeg" in formats:
        (directory / "jpeg").mkdir(exist_ok=True)
        target = directory / "jpeg" / video_id
        tmp = tmp_path(target)
        tmp.mkdir()
        names = [f"{t:02d}.jpg" for t in range(len(frames))]
        try:
            for name, frame in zip(names, frames):
                Image.fromarray(frame).save(tmp / name, format="JPEG", quality=int(jpeg_quality))
            replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        fields["frames"] = [f"jpeg/{video_id}/{n}" for n in names]
    return fields


class FrameStore:
    """Read access to a cache folder.

    directory: the cache folder (must hold a manifest). fmt: "auto" (the .npy array when the
    entry has one, else the JPEGs), "npy" or "jpeg".
    """

    def __init__(self, directory: str | os.PathLike, fmt: str = "auto"):
        if fmt not in ("auto", *FORMATS):
            raise ValueError(f"frame cache format {fmt!r}; expected auto, npy or jpeg")
        self.directory = Path(directory)
        manifest = load_manifest(self.directory)
        if manifest is None:
            raise FileNotFoundError(f"no frame cache at {self.directory} (no {MANIFEST}); run extract_frames.py first")
        self.params: dict = manifest.get("params", {})
        self.videos: dict[str, dict] = manifest["videos"]
        self.fmt = fmt
        self.size = int(self.params.get("size", 0))

    @classmethod
    def open_if_present(cls, directory: str | os.PathLike, fmt: str = "auto") -> "FrameStore | None":
        """The store at ``directory``, or None when there is no manifest there."""
        return cls(directory, fmt) if (Path(directory) / MANIFEST).is_file() else None

    def check_compatible(self, keyframes: KeyframeParams, image_size: int) -> None:
        """Raise ValueError (naming the field, the cache's value and the wanted one) when this cache
        does not hold the frames ``keyframes`` would select, or is smaller than ``image_size``."""
        have = self.params.get("keyframes", {})
        want = keyframes.relevant()
        # Both ways: a field the cache recorded and the dataset leaves at its default (e.g. the
        # official frame rule) is a difference too. An absent rule means the exact rule, an
        # absent window the whole video (a cache of another window is refused, never reused).
        default = {"rule": "exact", "window": None}
        keys = dict.fromkeys([*want, *have])
        diffs = [f"{k}: cache has {have.get(k, default.get(k))!r}, dataset wants {want.get(k, default.get(k))!r}"
                 for k in keys if have.get(k, default.get(k)) != want.get(k, default.get(k))]
        if diffs:
            raise ValueError(
                f"frame cache {self.directory} was extracted with other keyframe settings ({'; '.join(diffs)}). "
                "Extract a matching cache (extract_frames.py with the same dataset.* values), point "
                "dataset.frame_cache.dir elsewhere, or set dataset.frame_cache.use=false to decode the videos"
            )
        if self.size < image_size:
            raise ValueError(
                f"frame cache {self.directory} holds {self.size}px frames but the model takes {image_size}px; "
                f"extract with dataset.frame_cache.size={image_size} (or larger), or set dataset.frame_cache.use=false"
            )

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.videos

    def __len__(self) -> int:
        return len(self.videos)

    def entry(self, video_id: str) -> dict:
        return self.videos[video_id]

    def load(self, video_id: str) -> np.ndarray:
        """uint8 [T, S, S, 3] RGB frames of ``video_id``. Raises KeyError when it is not cached and
        VideoReadError (naming the cache file) when its files are missing or damaged."""
        e = self.videos[video_id]
        use_npy = self.fmt == "npy" or (self.fmt == "auto" and "array" in e)
        if use_npy:
            if "array" not in e:
                raise VideoReadError(self.directory / f"npy/{video_id}.npy", "not in this cache: it was extracted without format npy")
            return self._load_npy(self._file(video_id, e["array"]), e)
        if "frames" not in e:
            raise VideoReadError(self.directory / f"jpeg/{video_id}", "not in this cache: it was extracted without format jpeg")
        return self._load_jpeg([self._file(video_id, f) for f in e["frames"]])

    def _file(self, video_id: str, rel: str) -> Path:
        """The cache file ``rel`` of an entry; ValueError naming the manifest and the entry when a
        symbolic link makes it lead outside the cache folder."""
        path = confined_file(self.directory, rel)
        if path is None:
            raise ValueError(f"{self.directory / MANIFEST}: entry {video_id!r} names {rel!r}, which leads outside the "
                             f"cache folder (to {os.path.realpath(self.directory / rel)}); delete the cache folder "
                             "and extract again")
        if path.exists() and not path.is_file():  # a folder or a FIFO (which would block the read)
            raise VideoReadError(path, "not a regular file; delete the cache folder and extract again")
        return path

    def check_files(self, video_id: str) -> None:
        """Raise VideoReadError when the files ``load`` would read for ``video_id`` are absent
        (a cheap stat, for checking a whole split up front)."""
        e = self.videos[video_id]
        use_npy = self.fmt == "npy" or (self.fmt == "auto" and "array" in e)
        files = [e["array"]] if use_npy and "array" in e else ([] if use_npy else e.get("frames", []))
        if not files:
            raise VideoReadError(self.directory / video_id, f"the cache entry has no {'npy' if use_npy else 'jpeg'} files")
        for f in files:
            if not self._file(video_id, f).is_file():
                raise VideoReadError(self.directory / f, "cache file is missing; run extract_frames.py again")

    def _expected_shape(self, e: dict) -> tuple:
        return (len(e["indices"]), self.size, self.size, 3)

    def _load_npy(self, path: Path, e: dict) -> np.ndarray:
        # The header is checked first: numpy's parser fails on a garbage one with tracebacks
        # (tokenize.TokenError), and a wrong dtype or shape is refused before anything is allocated.
        want = self._expected_shape(e)
        try:
            header = read_npy_header(path)
            if header.dtype != np.uint8 or header.shape != want:
                raise VideoReadError(path, f"cache file holds {header.dtype} {header.shape}, expected uint8 {want}")
            return np.load(path, allow_pickle=False)
        except NpyFormatError as err:
            raise VideoReadError(path, f"not a valid .npy file ({err.reason}); run extract_frames.py again") from None
        except (OSError, ValueError, EOFError) as err:
            raise VideoReadError(path, f"cache file unreadable ({err}); run extract_frames.py again") from None

    def _load_jpeg(self, paths: list[Path]) -> np.ndarray:
        out = np.empty((len(paths), self.size, self.size, 3), dtype=np.uint8)
        for t, p in enumerate(paths):
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as err:
                raise VideoReadError(p, f"cached frame unreadable ({err}); run extract_frames.py again") from None
            if a.shape != out.shape[1:]:
                raise VideoReadError(p, f"cached frame is {a.shape}, expected {out.shape[1:]}")
            out[t] = a
        return out
