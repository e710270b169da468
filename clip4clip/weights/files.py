"""Reading weight files a user hands us, without letting the file run code.

Every ``.pt``/``.bin`` the framework opens (our checkpoints, official CLIP4Clip
``pytorch_model.bin.N``, CLIP weights, OpenAI's TorchScript archives) goes through
``read_torch_file``:

* ``torch.save`` files are read with ``torch.load(weights_only=True)``: only tensors and plain
  containers (dict, list, tuple, str, numbers, None) are built. The one addition is numpy's
  array reconstruction, so checkpoints written before RNG states were stored as tensors still
  load; it builds arrays of plain numbers and nothing else.
* TorchScript archives are taken apart by ``clip.torchscript`` (tensors only; the archive's code
  is never compiled or run), instead of ``torch.jit.load``.

Anything else is refused with one line that names the file and the reason.

Nothing a file declares is trusted to be small: zip members may not inflate past the file's
size (``MAX_ZIP_INFLATION``), a loaded tensor may not be bigger than the bytes behind it (a
zero-stride view of one float saved as 10^9 floats would become 4 GB when converted), and all
tensors together may not exceed ``MAX_TENSOR_BYTES_RATIO`` times the file. JSON files are read
only up to a size bound (``read_json``), and the values in them are checked against a small
schema (``field_problems``) before anything is built from them.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from .torchscript import MAX_ZIP_INFLATION, is_torchscript_archive, read_torchscript_state_dict

__all__ = ["COUNT", "CheckpointReadError", "FLAG", "Field", "MAX_CONFIG_JSON_BYTES", "MAX_SAFETENSORS_HEADER_BYTES",
           "MAX_TENSOR_BYTES_RATIO", "MAX_ZIP_INFLATION", "POSITIVE", "SECTION", "SIZE", "TEXT", "check_state_fits",
           "check_tensor_sizes", "field_problems", "file_in_folder", "is_safetensors_file", "load_state_checked",
           "nullable", "read_json", "read_torch_file", "read_weights_file", "regular_file", "state_shapes"]

# MAX_ZIP_INFLATION (torchscript.py): torch.save and TorchScript write their zip members
# uncompressed, so a zip whose members claim more than 4x the file's bytes is a decompression
# bomb (torch.load inflates deflated members whole: a 4 MB file can ask for 4 GB).
# What the tensors read from a file may occupy once converted to float32, as a multiple of the
# file's size: 2x for float16 weights made float32, times the zip bound above. Tensors that
# share one storage (views) count once each, so a file of views cannot multiply past this.
MAX_TENSOR_BYTES_RATIO = 2 * MAX_ZIP_INFLATION
# safetensors' JSON header (names, dtypes, shapes, offsets): ~30 KB for a ViT-L CLIP; the
# safetensors package itself allows 100 MB, far beyond any CLIP.
MAX_SAFETENSORS_HEADER_BYTES = 16 * 2 ** 20
# config.json, open_clip_config.json, *.index.json: a few KB for every CLIP (an index of a
# sharded ViT-bigG is ~60 KB); the bound keeps a huge file from being read whole.
MAX_CONFIG_JSON_BYTES = 16 * 2 ** 20


class CheckpointReadError(ValueError):
    """A weight file could not be read or was refused; the message is one line naming it."""


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    # The dtype classes BUILD the array's dtype (numpy 2 has one per type, e.g. UInt32DType).
    dtypes = [type(np.dtype(t)) for t in ("u1", "u4", "i4", "i8", "f4", "f8", "b1")]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dict.fromkeys(dtypes)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _refusal(path: Path, e: pickle.UnpicklingError, what: str) -> str:
    text = str(e)
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    if glob:
        return (f"{path}: refused to load this {what}: its pickle asks for '{glob.group(1)}', which could "
                "run code; only tensors and plain containers are read (torch.load weights_only=True)")
    op = re.search(r"Unsupported operand (\d+)", text)
    if op:
        return (f"{path}: not a file written by torch.save (a plain pickle, another format or random bytes: "
                f"pickle opcode {op.group(1)} refused); expected a PyTorch checkpoint")
    build = re.search(r"but got (<[^>]+>)", text)
    return (f"{path}: refused to load this {what}: it asks to build {build.group(1) if build else 'an object'} "
            "(only tensors and plain containers are read)")


def regular_file(path: Union[str, os.PathLike], what: str) -> Path:
    """``path`` if it is a regular file (or a link to one). A FIFO, socket or device is refused
    at once, named: opening a FIFO would block forever waiting for a writer."""
    path = Path(path)
    if path.is_file():
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is not a regular file (a FIFO, socket or device); expected a file")
    raise FileNotFoundError(f"{what} not found: {path}" + (" (a folder)" if path.is_dir() else ""))


def file_in_folder(folder: Path, name: Any, where: Union[str, os.PathLike], field: str,
                   within: Optional[Path] = None) -> Path:
    """``folder / name`` for a file name read from a file (``where``'s ``field``): a plain name
    of a file in ``folder``, never a path leading elsewhere (``../x``, ``/etc/...``, ``sub/x``),
    nor a link whose target lies outside ``within`` (default ``folder``; a Hugging Face cache
    snapshot links its files to the repository's ``blobs/``, so there it is the repository)."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name \
            or "\0" in name:
        raise ValueError(f"{where}: '{field}' is {name!r:.80}; expected the name of a file in {folder}, not a path")
    path = folder / name
    bound = (within or folder).resolve()
    if path.is_symlink() and not path.resolve().is_relative_to(bound):
        raise ValueError(f"{where}: '{field}' {name!r} is a link to {path.resolve()}, outside {bound}")
    return path


def read_json(path: Union[str, os.PathLike], what: str, max_bytes: int = MAX_CONFIG_JSON_BYTES) -> Any:
    """The parsed contents of a JSON file, read only if it is a regular file of at most
    ``max_bytes``. Every failure is one ValueError line naming the file: too large, not UTF-8,
    or ``not valid JSON (line L column C: <why>)`` (json's own message names no file)."""
    path = regular_file(path, what)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: this {what} is {size} bytes; refused above {max_bytes} (no such file is that large)")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)  # +1: a file that grew since stat is still caught, unread beyond
    if len(raw) > max_bytes:
        raise ValueError(f"{path}: this {what} is larger than {max_bytes} bytes; refused")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: this {what} is not UTF-8 text (byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); this {what} is "
                         "truncated or was edited") from e
    except (ValueError, RecursionError) as e:  # a 5000-digit number; thousands of nested brackets
        raise ValueError(f"{path}: not valid JSON for a {what} ({type(e).__name__}: {_first_line(e)})") from e


# --------------------------------------------------------------------------- schemas of JSON fields

class Field(NamedTuple):
    """A schema entry: what a value must satisfy, and how an error says so."""

    ok: Callable[[Any], bool]
    expected: str


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


COUNT = Field(_is_count, "a whole number >= 1")
# Image and patch sizes: one number, or [h, w] (transformers and OpenCLIP accept both).
SIZE = Field(lambda v: _is_count(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_count, v))),
             "a whole number >= 1 or a pair of them")
