"""Keep memory freed by PyTorch inside the process, so CPU steps stop page-faulting it back in.

PyTorch's CPU tensors come straight from ``malloc``. With glibc's defaults, much of what a
training step frees goes back to the operating system (the top of the heap is trimmed once
more than ~2x the last large allocation is free, and large blocks are mmapped), so the next
step faults every page in again. On the 2-core dev box (a VM, where a minor fault costs ~2.5 us)
a demo step took ~10,000 faults and ~45 ms of kernel time, 8% of its CPU time, and about as much
wall time. This is the problem jemalloc/tcmalloc are preloaded for in PyTorch's CPU tuning
guides; ``mallopt`` gets glibc to do the same from inside the process, with nothing to install:

* a fixed mmap threshold of 32 MiB (glibc's largest): blocks below it come from the heap, where
  freed memory is reused (the default threshold starts at 128 KiB and only rises as big blocks
  are freed; setting the trim threshold alone would pin it there, which is far worse);
* a trim threshold of 2 GiB (``mallopt`` takes an int): free memory at the top of the heap is
  kept for the next step instead of being returned;
* 64 MiB of top padding: fewer, larger heap extensions.

What it costs: the process keeps up to 2 GiB of freed heap memory (its peak, which a training
run reaches every step anyway) instead of returning it. What it does not change: any number
the model computes. Blocks of 32 MiB and more are still mmapped (glibc caps the threshold).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 * 2**20))

_applied = False


def _glibc():
    """The C library when it is glibc (it has ``mallopt``), else None (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only; musl has mallopt too, with other semantics
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the settings above to this process (once; later calls do nothing). Returns whether
    they are in effect: False where the C library is not glibc or refused a setting."""
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # The mmap threshold first: setting the trim threshold also freezes the mmap threshold
    # wherever it stands.
    _applied = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied
