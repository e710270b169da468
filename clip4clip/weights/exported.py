"""Folders written by ``python -m clip4clip.export``: ``model.safetensors`` + ``config.json``.

``model.safetensors`` holds the full CLIP4Clip state dict; ``config.json`` holds what rebuilds
the model (``model_args``), the tokenizer state and the run's resolved config. Reading one back
needs neither pickle nor the original run. Writing is ``export.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple, Union

import torch

from .files import SECTION, field_problems, file_in_folder, nullable, read_json, read_weights_file
from .rebuild import model_with_state

__all__ = ["CONFIG_FILE", "EXPORT_FORMAT", "MAX_EXPORT_CONFIG_BYTES", "WEIGHTS_FILE", "is_exported_folder",
           "load_exported", "read_export"]

EXPORT_FORMAT = "clip4clip-framework/export-1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# An export's config.json holds model_args, the run's config and a word tokenizer's vocabulary
# (~10 bytes a word: 1 MB for 100k words); 64 MiB is far above any, and keeps a huge file unread.
MAX_EXPORT_CONFIG_BYTES = 64 * 2 ** 20
# config.json's schema, checked before any value is used ('weights' is checked as a file name).
_SCHEMA = {"model_args": SECTION, "tokenizer": SECTION, "config": nullable(SECTION), "state": nullable(SECTION)}


def is_exported_folder(path: Union[str, os.PathLike]) -> bool:
    """``path`` is a folder written by ``export_checkpoint`` (its config.json says so). False
    too when config.json cannot be read; ``read_export`` says why."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        meta = read_json(cfg, "export config", MAX_EXPORT_CONFIG_BYTES)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT


def read_export(folder: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config.json as a dict, the full state dict), both checked enough to rebuild the model
    (``model_with_state`` then checks ``model_args`` against every key and shape)."""
    cfg = folder / CONFIG_FILE
    if not cfg.exists():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (not a folder written by python -m clip4clip.export)")
    meta = read_json(cfg, "export config", MAX_EXPORT_CONFIG_BYTES)
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{cfg}: not an export of this framework (format {got!r}, expected {EXPORT_FORMAT!r})")
    missing = [key for key in ("model_args", "tokenizer") if key not in meta]
    problems = [f"'{key}' is missing" for key in missing] + field_problems(meta, _SCHEMA)
    if problems:
        raise ValueError(f"{cfg}: " + "; ".join(problems))
    weights = file_in_folder(folder, meta.get("weights", WEIGHTS_FILE), cfg, "weights")
    return meta, read_weights_file(weights, "exported weights file")


def load_exported(folder: Union[str, os.PathLike]) -> Tuple[torch.nn.Module, dict, dict]:
    """An exported folder -> (CLIP4Clip model with its weights, tokenizer state, run config).

    The tokenizer state is what ``builder.build_tokenizer(model_cfg, state=...)`` takes for a
    word tokenizer (``{"kind": "clip"}`` means CLIP's BPE); the run config is the resolved config
    the model was trained with (``config["model"]["max_words"]``, dataset settings...)."""
    folder = Path(folder).expanduser()
    meta, state = read_export(folder)
    model = model_with_state(meta["model_args"], state, where=str(folder))
    return model, meta["tokenizer"], meta.get("config") or {}
