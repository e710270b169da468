"""Checking a ``.npy`` file's header before numpy reads it.

``np.load`` trusts the header: a garbage one surfaces as ``tokenize.TokenError`` or
``SyntaxError`` from numpy's own header parser (a traceback, not a message), and a header that
promises a shape the data does not hold fails only later. ``read_npy_header`` checks every field
itself (the format is numpy's ``numpy.lib.format``, versions 1.0 to 3.0) and raises
``NpyFormatError`` (a ValueError) reading ``<file>: not a valid .npy file (<why>)``:

* the magic ``\\x93NUMPY`` and a known version; the header length within ``MAX_HEADER_BYTES``
  (numpy's own default bound) and within the file;
* the header text: a dict literal (``ast.literal_eval``, guarded) with exactly ``descr``,
  ``fortran_order`` and ``shape``; ``descr`` a plain dtype (no fields, no sub-array, no Python
  objects, which would need pickle); ``fortran_order`` a bool; ``shape`` a tuple of at most
  ``MAX_DIMS`` whole numbers >= 0;
* the data: exactly ``prod(shape) * itemsize`` bytes after the header (a truncated or padded
  file is refused).

The caller then compares dtype and shape with what it expects, before any array is allocated.
"""
from __future__ import annotations

import ast
import math
import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["MAX_HEADER_BYTES", "NpyFormatError", "NpyHeader", "read_npy_header"]

MAGIC = b"\x93NUMPY"
#: Longest header read (numpy's ``max_header_size`` default): a longer one is not ours.
MAX_HEADER_BYTES = 10_000
#: Most dimensions a header may give (numpy 1.x's limit).
MAX_DIMS = 32
#: version -> (bytes of the header length field, text encoding of the header).
_VERSIONS = {(1, 0): (2, "latin1"), (2, 0): (4, "latin1"), (3, 0): (4, "utf8")}


class NpyFormatError(ValueError):
    """A file that is not a valid ``.npy`` file; ``path`` and ``reason`` are kept."""

    def __init__(self, path: "str | os.PathLike", reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: not a valid .npy file ({reason})")


@dataclass(frozen=True)
class NpyHeader:
    """What a checked header says: ``dtype``, ``shape``, ``fortran_order`` and ``offset`` (the
    byte where the data starts)."""

    dtype: np.dtype
    shape: Tuple[int, ...]
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(path: "str | os.PathLike") -> NpyHeader:
    """The checked header of the ``.npy`` file ``path`` (see the module docstring). Raises
    NpyFormatError naming the file and what is wrong; OSError (FileNotFoundError...) as open does."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = f.read(len(MAGIC) + 2)
        if len(start) < len(MAGIC) + 2 or start[:len(MAGIC)] != MAGIC:
            raise NpyFormatError(path, "no \\x93NUMPY magic at the start" if size else "empty file")
        version = (start[-2], start[-1])
        if version not in _VERSIONS:
            raise NpyFormatError(path, f"unknown format version {version[0]}.{version[1]}")
        width, encoding = _VERSIONS[version]
        raw = f.read(width)
        if len(raw) < width:
            raise NpyFormatError(path, "truncated inside the header length")
        length = struct.unpack("<H" if width == 2 else "<I", raw)[0]
        offset = len(start) + width + length
        if length > MAX_HEADER_BYTES or offset > size:
            raise NpyFormatError(path, f"header length {length} is over the {MAX_HEADER_BYTES}-byte limit"
                                 if length > MAX_HEADER_BYTES else f"header length {length} runs past the end "
                                 f"of the {size}-byte file")
        text = f.read(length)
    header = _parse_header(path, text, encoding, offset)
    if header.nbytes != size - offset:
        raise NpyFormatError(path, f"the header says {header.dtype.str} {header.shape} ({header.nbytes} bytes of "
                             f"data) but the file holds {size - offset} bytes after it")
    return header


def _parse_header(path, text: bytes, encoding: str, offset: int) -> NpyHeader:
    """The header dict of a .npy file, each field's type checked."""
    try:
        d = ast.literal_eval(text.decode(encoding))
    except (ValueError, SyntaxError, TypeError, UnicodeDecodeError, MemoryError, RecursionError) as e:
        raise NpyFormatError(path, f"the header is not a dict literal: {type(e).__name__}") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        keys = sorted(map(repr, d)) if isinstance(d, dict) else type(d).__name__
        raise NpyFormatError(path, f"the header holds {keys}; expected the keys 'descr', 'fortran_order', 'shape'")
    shape, order = d["shape"], d["fortran_order"]
    if not isinstance(order, bool):
        raise NpyFormatError(path, f"fortran_order is {order!r:.40}; expected True or False")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise NpyFormatError(path, f"shape is {shape!r:.60}; expected a tuple of at most {MAX_DIMS} whole numbers >= 0")
    return NpyHeader(_dtype(path, d["descr"]), shape, order, offset)


def _dtype(path, descr) -> np.dtype:
    """``descr`` as a plain numpy dtype: no record fields, sub-arrays or Python objects."""
    dtype: Optional[np.dtype] = None
    if isinstance(descr, str):
        try:
            dtype = np.dtype(descr)
        except (TypeError, ValueError, SyntaxError, OverflowError, MemoryError, RecursionError):
            dtype = None
    if dtype is None or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject \
            or dtype.itemsize == 0:
        raise NpyFormatError(path, f"descr {descr!r:.60} is not a plain dtype (a number, bool, or fixed-size string)")
    return dtype