POSITIVE = Field(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 "a number > 0")
TEXT = Field(lambda v: isinstance(v, str), "a string")
FLAG = Field(lambda v: isinstance(v, bool), "true or false")
SECTION = Field(lambda v: isinstance(v, dict), "an object {...}")


def nullable(field: Field) -> Field:
    """``field``, or JSON null."""
    return Field(lambda v: v is None or field.ok(v), f"null or {field.expected}")


def field_problems(section: Mapping, spec: Mapping[str, Field], prefix: str = "") -> List[str]:
    """One phrase per field of ``section`` that ``spec`` has and the value fails, e.g.
    ``vision_config.patch_size=0 (expected a whole number >= 1)``. Fields absent from
    ``section`` are not checked (they take their defaults)."""
    return [f"{prefix}{name}={section[name]!r:.60} (expected {field.expected})"
            for name, field in spec.items() if name in section and not field.ok(section[name])]


def read_torch_file(path: Union[str, os.PathLike], what: str = "checkpoint") -> Any:
    """The object stored in ``path``: a ``torch.save`` file read with ``weights_only=True``, or
    the state dict (name -> tensor) of a TorchScript archive. Its tensors are checked to be no
    bigger than the bytes the file holds (``check_tensor_sizes``) before anyone converts them.

    Raises FileNotFoundError for a missing file, CheckpointReadError (a ValueError) for a file
    that is truncated, corrupt, not a PyTorch file, would need code to unpickle, or declares
    more data than it holds."""
    path = regular_file(path, what)
    _check_zip_inflation(path, what)
    if is_torchscript_archive(path):
        try:
            obj = read_torchscript_state_dict(path)
        except ValueError as e:
            raise CheckpointReadError(str(e)) from e
    else:
        obj = _torch_load(path, what)
    check_tensor_sizes(obj, path, what)
    return obj


