"""Expected failures and how the command lines report them: one line, exit status 2.

``UserError`` marks an error type as one a user can fix (a bad file, a broken video, a failed
download); each layer defines its own error types as subclasses, so this module, at the
bottom, needs to know none of them.
"""
import contextlib
import os
import sys


class UserError(Exception):
    """Base of the framework's errors that a user can fix; ``user_errors`` prints them as one line."""


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN/inf; the run stops without overwriting the last good checkpoint."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, permissions...); the previous one is kept."""


@contextlib.contextmanager
def user_errors():
    """Print ``error: <message>`` and exit with status 2 for failures a user can fix; anything
    else keeps its traceback and a line saying it is a bug. CLIP4CLIP_TRACEBACK=1 shows the traceback always."""
    try:
        yield
    except (FileNotFoundError, PermissionError, ValueError, KeyError, UserError) as e:
        if os.environ.get("CLIP4CLIP_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except Exception:
        # Not an error a user can fix: keep the traceback, and say so, so that it is reported
        # rather than taken for a problem with the user's files.
        print("this is a bug in clip4clip (an unexpected error, traceback below); please report it "
              "with the command that caused it", file=sys.stderr, flush=True)
        raise
