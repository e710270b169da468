"""What the dataset readers share for annotation files: collecting every problem of a split to
report them at once (``AnnotationProblems`` -> ``AnnotationError``), JSON values named in
messages, and one walk of a video folder."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

__all__ = ["AnnotationError", "AnnotationProblems", "SHOW_PROBLEMS", "json_type", "shown", "walk_video_files"]

#: Problems listed in an AnnotationError message (all are kept in ``problems``).
SHOW_PROBLEMS = 20


class AnnotationError(ValueError):
    """Annotation files of a split are malformed; ``problems`` lists every problem found
    ("<file>: <line/record>: <what is wrong; what was expected>")."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class AnnotationProblems:
    """Collects the problems of a split's annotation files, to raise them all at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path, where: str | None, what: str) -> None:
        self.items.append(f"{path}: {where}: {what}" if where else f"{path}: {what}")

    def add_error(self, error: ValueError) -> None:
        """A whole-file problem already phrased by ``read_text_file`` / ``load_json_file``."""
        self.items.append(str(error))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, dataset_name: str, split: str, root: Path) -> None:
        if not self.items:
            return
        n = len(self.items)
        shown = "\n".join(f"  {p}" for p in self.items[:SHOW_PROBLEMS])
        more = f"\n  ... and {n - SHOW_PROBLEMS} more" if n > SHOW_PROBLEMS else ""
        raise AnnotationError(
            f"{dataset_name} split {split!r}: {n} problem(s) in the annotation files under {root}:\n{shown}{more}",
            list(self.items),
        )


def walk_video_files(video_dir: Path, key: Callable[[str], str | None]) -> dict[str, Path]:
    """One walk of ``video_dir`` and its subfolders: ``key(file name)`` -> path for every file
    whose key is not None (the first in sorted order when two files share a key)."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(video_dir):
        dirs.sort()
        for name in sorted(files):
            k = key(name)
            if k is not None and k not in found:
                found[k] = Path(folder) / name
    return found


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def shown(value) -> str:
    """A JSON value for a message: its type and (shortened) text."""
    return f"a JSON {json_type(value)}" + ("" if value is None else f" {json.dumps(value)[:60]}")
