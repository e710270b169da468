"""Building a frame cache (``data.frames.store``) for many videos: parallel, resumable, reported.

``extract_to_cache(videos, out_dir, settings)`` chooses the keyframes of every video
(``data.video.keyframes.select_keyframes``), resizes/crops them as CLIP does
(``data.video.transforms.clip_resize_crop``) and stores them, in worker processes.

Resuming: a video whose manifest entry exists, whose source file has the same size and mtime,
and whose files are all present is skipped. Each video's files are written under temporary
names and renamed into place, and its manifest entry is added only after that; the manifest is
saved atomically every few seconds, at the end and when the run is interrupted. So a killed run
leaves complete entries only; the video it was working on is redone next time.

Failures (missing, empty, truncated, not-a-video, no decodable frame) never stop the run: each
is recorded with its reason in ``failures.json`` next to the manifest, and retried on the next
run (``retry_failed``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from clip4clip.core.atomic import atomic_write_text, remove_stale_tmp
from clip4clip.core.processes import pid_alive
from .store import FAILURES, FORMATS, cache_params, confined_file, load_manifest, new_manifest, save_manifest, write_video_frames
from ..video.keyframes import KeyframeParams, select_keyframes
from ..video.transforms import clip_resize_crop
from ..video.decode import VideoReadError

__all__ = ["ExtractReport", "ExtractSettings", "VIDEO_SUFFIXES", "extract_to_cache", "videos_in_folder"]

#: File extensions taken as videos when extracting a whole folder (case-insensitive).
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".ogv")
_LOCK = ".extract.lock"


@dataclass(frozen=True)
class ExtractSettings:
    """keyframes: which frames; size: side of the stored frames (px); formats: subset of
    ("npy", "jpeg"); jpeg_quality: 1..100; workers: processes (0 = in this process);
    overwrite: replace a cache extracted with other parameters instead of refusing;
    retry_failed: try videos that failed last time again; progress: show a progress bar;
    save_every_s: minimum seconds between manifest saves during the run."""

    keyframes: KeyframeParams
    size: int = 224
    formats: tuple[str, ...] = ("npy", "jpeg")
    jpeg_quality: int = 95
    workers: int = 0
    overwrite: bool = False
    retry_failed: bool = True
    progress: bool = True
    save_every_s: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int (pixels), got {self.size!r}")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ValueError(f"formats={list(self.formats)}; expected a non-empty subset of {list(FORMATS)}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")


@dataclass
class ExtractReport:
    """What a run did. extracted: ids done now; skipped: ids already cached; failed: id ->
    {"source", "reason"}; seconds: wall time; out_dir, manifest, failures_file: paths."""

    out_dir: Path
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.out_dir / "manifest.json"

    @property
    def failures_file(self) -> Path:
        return self.out_dir / FAILURES

    def summary(self) -> str:
        lines = [(f"{len(self.extracted)} extracted, {len(self.skipped)} already cached, {len(self.failed)} failed "
                  f"in {self.seconds:.1f} s -> {self.out_dir}")]
        if self.failed:
            lines.append(f"failed videos (all in {self.failures_file}):")
            for vid, f in list(self.failed.items())[:20]:
                lines.append(f"  {vid}: {f['source']}: {f['reason']}")
            if len(self.failed) > 20:
                lines.append(f"  ... and {len(self.failed) - 20} more")
        return "\n".join(lines)


def videos_in_folder(folder: str | os.PathLike) -> dict[str, Path]:
    """video id (file name without extension) -> path, for every video file directly in ``folder``.

    Raises FileNotFoundError for a missing folder and ValueError when two files share an id
    (``a.mp4`` and ``a.avi``): their cache entries would collide.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"videos={folder}: no such folder")
    found: dict[str, Path] = {}
    clashes = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."):
            if p.stem in found:
                clashes.append(f"{found[p.stem].name} / {p.name}")
            found[p.stem] = p
    if clashes:
        raise ValueError(f"videos={folder}: files share a video id (name without extension): {clashes[:10]}")
    return found


