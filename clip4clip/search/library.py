"""The video library: which files to index, how to tell that one changed, and its captions."""
from __future__ import annotations

import errno
import json
import os
import stat
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
    videos too). Symbolic links:

    - to a file inside ``root``: indexed under the link's name, unless the file is in the library
      already (under its own name or another link's), so one file is one video;
    - loops, dangling links and links leading outside ``root`` are skipped and reported (the web
      page can never be made to serve a file from elsewhere through the library);
    - to folders: not followed (reported), so a link cannot make the walk go round in circles.
    """
    root = Path(os.path.realpath(Path(root).expanduser()))
    if not root.is_dir():
        raise FileNotFoundError(f"--videos {root}: no such folder")
    excluded = [Path(os.path.realpath(Path(p).expanduser())) for p in exclude]
    files: List[LibraryFile] = []
    skipped: List[Skipped] = []
    links: List[Tuple[str, Path, Path]] = []
    seen: Dict[Tuple[int, int], str] = {}  # (device, inode) -> relpath of the file indexed for it
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: links are looked at below
        here = Path(dirpath)
        dirnames[:] = _folders_to_walk(here, dirnames, root, excluded, skipped)
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            _scan_file(here / name, root, excluded, files, skipped, links, seen)
    _add_links(links, files, skipped, seen)
    files.sort(key=lambda f: f.relpath)
    skipped.sort(key=lambda s: s.relpath)
    return files, skipped


def _folders_to_walk(here: Path, dirnames: Sequence[str], root: Path, excluded: Sequence[Path],
                     skipped: List[Skipped]) -> List[str]:
    """The subfolders of ``here`` to descend into: not hidden, not excluded, not links (reported)."""
    keep = []
    for d in sorted(dirnames):
        if d.startswith("."):
            continue
        if (here / d).is_symlink():
            rel = _relpath(here / d, root)
            skipped.append(Skipped(rel if rel is not None else repr((here / d).relative_to(root).as_posix()),
                                   "symbolic link to a folder: not followed (index the folder it "
                                   "points to on its own, or link its files)"))
            continue
        if Path(os.path.realpath(here / d)) in excluded:
            continue
        keep.append(d)
    return keep


def _scan_file(path: Path, root: Path, excluded: Sequence[Path], files: List[LibraryFile], skipped: List[Skipped],
               links: List[Tuple[str, Path, Path]], seen: Dict[Tuple[int, int], str]) -> None:
    """One video-named entry: a regular file is indexed, a link is kept for later (``_add_links``),
    anything else is skipped with its reason."""
    rel = _relpath(path, root)
    if rel is None:  # SQLite and URLs need text; undecodable names cannot be stored
        skipped.append(Skipped(repr(path.relative_to(root).as_posix()), "file name is not valid UTF-8"))
        return
    if path.is_symlink():
        why, target = _link_target(path, root, excluded)
        if why:
            skipped.append(Skipped(rel, why))
        else:
            links.append((rel, path, target))
        return
    try:
        st = path.stat()
    except OSError as e:
        skipped.append(Skipped(rel, f"cannot stat: {e.strerror}"))
        return
    if not stat.S_ISREG(st.st_mode):  # a FIFO named *.mp4 would block the decoder forever
        skipped.append(Skipped(rel, "not a regular file (a FIFO, socket or device)"))
        return
    seen[(st.st_dev, st.st_ino)] = rel
    files.append(LibraryFile(rel, path, st.st_size, st.st_mtime_ns))


def _add_links(links: List[Tuple[str, Path, Path]], files: List[LibraryFile], skipped: List[Skipped],
               seen: Dict[Tuple[int, int], str]) -> None:
    """Links last, so that a file's own name wins over a link to it; among links, the first name."""
    for rel, path, target in sorted(links):
        try:
            st = target.stat()
        except OSError as e:
            skipped.append(Skipped(rel, f"cannot stat the file it links to: {e.strerror}"))
            continue
        other = seen.get((st.st_dev, st.st_ino))
        if other is not None:
            skipped.append(Skipped(rel, f"symbolic link to {other}, which is indexed already"))
            continue
        seen[(st.st_dev, st.st_ino)] = rel
        files.append(LibraryFile(rel, path, st.st_size, st.st_mtime_ns))


def _relpath(path: Path, root: Path) -> Optional[str]:
    """POSIX path of ``path`` relative to ``root``; None when the name is not valid UTF-8."""
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return rel


def _link_target(path: Path, root: Path, excluded: Sequence[Path]) -> Tuple[Optional[str], Optional[Path]]:
    """(reason to skip the link, None) or (None, the regular file inside ``root`` it leads to)."""
    try:
        target = Path(os.path.realpath(path, strict=True))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)", None
        if e.errno == errno.ENOENT:
            try:
                dest = os.readlink(path)
            except OSError:
                dest = "?"
            return f"dangling symbolic link (to {dest!r}, which does not exist)", None
        return f"unreadable symbolic link: {e.strerror}", None
    if not target.is_relative_to(root):
        return f"symbolic link to {target}, outside the library", None
    if any(target.is_relative_to(x) for x in excluded):
        return "symbolic link into the index folder", None
    if not target.is_file():
        return f"symbolic link to {target.relative_to(root).as_posix() or '.'}, which is not a file", None
    return None, target


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


def split_video_ids(dataset_cfg, split: str) -> List[str]:
    """Video ids of one split ('train', 'val', 'test') of the dataset a checkpoint was trained
    on (its resolved ``dataset`` config), as its reader lists them: no video is opened."""
    from data.splits import dataset_root, list_split
    root = dataset_root(dataset_cfg, progress=False)
    return list(list_split(dataset_cfg, root, split).video_order)  # missing ones: the indexer reports them
