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

Size: a pickle is a program, and a few bytes can make a lot. ``Budget`` bounds what a file may
make, each bound checked before the step it protects allocates anything:

* ``max_bytes``: the file's size (checked before it is read);
* ``max_values``: first the cost of building it, from a scan of its opcodes before the
  unpickler runs (each opcode costs 1, one that makes a container 8: a container's own memory
  is some 8 references), so what the unpickler allocates is about 56 bytes per unit at most;
  memo indices must come in order (the C unpickler sizes its memo by the largest index: a
  9-byte file asking for index 2**26 took 1 GB);
* then, over the built structure, ``max_values`` values and ``max_chars`` characters of
  strings and bytes, a shared value counted each time it is referenced (as a reader that
  walks the structure meets it): 120 KB of references to one big list would otherwise expand
  into gigabytes in the code that reads the captions. A structure that contains itself is
  infinite to such a reader and exceeds the budget.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Budget", "DEFAULT_BUDGET", "UnsafePickleError", "load_plain_pickle", "loads_plain_pickle"]

_PLAIN = "plain dicts, lists, tuples, strings and numbers"


@dataclass(frozen=True)
class Budget:
    """What a plain pickle may make (see the module docstring)."""

    max_bytes: int = 64 << 20
    max_values: int = 10_000_000
    max_chars: int = 200_000_000


#: The budget ``load_plain_pickle`` applies unless given another.
DEFAULT_BUDGET = Budget()
#: Opcodes that make a container (their cost is 8 in the opcode scan).
_CONTAINERS = frozenset({"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE", "LIST", "DICT", "TUPLE", "TUPLE1",
                         "TUPLE2", "TUPLE3", "FROZENSET"})
_EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _OverBudget(ValueError):
    """A pickle that would make more than its budget allows (the message names the bound)."""


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


def _opcode_table() -> list:
    """Opcode byte -> (name, argument length, lines, cost): the length is >= 0 bytes, or one of
    pickletools' codes (up to a newline; a length field of 1, 4 or 8 bytes first)."""
    table = [None] * 256
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        lines = 2 if op.arg is not None and op.arg.name == "stringnl_noescape_pair" else 1
        table[ord(op.code)] = (op.name, n, lines, 8 if op.name in _CONTAINERS else 1)
    return table


_TABLE = _opcode_table()
#: pickletools' argument-length codes -> the struct format of the length field before the bytes.
_LENGTH_FIELDS = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                  pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}


_LEN1, _LEN4U = pickletools.TAKEN_FROM_ARGUMENT1, pickletools.TAKEN_FROM_ARGUMENT4U


def _argument_end(data: bytes, i: int, n: int, lines: int) -> int:
    """Where the argument starting at ``i`` ends (``n``: its length or length code)."""
    if n >= 0:
        return i + n
    if n == pickletools.UP_TO_NEWLINE:
        for _ in range(lines):
            j = data.find(b"\n", i)
            if j < 0:
                raise ValueError("truncated inside a text argument")
            i = j + 1
        return i
    fmt = _LENGTH_FIELDS[n]
    length = struct.unpack_from(fmt, data, i)[0]  # struct.error when truncated
    if length < 0:
        raise ValueError("negative length")
    return i + struct.calcsize(fmt) + length


def _memo_index(name: str, arg: bytes, memo: int) -> int:
    """The memo size after a PUT-like opcode; pickle.dump numbers entries 0, 1, 2..., so a
    larger index is refused (the C unpickler would size its memo by it)."""
    if name == "MEMOIZE":
        return memo + 1
    index = int(arg.rstrip(b"\n")) if name == "PUT" else int.from_bytes(arg, "little")
    if index > memo:
        raise _OverBudget(f"memo index {index} out of order (after {memo} entries)")
    return max(memo, index + 1)


