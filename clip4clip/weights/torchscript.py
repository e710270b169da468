"""Read the weights of a TorchScript archive (OpenAI's released CLIP files) without running it.

``torch.jit.load`` compiles the archive's code and runs its ``__setstate__`` methods: a crafted
archive is a program. OpenAI's files only need their tensors, so this reader opens the zip,
unpickles ``data.pkl`` with an unpickler that builds nothing but tensors, plain containers and
inert stand-ins for the scripted modules, and reads each module's ``__parameters__`` /
``__buffers__`` declarations from the archive's code as text (never executed), so the result is
exactly ``torch.jit.load(path).state_dict()``.
"""
from __future__ import annotations

import ast
import collections
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

__all__ = ["MAX_CODE_MEMBER_BYTES", "MAX_PICKLE_MEMBER_BYTES", "MAX_ZIP_INFLATION", "TorchScriptReadError",
           "is_torchscript_archive", "read_torchscript_state_dict"]

# Storage class names in the pickle -> element dtype.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# class Linear(Module):
#   __parameters__ = ["weight", "bias", ]
#   __buffers__ = []
_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n?)*)", re.MULTILINE)
_DECL_RE = re.compile(r"^[ \t]+(__parameters__|__buffers__) = (\[[^\]]*\])", re.MULTILINE)


# What one member of an archive may hold; each is checked against ZipInfo.file_size before it is
# read, and read with that limit so a header that understates the size cannot exceed it.
# code/**/*.py: the scripted modules' source, kilobytes each in OpenAI's files (tens of KB for
# the largest); only the __parameters__/__buffers__ lines are used.
MAX_CODE_MEMBER_BYTES = 4 * 2 ** 20
# data.pkl: the module tree and tensor references (kilobytes to a few hundred KB), and
# byteorder (a word).
MAX_PICKLE_MEMBER_BYTES = 64 * 2 ** 20
MAX_BYTEORDER_MEMBER_BYTES = 16
# All storages together may hold at most this multiple of the archive's size: torch writes them
# uncompressed, so more means deflated members inflating far past the file (a zip bomb).
MAX_ZIP_INFLATION = 4


class TorchScriptReadError(ValueError):
    """The archive is not one this reader can take apart (the message names the file)."""


