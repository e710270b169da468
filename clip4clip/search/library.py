"""The video library: which files to index, how to tell that one changed, and its captions."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: Containers the indexer picks up (compared case-insensitively).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


@dataclass(frozen=True)
class LibraryFile:
    """One video of the library. ``relpath`` is POSIX-style, relative to the library root; it
    is the file's identity in the index. ``size`` (bytes) and ``mtime_ns`` tell a changed file."""

    relpath: str
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """A file that looked like a video but is not indexed, and why."""

    relpath: str
    reason: str


def scan_library(root: Path, exclude: Sequence[Path] = ()) -> Tuple[List[LibraryFile], List[Skipped]]:
    """Every video file under ``root`` (nested folders included), sorted by relative path.

    Hidden files and folders (name starting with '.') are skipped, and so are the folders in
    ``exclude`` (the index itself when it lives inside the library: its playback copies are
    videos too). Symbolic links are followed only when they point inside ``root``, so the web
    page can never be made to serve a file from elsewhere through the library.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--videos {root}: no such folder")
    excluded = {Path(p).expanduser().resolve() for p in exclude}
    files: List[LibraryFile] = []
    skipped: List[Skipped] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            try:
                rel.encode("utf-8")  # SQLite and URLs need text; undecodable names cannot be stored
            except UnicodeEncodeError:
                skipped.append(Skipped(repr(rel), "file name is not valid UTF-8"))
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                skipped.append(Skipped(rel, f"symbolic link to {path.resolve()}, outside the library"))
                continue
            try:
                st = path.stat()
            except OSError as e:
                skipped.append(Skipped(rel, f"cannot stat: {e.strerror}"))
                continue
            if not path.is_file():
                continue
            files.append(LibraryFile(rel, path, st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.relpath)
    return files, skipped


def find_captions(root: Path) -> Optional[Tuple[str, Dict[str, List[str]]]]:
    """Captions of a known dataset layout, keyed by video id (= file name without extension).

    MSR-VTT as distributed for CLIP4Clip (``MSRVTT_data.json`` with a ``sentences`` list), which
    the built-in synthetic dataset also uses, is recognised in the library folder or its parent
    (``--videos`` may name the dataset root or its ``videos/`` folder). Returns (dataset name,
    captions) or None when the library is not a known dataset.
    """
    root = Path(root).expanduser().resolve()
    for folder in (root, root.parent):
        path = folder / "MSRVTT_data.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            sentences = data["sentences"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable MSR-VTT annotation file ({type(e).__name__}: {e})") from e
        captions: Dict[str, List[str]] = {}
        for s in sentences:
            captions.setdefault(str(s["video_id"]), []).append(str(s["caption"]))
        info = data.get("info") or {}
        return ("synthetic" if info.get("synthetic") else "msrvtt"), captions
    return None


def video_key(relpath: str) -> str:
    """The dataset video id of a library file: its name without folders and extension."""
    return Path(relpath).stem
