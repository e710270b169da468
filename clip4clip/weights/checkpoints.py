"""Our own checkpoints: the dict ``train.py`` writes (format ``FORMAT``), run folders, and the
models rebuilt from them (full, or adapter-only on top of their base CLIP).

Writing checkpoints (atomic saves, RNG state, the best/last pair) is the training engine's
(``engine/saving.py``); it takes ``FORMAT`` and ``checkpoint_file`` from here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..builder import to_plain
from ..clip import CLIPConfig
from ..model import CLIP4Clip
from .adapter_state import load_trainable_state_dict
from .exported import is_exported_folder, read_export
from .files import read_torch_file
from .initial import build_model
from .rebuild import model_with_state

FORMAT = "clip4clip-framework/1"
#: What a run folder holds, in the order a checkpoint argument takes them.
RUN_CHECKPOINTS = ("best.pt", "last.pt")

__all__ = ["FORMAT", "RUN_CHECKPOINTS", "checkpoint_file", "exported_checkpoint", "is_framework_checkpoint",
           "load_checkpoint", "load_model_from_checkpoint", "read_init_checkpoint"]


def checkpoint_file(source: Union[str, os.PathLike], names: Sequence[str] = RUN_CHECKPOINTS,
                    what: str = "checkpoint") -> Path:
    """A checkpoint file as given, or a run folder's ``checkpoints/<name>`` (the first of
    ``names`` present: best.pt, else last.pt; resuming asks for last.pt only). ``what`` (the
    config key or argument) is named in errors."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in names:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        wanted = " or ".join(f"checkpoints/{n}" for n in names)
        raise FileNotFoundError(f"{what}={source}: a folder without {wanted} "
                                "(expected a training run folder or a checkpoint file)")
    if not path.is_file():
        raise FileNotFoundError(f"{what}={source}: no such checkpoint file or run folder")
    return path


def is_framework_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def exported_checkpoint(folder: Union[str, os.PathLike]) -> dict:
    """An exported folder as one of our (evaluation) checkpoint dicts, for code that takes those:
    ``{"format", "contents": "eval", "model", "model_args", "tokenizer", "config", "state", "weights": "full"}``."""
    meta, state = read_export(Path(folder).expanduser())
    return {"format": FORMAT, "contents": "eval", "model": state, "model_args": meta["model_args"],
            "tokenizer": meta["tokenizer"], "config": meta.get("config") or {}, "state": meta.get("state") or {},
            "weights": "full"}


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """One of our training checkpoints, as the dict ``train.py`` wrote (an exported folder
    comes back in the same shape)."""
    path = Path(path)
    if path.is_dir() and is_exported_folder(path):
        return exported_checkpoint(path)
    ckpt = read_torch_file(path, "checkpoint")
    if not is_framework_checkpoint(ckpt):
        raise ValueError(f"{path} is not a checkpoint written by this framework "
                         f"(expected a dict with format '{FORMAT}')")
    return ckpt


def read_init_checkpoint(model_cfg: Mapping) -> Optional[dict]:
    """``model.init_checkpoint`` (one of our full checkpoints), read once: ``{"model": state
    dict, "clip": its CLIPConfig dict or None, "tokenizer": its word vocabulary or None,
    "path"}``, or None when the config names none. ``build_model(init_state=...)`` takes it."""
    path = to_plain(model_cfg).get("init_checkpoint")
    if not path:
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("weights") == "trainable":
        raise ValueError(f"model.init_checkpoint={path} holds only adapter weights; start from a full checkpoint")
    tok = ckpt.get("tokenizer")
    return {"model": ckpt["model"], "clip": (ckpt.get("model_args") or {}).get("clip"),
            "tokenizer": tok if tok and tok.get("kind") != "clip" else None, "path": str(path)}


def load_model_from_checkpoint(ckpt: Mapping, where: Optional[str] = None) -> CLIP4Clip:
    """Rebuild the model of one of our checkpoints. Full checkpoints need nothing else;
    trainable-only ones (``weights: trainable``) first load the base CLIP their config names.
    ``where`` (the file) is named in errors."""
    where = where or "checkpoint"
    try:
        return _model_from_checkpoint(ckpt, where)
    except (KeyError, TypeError, AttributeError) as e:  # a dict of ours with a field lost or mangled
        raise ValueError(f"{where}: a checkpoint of this framework with a missing or malformed field "
                         f"({type(e).__name__}: {e}); expected 'model_args', 'model' and 'config' as written "
                         "by train.py") from e


def _model_from_checkpoint(ckpt: Mapping, where: str) -> CLIP4Clip:
    if ckpt.get("weights") == "trainable":
        mcfg = ckpt["config"]["model"]
        model = build_model(mcfg, vocab_size=ckpt["model_args"]["clip"]["vocab_size"],
                            adapter_cfg=ckpt["model_args"].get("adapter"), init_state=read_init_checkpoint(mcfg))
        if model.clip.config != CLIPConfig.from_dict(ckpt["model_args"]["clip"]):
            raise ValueError(f"{where}: the base CLIP named in this adapter checkpoint's config "
                             f"({ckpt['config']['model']['clip']}) is not the one it was trained on")
        load_trainable_state_dict(model, ckpt["model"])
        return model
    return model_with_state(ckpt["model_args"], ckpt["model"], where)