# ----------------------------------------------------------------------------------------------
# One video (runs in a worker process)
# ----------------------------------------------------------------------------------------------


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path), "source_bytes": st.st_size, "source_mtime": st.st_mtime}


def extract_one(video_id: str, path: Path, out_dir: Path, settings: ExtractSettings) -> dict:
    """Extract one video. Returns {"video_id", "entry": manifest entry} or {"video_id",
    "failure": {"source", "reason"}}; never raises for a bad video."""
    try:
        stamp = _source_stamp(path)  # before reading: a file replaced meanwhile is redone next run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded in the entry's notes instead of flooding stderr
            kf = select_keyframes(path, settings.keyframes)
        frames = clip_resize_crop(kf.frames, settings.size)
        files = write_video_frames(out_dir, video_id, frames, settings.formats, settings.jpeg_quality)
    except FileNotFoundError:
        return {"video_id": video_id, "failure": {"source": str(path), "reason": "file does not exist"}}
    except VideoReadError as e:
        return {"video_id": video_id, "failure": {"source": str(path), "reason": e.reason}}
    except Exception as e:  # a codec/library error on one file must not end a 10k-video run
        return {"video_id": video_id, "failure": {"source": str(path), "reason": f"{type(e).__name__}: {e}"}}
    entry = {
        **stamp,
        **files,
        "indices": kf.indices.tolist(),
        "timestamps": [round(float(t), 6) for t in kf.timestamps],
        "fps": kf.fps,
        "video_frames": kf.num_frames,
        "duration": round(kf.duration, 6),
        "notes": kf.notes,
    }
    return {"video_id": video_id, "entry": entry}


def _run_task(task: tuple) -> dict:
    return extract_one(*task)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; avoid oversubscription


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def _is_current(entry: dict, path: Path | None, out_dir: Path, formats: tuple[str, ...]) -> bool:
    """True when ``entry`` still describes ``path`` and every file it names exists."""
    if path is not None:  # None: the source is gone but its frames are cached; keep them
        try:
            st = path.stat()
        except OSError:
            return False
        if entry.get("source_bytes") != st.st_size or entry.get("source_mtime") != st.st_mtime:
            return False
    if ("npy" in formats and "array" not in entry) or ("jpeg" in formats and "frames" not in entry):
        return False
    files = ([entry["array"]] if "array" in entry else []) + list(entry.get("frames", []))
    # A file that leads outside the cache (a symbolic link) is not this video's: extract it again.
    return all(confined_file(out_dir, f) is not None and (out_dir / f).is_file() for f in files)


def _param_diffs(have: dict, want: dict) -> list[str]:
    keys = sorted(set(have.get("keyframes", {})) | set(want["keyframes"]))
    diffs = [f"keyframes.{k}: {have.get('keyframes', {}).get(k)!r} -> {want['keyframes'].get(k)!r}"
             for k in keys if have.get("keyframes", {}).get(k) != want["keyframes"].get(k)]
    if have.get("size") != want["size"]:
        diffs.append(f"size: {have.get('size')!r} -> {want['size']!r}")
    return diffs


class _Lock:
    """One extraction per cache folder at a time (a second would race on the manifest)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / _LOCK

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and pid_alive(pid):
                    raise RuntimeError(f"another extraction (pid {pid}) is writing to {self.path.parent}; "
                                       f"wait for it, or delete {self.path} if that process is not an extraction") from None
                self.path.unlink(missing_ok=True)  # left by a killed run
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RuntimeError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _load_failures(out_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads((out_dir / FAILURES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def extract_to_cache(
    videos: dict[str, Path],
    out_dir: str | os.PathLike,
    settings: ExtractSettings,
    missing: dict[str, str] | None = None,
) -> ExtractReport:
    """Extract ``videos`` (id -> file) into the cache folder ``out_dir``.

    missing: id -> path of videos known to be absent (a dataset lists them but the file is not
    there): reported as failures without being tried. Returns an ExtractReport; the failures are
    also in ``<out_dir>/failures.json``. Raises ValueError when ``out_dir`` holds a cache made
    with other parameters (unless ``settings.overwrite``), RuntimeError when another extraction
    holds the folder.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExtractReport(out_dir)
    with _Lock(out_dir):
        for sub in (out_dir, out_dir / "npy", out_dir / "jpeg"):
            remove_stale_tmp(sub)  # debris of killed runs
        manifest = _open_manifest(out_dir, settings)
        failed, todo = _plan(videos, missing, manifest["videos"], out_dir, settings, report)
        _run(todo, manifest, failed, out_dir, settings, report)
        report.failed = failed
    report.seconds = time.perf_counter() - t0
    return report


