"""Folders written by ``python -m clip4clip.export``: ``model.safetensors`` + ``config.json``.

``model.safetensors`` holds the full CLIP4Clip state dict; ``config.json`` holds what rebuilds
the model (``model_args``), the tokenizer state and the run's resolved config. Reading one back
needs neither pickle nor the original run. Writing is ``export.py``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple, Union

import torch

from .files import file_in_folder, read_weights_file
from .rebuild import model_with_state

__all__ = ["CONFIG_FILE", "EXPORT_FORMAT", "WEIGHTS_FILE", "is_exported_folder", "load_exported", "read_export"]

EXPORT_FORMAT = "clip4clip-framework/export-1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def is_exported_folder(path: Union[str, os.PathLike]) -> bool:
    """``path`` is a folder written by ``export_checkpoint`` (its config.json says so)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT


def read_export(folder: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config.json as a dict, the full state dict), both checked enough to rebuild the model."""
    cfg = folder / CONFIG_FILE
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (not a folder written by python -m clip4clip.export)")
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{cfg}: not an export of this framework (format {got!r}, expected {EXPORT_FORMAT!r})")
    for key in ("model_args", "tokenizer"):
        if key not in meta:
            raise ValueError(f"{cfg}: '{key}' is missing")
    return meta, read_weights_file(_weights_path(folder, meta.get("weights", WEIGHTS_FILE), cfg),
                                   "exported weights file")


def _weights_path(folder: Path, name, cfg: Path) -> Path:
    """config.json's ``weights``: a file in the export folder, and not a link leading out of it
    (a shared folder must not make us read, say, /etc/... or ../other.pt)."""
    path = file_in_folder(folder, name, cfg, "weights")
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{cfg}: 'weights' {name!r} is a link to {path.resolve()}, outside {folder}")
    return path


def load_exported(folder: Union[str, os.PathLike]) -> Tuple[torch.nn.Module, dict, dict]:
    """An exported folder -> (CLIP4Clip model with its weights, tokenizer state, run config).

    The tokenizer state is what ``builder.build_tokenizer(model_cfg, state=...)`` takes for a
    word tokenizer (``{"kind": "clip"}`` means CLIP's BPE); the run config is the resolved config
    the model was trained with (``config["model"]["max_words"]``, dataset settings...)."""
    folder = Path(folder).expanduser()
    meta, state = read_export(folder)
    model = model_with_state(meta["model_args"], state, where=str(folder))
    return model, meta["tokenizer"], meta.get("config") or {}
