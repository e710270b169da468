"""Checkpoints: atomic writes, RNG state capture, and reading them back with clear errors."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from data.atomic import atomic_write
from data.atomic import atomic_write_text as _atomic_write_text

FORMAT = "clip4clip-framework/1"


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save`` to a temp file, fsync, rename over ``path``: a kill at any moment leaves
    the old checkpoint or the new one, never a truncated one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def atomic_write_text(text: str, path: Union[str, os.PathLike]) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _atomic_write_text(path, text)


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read one of our training checkpoints (trusted: it holds RNG states and the config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not is_framework_checkpoint(ckpt):
        raise ValueError(f"{path} is not a checkpoint written by this framework "
                         f"(expected a dict with format '{FORMAT}')")
    return ckpt


def is_framework_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def resolve_resume_path(resume: Union[str, os.PathLike]) -> Path:
    """``trainer.resume`` may name a checkpoint file or a run folder (its checkpoints/last.pt)."""
    p = Path(resume).expanduser()
    if p.is_dir():
        cand = p / "checkpoints" / "last.pt"
        if not cand.is_file():
            raise FileNotFoundError(f"trainer.resume={resume}: no checkpoints/last.pt in that run folder")
        return cand
    if not p.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint file or run folder")
    return p


def seed_everything(seed: int, deterministic: Optional[bool] = None) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
