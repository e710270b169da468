"""Checks of the checkpoint ``trainer.resume`` names, before any of it is used.

Resuming restores the optimiser, scheduler, gradient scaler, every random generator and the
loop's counters. A file without them (``best.pt`` is weights only, by design) or with a damaged
one would otherwise fail deep inside: ``KeyError: 'optimizer'`` (printed as ``error: optimizer``)
or a RuntimeError from ``torch.set_rng_state``. Each field is checked here, where the file is
read, and a failure is one ValueError naming the file, the field and what was expected.
"""
from __future__ import annotations

import numbers
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from .trainer import TrainState

#: What a resumable checkpoint (``last.pt``) holds beside the weights, and the type of each.
_TRAINING_FIELDS = {"optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict, "state": dict}
#: Mersenne Twister state sizes: Python's ``random`` (624 words + position) and numpy's MT19937.
_PY_STATE_LEN, _MT_WORDS = 625, 624


def check_resume_checkpoint(ckpt: Mapping[str, Any], path: Path) -> None:
    """Raise ValueError naming ``path`` when ``ckpt`` cannot be resumed from: an evaluation
    checkpoint (best.pt), a missing or mistyped training field, counters or RNG states that
    are not what ``Trainer.restore`` sets."""
    if ckpt.get("contents") == "eval" or "optimizer" not in ckpt:
        raise ValueError(_weights_only(path))
    for key, kind in _TRAINING_FIELDS.items():
        if key not in ckpt:
            raise ValueError(f"{path} has no {key!r} state; resume from a last.pt written by train.py")
        if not isinstance(ckpt[key], kind):
            raise ValueError(f"{path}: {key!r} is {type(ckpt[key]).__name__}; expected a {kind.__name__} "
                             "(the file is damaged or not a last.pt written by train.py)")
    opt = ckpt["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise ValueError(f"{path}: 'optimizer' is not an optimiser state dict (expected 'state' and 'param_groups')")
    _check_counters(ckpt["state"], path)
    check_rng_state(ckpt["rng"], path)


def _weights_only(path: Path) -> str:
    last = path.parent / "last.pt"
    where = f"resume from {last}" if last.is_file() else "resume from the last.pt of its run folder"
    what = "a best.pt" if path.name == "best.pt" else "an evaluation checkpoint like best.pt"
    return f"{path} has no optimizer state: it is {what} (weights only); {where}"


def _check_counters(state: Mapping[str, Any], path: Path) -> None:
    """The loop's counters (``TrainState``): known fields, whole epoch and step counts."""
    known = {f.name for f in fields(TrainState)}
    unknown = sorted(set(state) - known)
    if unknown:
        raise ValueError(f"{path}: 'state' holds unknown fields {unknown[:5]}; expected some of {sorted(known)}")
    for key in ("epoch", "step", "step_in_epoch"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{path}: state.{key} is {value!r:.40}; expected a whole number >= 0")


def check_rng_state(rng: Mapping[str, Any], path: Path) -> None:
    """The generator states ``saving.rng_state`` writes, each with its type and size:
    Python's ``random`` (version, 625 words, gauss), numpy's MT19937 (624 words, position) and
    torch's CPU generator (a uint8 tensor of ``torch.get_rng_state()``'s size)."""
    for key in ("python", "numpy", "torch"):
        if key not in rng:
            raise ValueError(f"{path} has no RNG state rng.{key}; resume from a last.pt written by train.py")
    _check_python_rng(rng["python"], path)
    _check_numpy_rng(rng["numpy"], path)
    size = torch.get_rng_state().numel()
    if not _byte_tensor(rng["torch"], size):
        raise ValueError(f"{path}: rng.torch is {_describe(rng['torch'])}; expected a uint8 tensor of {size} "
                         "bytes (torch.get_rng_state())")
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, (list, tuple)) and all(_byte_tensor(t) for t in cuda)):
        raise ValueError(f"{path}: rng.cuda is {_describe(cuda)}; expected a list of uint8 tensors "
                         "(torch.cuda.get_rng_state_all())")


def _check_python_rng(py: Any, path: Path) -> None:
    ok = (isinstance(py, (tuple, list)) and len(py) == 3 and isinstance(py[0], int)
          and isinstance(py[1], (tuple, list)) and len(py[1]) == _PY_STATE_LEN and _words(py[1])
          and (py[2] is None or isinstance(py[2], float)))
    if not ok:
        raise ValueError(f"{path}: rng.python is {_describe(py)}; expected random.getstate() "
                         f"(version, {_PY_STATE_LEN} words, gauss)")


def _check_numpy_rng(np_state: Any, path: Path) -> None:
    """A dict (``np.random.get_state(legacy=False)``, the key as a tensor) or, from older
    checkpoints, the legacy tuple ('MT19937', key, pos, has_gauss, gauss)."""
    if isinstance(np_state, dict):
        inner = np_state.get("state")
        key, pos = (inner.get("key"), inner.get("pos")) if isinstance(inner, dict) else (None, None)
        ok = (np_state.get("bit_generator") == "MT19937" and isinstance(np_state.get("has_gauss"), int)
              and isinstance(np_state.get("gauss"), numbers.Real))
    elif isinstance(np_state, (tuple, list)) and len(np_state) == 5:
        key, pos, ok = np_state[1], np_state[2], np_state[0] == "MT19937" and isinstance(np_state[4], numbers.Real)
    else:
        key, pos, ok = None, None, False
    ok = ok and isinstance(pos, numbers.Integral) and 0 <= int(pos) <= _MT_WORDS and _mt_key(key)
    if not ok:
        raise ValueError(f"{path}: rng.numpy is {_describe(np_state)}; expected numpy's MT19937 state "
                         f"({_MT_WORDS} words and a position)")


def _mt_key(key: Any) -> bool:
    """624 integers in [0, 2**32) (a tensor from our checkpoints, an array from older ones)."""
    try:
        t = torch.as_tensor(key)
    except (TypeError, ValueError, RuntimeError):
        return False
    return (t.shape == (_MT_WORDS,) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
            and bool(((t >= 0) & (t < 2 ** 32)).all()))


def _words(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32 for v in values)


def _byte_tensor(t: Any, size: int = 0) -> bool:
    return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
            and t.numel() > 0 and (not size or t.numel() == size))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{type(value).__name__} {value!r:.40}"