def _open_manifest(out_dir: Path, settings: ExtractSettings) -> dict:
    """The folder's manifest, or a new one; a cache made with other parameters is refused
    (or, with ``settings.overwrite``, started afresh)."""
    params = cache_params(settings.keyframes, settings.size)
    manifest = load_manifest(out_dir)
    if manifest is not None and manifest.get("params") != params:
        diffs = _param_diffs(manifest.get("params", {}), params)
        if not settings.overwrite:
            raise ValueError(f"{out_dir} holds a frame cache extracted with other settings ({'; '.join(diffs)}); "
                             "choose another out folder, or pass overwrite=true to replace it")
        manifest = None
    return manifest or new_manifest(params)


def _plan(videos: dict[str, Path], missing: dict[str, str] | None, entries: dict[str, dict], out_dir: Path,
          settings: ExtractSettings, report: ExtractReport) -> tuple[dict[str, dict], list]:
    """What to do with each video: skip (cached and current), keep an earlier failure (unless
    ``retry_failed``), or extract. -> (failures so far, tasks)."""
    previous_failures = _load_failures(out_dir)
    failed: dict[str, dict] = {}
    for vid, shown in (missing or {}).items():
        if vid in entries and _is_current(entries[vid], None, out_dir, settings.formats):
            report.skipped.append(vid)  # the source is gone but its frames are cached
        else:
            failed[vid] = {"source": str(shown), "reason": "file does not exist"}
    todo = []
    for vid, path in videos.items():
        if vid in entries and _is_current(entries[vid], path, out_dir, settings.formats):
            report.skipped.append(vid)
        elif vid in previous_failures and not settings.retry_failed:
            failed[vid] = previous_failures[vid]
        else:
            todo.append((vid, Path(path), out_dir, settings))
    return failed, todo


def _run(todo: list, manifest: dict, failed: dict[str, dict], out_dir: Path, settings: ExtractSettings,
         report: ExtractReport) -> None:
    """Extract ``todo`` (in worker processes when asked), recording each result as it arrives and
    saving the manifest and failures.json now and then and at the end, also on Ctrl-C."""
    entries: dict[str, dict] = manifest["videos"]
    last_save, save_cost = time.perf_counter(), 0.0

    def save() -> None:
        nonlocal last_save, save_cost
        s0 = time.perf_counter()
        save_manifest(out_dir, manifest)
        atomic_write_text(out_dir / FAILURES, json.dumps(dict(sorted(failed.items())), indent=1) + "\n")
        last_save, save_cost = time.perf_counter(), time.perf_counter() - s0

    bar = tqdm(total=len(todo), desc=f"{settings.keyframes.scheme} keyframes", unit="video",
               disable=not settings.progress)
    pool = None
    try:
        if settings.workers and len(todo) > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(min(settings.workers, len(todo)), initializer=_worker_init)
            results = pool.imap_unordered(_run_task, todo)
        else:
            results = (_run_task(t) for t in todo)
        for res in results:
            vid = res["video_id"]
            if "entry" in res:
                entries[vid] = res["entry"]  # files are complete: now the entry may exist
                failed.pop(vid, None)
                report.extracted.append(vid)
            else:
                entries.pop(vid, None)
                failed[vid] = res["failure"]
            bar.update(1)
            bar.set_postfix(failed=len(failed), refresh=False)
            # Saving costs O(entries); keep it under ~5% of the run however large the manifest.
            if time.perf_counter() - last_save > max(settings.save_every_s, 20 * save_cost):
                save()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
        save()  # what is complete stays complete, also on Ctrl-C
