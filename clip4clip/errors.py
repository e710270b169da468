"""Expected failures and how the command lines report them: one line, exit status 2."""
import contextlib
import os
import sys

from .download import DownloadError


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops without overwriting the last good checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions...); the previous one is kept."""


@contextlib.contextmanager
def user_errors():
    """Print ``error: <message>`` and exit with status 2 for failures a user can fix; anything
    else keeps its traceback (a bug). CLIP4CLIP_TRACEBACK=1 shows the traceback always."""
    from data import VideoReadError

    try:
        yield
    except (FileNotFoundError, PermissionError, ValueError, KeyError, DownloadError,
            NonFiniteLossError, VideoReadError, CheckpointWriteError) as e:
        if os.environ.get("CLIP4CLIP_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(2)
