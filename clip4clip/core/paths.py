"""Paths read from our own files (a frame-cache manifest, a search index): the one rule for
whether such a path may be joined onto the folder it belongs to."""
from typing import Any


def plain_relative(rel: Any) -> bool:
    """Whether ``rel`` is a relative POSIX path that stays inside the folder it is joined to:
    a non-empty string with no '..', '.' or empty part, no leading '/', no backslash, no NUL.
    (Symbolic links are the caller's to check: this looks at the text only.)"""
    return (isinstance(rel, str) and rel != "" and "\\" not in rel and "\0" not in rel
            and not rel.startswith("/") and all(part not in ("", ".", "..") for part in rel.split("/")))