def is_torchscript_archive(path) -> bool:
    """TorchScript archives are zips holding compiled code; ``torch.save`` zips hold none."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class _ScriptObject:
    """Stand-in for a scripted module: keeps the attribute dict the pickle hands it."""

    qualname = "?"

    def __setstate__(self, state):
        self.__dict__["state"] = state


class _Storage:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, where: Path) -> bytes:
    """Member ``name``'s bytes, refused when the zip says it holds more than ``limit``, and never
    more than ``limit`` read (zipfile stops at the declared size; a lying one then fails its CRC)."""
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise TorchScriptReadError(f"{where}: archive member {name} declares {info.file_size} bytes, more than the "
                                   f"{limit} such a member may hold (a crafted or corrupt archive)")
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TorchScriptReadError(f"{where}: archive member {name} holds more than {limit} bytes; refused")
    return data


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _declared_state(zf: zipfile.ZipFile, prefix: str, where: Path) -> Dict[str, Tuple[set, set]]:
    """'__torch__.a.b.Name' -> (parameter names, buffer names), from the archive's code files
    (each at most ``MAX_CODE_MEMBER_BYTES``)."""
    out: Dict[str, Tuple[set, set]] = {}
    code = f"{prefix}/code/"
    for name in zf.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-3].replace("/", ".")  # '__torch__.torch.nn.modules.linear'
        text = _read_member(zf, name, MAX_CODE_MEMBER_BYTES, where).decode("utf-8", errors="replace")
        for match in _CLASS_RE.finditer(text):
            decls = dict(_DECL_RE.findall(match.group(2)))
            try:
                params = set(ast.literal_eval(decls.get("__parameters__", "[]")))
                buffers = set(ast.literal_eval(decls.get("__buffers__", "[]")))
            except (ValueError, SyntaxError):
                continue
            out[f"{module}.{match.group(1)}"] = (params, buffers)
    return out


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, where: Path, budget: int):
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix, self._where = zf, prefix, where
        self._budget = budget  # bytes the storages may still take (each reference counts)
        self._classes: Dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type(name, (_ScriptObject,), {"qualname": qual})
            return self._classes[qual]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise TorchScriptReadError(f"{self._where}: refused to read this TorchScript archive: its data asks "
                                   f"for '{module}.{name}', which is not a tensor or a module's weights")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise TorchScriptReadError(f"{self._where}: unexpected storage reference {pid!r:.80} in data.pkl")
        dtype, key, numel = pid[1].dtype, str(pid[2]), int(pid[4])
        itemsize = torch.empty((), dtype=dtype).element_size()
        name = f"{self._prefix}/data/{key}"
        try:
            stored = self._zf.getinfo(name).file_size
        except KeyError:
            raise TorchScriptReadError(f"{self._where}: data.pkl names storage {key!r}, which the archive "
                                       "does not hold (truncated or edited file)") from None
        if numel < 0 or stored < numel * itemsize:
            raise TorchScriptReadError(f"{self._where}: storage {key!r} holds {stored} bytes; expected "
                                       f"{numel * itemsize} ({numel} x {dtype})")
        self._budget -= numel * itemsize
        if self._budget < 0:
            raise TorchScriptReadError(f"{self._where}: the storages data.pkl names add up to more than "
                                       f"{MAX_ZIP_INFLATION}x the archive's size; refused (a crafted or corrupt "
                                       "archive)")
        # The storage's own size bounds the read: data.pkl's numel was checked against it above.
        raw = _read_member(self._zf, name, numel * itemsize, self._where) if numel else b""
        return torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _collect(obj: _ScriptObject, declared: Dict[str, Tuple[set, set]], prefix: str,
             out: Dict[str, torch.Tensor]) -> None:
    state = obj.__dict__.get("state")
    if not isinstance(state, dict):
        return
    decl: Optional[Tuple[set, set]] = declared.get(obj.qualname)
    for key, value in state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, declared, f"{prefix}{key}.", out)
        elif isinstance(value, torch.Tensor):
            # Without a declaration (unusual archives) every tensor attribute is kept; the
            # caller's strict key check then names anything unexpected.
            if decl is None or key in decl[0] or key in decl[1]:
                out[prefix + key] = value


def read_torchscript_state_dict(path) -> Dict[str, torch.Tensor]:
    """``torch.jit.load(path).state_dict()``, read without compiling or running the archive.

    Returns name -> tensor in the archive's dtypes (OpenAI's files: float16 weights)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pkl:
                raise TorchScriptReadError(f"{path}: a zip without <folder>/data.pkl: not a TorchScript archive")
            prefix = pkl[0].split("/", 1)[0]
            order = f"{prefix}/byteorder"
            if order in zf.namelist() and _read_member(zf, order, MAX_BYTEORDER_MEMBER_BYTES, path).strip() not in (
                    b"little", b""):
                raise TorchScriptReadError(f"{path}: big-endian archive; only little-endian files are read")
            declared = _declared_state(zf, prefix, path)
            data = _read_member(zf, pkl[0], MAX_PICKLE_MEMBER_BYTES, path)
            root = _Unpickler(data, zf, prefix, path, MAX_ZIP_INFLATION * path.stat().st_size).load()
    except TorchScriptReadError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, RuntimeError) as e:
        raise TorchScriptReadError(f"{path}: cannot read this TorchScript archive (truncated or corrupt: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(root, _ScriptObject):
        raise TorchScriptReadError(f"{path}: data.pkl holds a {type(root).__name__}, not a scripted module")
    out: Dict[str, torch.Tensor] = {}
    _collect(root, declared, "", out)
    return out
