"""Read pickles that hold only plain data, without letting them run code.

``pickle.load`` builds whatever a file names: a crafted pickle can call ``os.system`` (or any
other function) while it is being read. ``load_plain_pickle`` uses an ``Unpickler`` whose
``find_class`` refuses every global, so a file can only build what the pickle opcodes make
without one: dict, list, tuple, str, int, float, bool and None (and, with the opcodes of
protocols 3-5, bytes, set, frozenset and bytearray; older protocols pickle those through a
global, which is refused). Anything that names a class or function is refused before it is
called. Extension codes (``copyreg.add_extension``; none are registered unless some code does
so) are refused too: the unpickler serves already-resolved codes from ``copyreg``'s cache
without asking ``find_class``, so when any code is registered the file is scanned for them
first. Persistent ids and out-of-band buffers are not supported.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
from pathlib import Path

__all__ = ["UnsafePickleError", "load_plain_pickle", "loads_plain_pickle"]

_PLAIN = "plain dicts, lists, tuples, strings and numbers"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global (a class or function); ``name`` is ``module.qualname``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"{module}.{name}")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"persistent id {pid!r:.60}")


def _refuse_extensions(data: bytes) -> None:
    """Raise UnsafePickleError for an EXT1/EXT2/EXT4 opcode (only scanned for when some
    extension code is registered in this process: otherwise those opcodes fail by themselves)."""
    registry = dict(copyreg._inverted_registry)
    if not registry:
        return
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("EXT1", "EXT2", "EXT4"):
            module, name = registry.get(arg, ("<unregistered extension>", str(arg)))
            raise UnsafePickleError(f"{module}.{name}")


def _describe(e: BaseException, size: int) -> str:
    if size == 0:
        return "empty file"
    text = " ".join(str(e).split())
    return f"truncated or not a pickle: {type(e).__name__}: {text}" if text else f"truncated or not a pickle: {type(e).__name__}"


def loads_plain_pickle(data: bytes, source: str = "<bytes>", *, holds: str = _PLAIN):
    """Unpickle ``data`` allowing only plain built-in values; raises ValueError (one line, naming
    ``source``) for a refused global or an unreadable pickle. ``holds`` words what may be in it."""
    try:
        _refuse_extensions(data)
        return _PlainUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise ValueError(
            f"{source}: refused to unpickle {e.name!r}: {Path(source).name} may hold only {holds} "
            "(a pickle that names a class or function can run code)"
        ) from None
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply to unpickle") from None
    except MemoryError:
        raise ValueError(f"{source}: too large to unpickle (out of memory)") from None
    except Exception as e:  # EOFError, UnpicklingError, struct.error, UnicodeDecodeError, ...
        raise ValueError(f"{source}: cannot unpickle ({_describe(e, len(data))})") from None


def load_plain_pickle(path: str | os.PathLike, *, holds: str = _PLAIN):
    """The plain data pickled in ``path`` (see the module docstring). Raises FileNotFoundError
    when it is missing, ValueError (one line naming the file) when it asks for a global or is
    truncated / not a pickle."""
    path = Path(path)
    return loads_plain_pickle(path.read_bytes(), str(path), holds=holds)