def _torch_load(path: Path, what: str) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore")  # pickle-protocol notices; failures are raised below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointReadError(_refusal(path, e, what)) from e
    except Exception as e:  # truncation, bad zip, random bytes: torch raises many kinds
        raise CheckpointReadError(f"{path}: cannot read this {what}: truncated or corrupt "
                                  f"({type(e).__name__}: {_first_line(e)})") from e


def _check_zip_inflation(path: Path, what: str) -> None:
    """A zip (torch.save's format, TorchScript) whose members claim more than
    ``MAX_ZIP_INFLATION`` times the file's size is refused before anything is inflated."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            claimed = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # not a readable zip: the reader below reports it as truncated or corrupt
    size = path.stat().st_size
    if claimed > MAX_ZIP_INFLATION * size:
        raise CheckpointReadError(f"{path}: refused this {what}: its zip members inflate to {claimed} bytes, more "
                                  f"than {MAX_ZIP_INFLATION}x the file's {size} (a decompression bomb; PyTorch "
                                  "writes its members uncompressed)")


def _tensors(obj: Any) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in nested dicts/lists/tuples, each container visited once
    (a pickle can make a list contain itself). Names: ``model.visual.proj``, ``rng[0]``."""
    stack, seen = [("", obj)], set()
    while stack:
        name, value = stack.pop()
        if isinstance(value, torch.Tensor):
            yield name or "(the file's tensor)", value
        elif isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                child = (f"{name}.{k}" if name else str(k)) if isinstance(value, dict) else f"{name}[{k}]"
                stack.append((child, v))


def check_tensor_sizes(obj: Any, path: Path, what: str) -> None:
    """Refuse tensors that would grow past what ``path`` holds once copied or converted.

    * Each tensor must be dense and no bigger than its storage: ``numel * element_size`` above
      the storage's bytes, or a zero stride on a dimension > 1, is a view repeating the same
      bytes (``torch.zeros(1).expand(10**9)`` saves as 4 bytes and becomes 4 GB under ``.float()``).
    * All tensors together, counted as float32 where floating (the readers convert them), may
      not exceed ``MAX_TENSOR_BYTES_RATIO`` times the file's size.
    Checked on the views themselves: nothing is copied."""
    budget = MAX_TENSOR_BYTES_RATIO * max(path.stat().st_size, 1)
    total = 0
    for name, t in _tensors(obj):
        if t.layout != torch.strided:
            raise CheckpointReadError(f"{path}: tensor '{name}' is {t.layout}; only dense tensors are read")
        nbytes = t.numel() * t.element_size()
        stored = t.untyped_storage().nbytes()
        repeated = any(stride == 0 and n > 1 for stride, n in zip(t.stride(), t.shape))
        if nbytes > stored or repeated:
            raise CheckpointReadError(f"{path}: tensor '{name}' of shape {list(t.shape)} ({nbytes} bytes) is a view "
                                      f"repeating {stored} stored bytes (stride {list(t.stride())}); refused: it "
                                      "would be materialised far beyond the file's size")
        total += t.numel() * (max(t.element_size(), 4) if t.is_floating_point() else t.element_size())
        if total > budget:
            raise CheckpointReadError(f"{path}: this {what}'s tensors add up to more than {budget} bytes as float32, "
                                      f"{MAX_TENSOR_BYTES_RATIO}x the file's size (views sharing storage); refused")


def state_shapes(module: torch.nn.Module) -> Dict[str, torch.Size]:
    """Key -> shape of ``module.state_dict()`` (works on a model built on the meta device)."""
    return {k: v.shape for k, v in module.state_dict().items()}


def check_state_fits(expected: Mapping[str, torch.Size], state_dict: Mapping, where: str, *,
                     allow_missing: Callable[[str], bool] = lambda key: False, max_listed: int = 5) -> None:
    """Every key of ``state_dict`` is one ``expected`` has, with that shape, and every expected
    key is there (unless ``allow_missing(key)``); else one ValueError line naming ``where`` and
    the keys. ``expected`` is usually ``state_shapes`` of the model built on the meta device, so
    a config that declares huge sizes is refused before anything is allocated."""
    missing = sorted(k for k in expected if k not in state_dict and not allow_missing(k))
    unexpected = sorted(str(k) for k in state_dict if k not in expected)
    shapes = [f"{k} is {list(v.shape)} in the file but {list(expected[k])} in the model"
              for k, v in state_dict.items()
              if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k])]
    not_tensors = [k for k, v in state_dict.items() if k in expected and not isinstance(v, torch.Tensor)]

    def listed(keys):
        more = f" and {len(keys) - max_listed} more" if len(keys) > max_listed else ""
        return ", ".join(keys[:max_listed]) + more

    problems = [f"{label} ({len(keys)}): {listed(keys)}" for label, keys in
                (("shape mismatch", shapes), ("missing keys", missing), ("unexpected keys", unexpected),
                 ("not tensors", not_tensors)) if keys]
    if problems:
        raise ValueError(f"{where}: the weights do not fit the model: " + "; ".join(problems))


def load_state_checked(module: torch.nn.Module, state_dict, where: str, *,
                       allow_missing=lambda key: False, max_listed: int = 5) -> None:
    """``module.load_state_dict(state_dict)`` with every key and shape checked first, so a
    mismatch is one ValueError line naming ``where`` (a file, or what the weights are) and the
    keys, instead of torch's multi-line RuntimeError. ``allow_missing(key)``: keys the state
    dict may lack (e.g. a head initialised afresh)."""
    check_state_fits(state_shapes(module), state_dict, where, allow_missing=allow_missing, max_listed=max_listed)
    module.load_state_dict(dict(state_dict), strict=False)


def is_safetensors_file(path: Union[str, os.PathLike]) -> bool:
    """``path`` is a safetensors file: named so, or starting as one (an 8-byte little-endian
    header length, then the JSON header's '{'), whatever its name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    if not path.is_file():  # never open a FIFO to sniff it: that blocks
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < size


def _check_safetensors_layout(path: Path, what: str) -> None:
    """A safetensors file's header is read (at most ``MAX_SAFETENSORS_HEADER_BYTES``) and its
    tensors' byte ranges compared with the file's size, so a truncated file is reported as
    such, naming it, instead of the package's 'incomplete metadata' or an mmap error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > MAX_SAFETENSORS_HEADER_BYTES:
            problem = ("shorter than its 8-byte header length" if length is None else
                       f"its header claims {length} bytes (more than {MAX_SAFETENSORS_HEADER_BYTES})")
            raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file ({problem})")
        if 8 + length > size:
            raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file: truncated "
                                      f"(its header is {length} bytes but the file holds {size} in all)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(entry["data_offsets"][1]) for k, entry in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file (its header is not "
                                  f"the JSON safetensors writes: {type(e).__name__})") from e
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file: truncated (its "
                                  f"header describes {needed} bytes, the file holds {size})")


def read_weights_file(path: Union[str, os.PathLike], what: str = "CLIP weights file"):
    """The contents of a weights file: a safetensors file read with the ``safetensors`` package
    (tensors only, no pickle), anything else with ``read_torch_file`` (torch.load
    with weights_only=True, or a TorchScript archive taken apart without running its code)."""
    path = Path(path)
    if not is_safetensors_file(path):
        return read_torch_file(path, what)
    regular_file(path, what)
    _check_safetensors_layout(path, what)
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt headers
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file "
                                  f"({type(e).__name__}: {first})") from e
    check_tensor_sizes(sd, path, what)
    return sd