def _scan(data: bytes, budget: Budget) -> None:
    """Before anything is built, opcode by opcode as the unpickler will read them: the cost of
    building ``data`` within ``budget.max_values``, memo indices in order, and no extension
    code (EXT1/2/4 would be served from copyreg's cache without asking ``find_class``; with no
    code registered they fail by themselves). Where the scan cannot read on, the unpickler
    cannot either and stops there with its own error."""
    registry = dict(copyreg._inverted_registry)
    i, end, cost, memo = 0, len(data), 0, 0
    while i < end:
        spec = _TABLE[data[i]]
        if spec is None:
            return  # an unknown opcode: the unpickler refuses it
        name, n, lines, weight = spec
        arg_start = i + 1
        # The common cases inline (a fixed length; a 1- or 4-byte length: strings): ~3x faster.
        if n >= 0:
            i = arg_start + n
        elif n == _LEN1 and arg_start < end:
            i = arg_start + 1 + data[arg_start]
        elif n == _LEN4U and arg_start + 4 <= end:
            i = arg_start + 4 + int.from_bytes(data[arg_start:arg_start + 4], "little")
        else:
            i = _argument_end(data, arg_start, n, lines)
        cost += weight
        if cost > budget.max_values:
            raise _OverBudget(f"building it would take more than {budget.max_values} values (opcodes; a container "
                              "counts 8)")
        if name in _PUTS or name == "MEMOIZE":
            memo = _memo_index(name, data[arg_start:i], memo)
        elif name in _EXTENSIONS and registry:
            code = int.from_bytes(data[arg_start:i], "little", signed=name == "EXT4")
            module, qualname = registry.get(code, ("<unregistered extension>", str(code)))
            raise UnsafePickleError(f"{module}.{qualname}")
        elif name == "STOP":
            return


def _check_expansion(obj, budget: Budget) -> None:
    """``obj`` as a reader walking it meets it: at most ``max_values`` values and ``max_chars``
    characters, a shared one counted at each reference (stops as soon as either is exceeded)."""
    values, chars, todo = 0, 0, [obj]
    while todo:
        x = todo.pop()
        values += 1
        if isinstance(x, (str, bytes, bytearray)):
            chars += len(x)
            if chars > budget.max_chars:
                raise _OverBudget(f"holds more than {budget.max_chars} characters, each shared reference counted")
        elif isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            todo.extend(x)
        if values + len(todo) > budget.max_values:  # every pending one will be counted: stop now
            raise _OverBudget(f"holds more than {budget.max_values} values, each shared reference counted")


def _describe(e: BaseException, size: int) -> str:
    if size == 0:
        return "empty file"
    text = " ".join(str(e).split())
    return f"truncated or not a pickle: {type(e).__name__}: {text}" if text else f"truncated or not a pickle: {type(e).__name__}"


def loads_plain_pickle(data: bytes, source: str = "<bytes>", *, holds: str = _PLAIN,
                       budget: Budget = DEFAULT_BUDGET):
    """Unpickle ``data`` allowing only plain built-in values, within ``budget``; raises
    ValueError (one line, naming ``source``) for a refused global, a pickle over its budget
    (naming the bound) or an unreadable pickle. ``holds`` words what may be in it."""
    try:
        _scan(data, budget)
        obj = _PlainUnpickler(io.BytesIO(data)).load()
        _check_expansion(obj, budget)
        return obj
    except _OverBudget as e:
        raise ValueError(f"{source}: too large to unpickle safely: {e}") from None
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


def load_plain_pickle(path: str | os.PathLike, *, holds: str = _PLAIN, budget: Budget = DEFAULT_BUDGET):
    """The plain data pickled in ``path`` (see the module docstring). Raises FileNotFoundError
    when it is missing, ValueError (one line naming the file) when it asks for a global, is
    larger than ``budget`` allows, or is truncated / not a pickle."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > budget.max_bytes:
            raise ValueError(f"{path}: {size} bytes, over the {budget.max_bytes}-byte limit for {path.name}")
        data = f.read(budget.max_bytes + 1)  # bounded even if the file grows meanwhile
    if len(data) > budget.max_bytes:
        raise ValueError(f"{path}: over the {budget.max_bytes}-byte limit for {path.name}")
    return loads_plain_pickle(data, str(path), holds=holds, budget=budget)
