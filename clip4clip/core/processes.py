"""Is another process still running? The one answer every kill-safe writer relies on.

Temporary files, build folders and locks carry the writer's pid; debris is removed only once
that process is gone, so a second writer never deletes a live one's work.
"""
from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours
    return True
