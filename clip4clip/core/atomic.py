"""Writes that are all-or-nothing: a reader (or a resumed run) never sees half a file.

Everything is written under a hidden temporary name in the target's folder and then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows within one file system). A
killed writer leaves only ``.<name>.tmp-<pid>-<random>`` debris, which ``remove_stale_tmp``
deletes once that process is gone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .processes import pid_alive

__all__ = ["atomic_write", "atomic_write_text", "remove_stale_tmp", "replace_dir", "tmp_path"]

_TMP_MARK = ".tmp-"


def tmp_path(target: str | os.PathLike) -> Path:
    """A hidden sibling of ``target`` to write into before renaming (unique per process and call)."""
    target = Path(target)
    return target.parent / f".{target.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` to create a temporary file, then rename it to ``target``.

    fsync: flush the file to disk before the rename (survives power loss, not only a kill).
    """
    target = Path(target)
    tmp = tmp_path(target)
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def atomic_write_text(target: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """Write UTF-8 text atomically (fsync'd by default: manifests and reports are small)."""
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"), fsync=fsync)


def replace_dir(tmp_dir: Path, target: Path) -> None:
    """Move a fully written folder ``tmp_dir`` to ``target``, replacing an older ``target``.

    Directories cannot be swapped in one rename, so an old ``target`` is first renamed away and
    then deleted; at every instant ``target`` is either the old complete folder, absent, or the
    new complete folder (callers record the folder in their manifest only afterwards).
    """
    if target.exists():
        old = tmp_path(target)
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp_dir, target)


def remove_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete temporary files/folders in ``folder`` left by processes that no longer run.

    Returns how many were removed. Debris of a live process (another writer) is left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if not p.name.startswith(".") or _TMP_MARK not in p.name:
            continue
        try:
            pid = int(p.name.split(_TMP_MARK, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and pid_alive(pid):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed

