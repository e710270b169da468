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
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .torchscript import is_torchscript_archive, read_torchscript_state_dict

__all__ = ["CheckpointReadError", "file_in_folder", "is_safetensors_file", "load_state_checked", "read_torch_file",
           "read_weights_file", "regular_file"]


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


def file_in_folder(folder: Path, name: Any, where: Union[str, os.PathLike], field: str) -> Path:
    """``folder / name`` for a file name read from a file (``where``'s ``field``): a plain name
    of a file in ``folder``, never a path leading elsewhere (``../x``, ``/etc/...``, ``sub/x``)."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"{where}: '{field}' is {name!r}; expected the name of a file in {folder}, not a path")
    return folder / name


def read_torch_file(path: Union[str, os.PathLike], what: str = "checkpoint") -> Any:
    """The object stored in ``path``: a ``torch.save`` file read with ``weights_only=True``, or
    the state dict (name -> tensor) of a TorchScript archive.

    Raises FileNotFoundError for a missing file, CheckpointReadError (a ValueError) for a file
    that is truncated, corrupt, not a PyTorch file, or that would need code to unpickle."""
    path = regular_file(path, what)
    if is_torchscript_archive(path):
        try:
            return read_torchscript_state_dict(path)
        except ValueError as e:
            raise CheckpointReadError(str(e)) from e
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore")  # pickle-protocol notices; failures are raised below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointReadError(_refusal(path, e, what)) from e
    except Exception as e:  # truncation, bad zip, random bytes: torch raises many kinds
        raise CheckpointReadError(f"{path}: cannot read this {what}: truncated or corrupt "
                                  f"({type(e).__name__}: {_first_line(e)})") from e


def load_state_checked(module: torch.nn.Module, state_dict, where: str, *,
                       allow_missing=lambda key: False, max_listed: int = 5) -> None:
    """``module.load_state_dict(state_dict)`` with every key and shape checked first, so a
    mismatch is one ValueError line naming ``where`` (a file, or what the weights are) and the
    keys, instead of torch's multi-line RuntimeError. ``allow_missing(key)``: keys the state
    dict may lack (e.g. a head initialised afresh)."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict and not allow_missing(k))
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = [f"{k} is {list(v.shape)} in the file but {list(own[k].shape)} in the model"
              for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    not_tensors = [k for k, v in state_dict.items() if k in own and not isinstance(v, torch.Tensor)]

    def listed(keys):
        more = f" and {len(keys) - max_listed} more" if len(keys) > max_listed else ""
        return ", ".join(keys[:max_listed]) + more

    problems = [f"{label} ({len(keys)}): {listed(keys)}" for label, keys in
                (("shape mismatch", shapes), ("missing keys", missing), ("unexpected keys", unexpected),
                 ("not tensors", not_tensors)) if keys]
    if problems:
        raise ValueError(f"{where}: the weights do not fit the model: " + "; ".join(problems))
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


def read_weights_file(path: Union[str, os.PathLike], what: str = "CLIP weights file"):
    """The contents of a weights file: a safetensors file read with the ``safetensors`` package
    (tensors only, no pickle), anything else with ``read_torch_file`` (torch.load
    with weights_only=True, or a TorchScript archive taken apart without running its code)."""
    path = Path(path)
    if not is_safetensors_file(path):
        return read_torch_file(path, what)
    regular_file(path, what)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt headers
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointReadError(f"{path}: cannot read this {what}: not a valid safetensors file "
                                  f"({type(e).__name__}: {first})") from e
