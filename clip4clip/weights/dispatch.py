"""The one place that loads a checkpoint, whatever it is, for training, evaluation and search.

``checkpoint`` arguments may be:

* one of our training checkpoints (``best.pt`` / ``last.pt``, format ``FORMAT``), or a run
  folder (its ``checkpoints/best.pt``, else ``last.pt``);
* an official CLIP4Clip ``pytorch_model.bin.N`` (keys ``clip.*``: ``official.py``);
* a released CLIP name (``ViT-B/32``: zero-shot, meanP), a CLIP weights file, a Hugging Face
  (``hf:openai/clip-vit-base-patch32`` or its folder) or OpenCLIP checkpoint;
* a folder exported with ``python -m clip4clip.export`` (safetensors + config.json).

``load_model(arg)`` gives the model, its tokenizer and its config in one call;
``read_checkpoint(arg)`` + ``model_and_tokenizer`` are the two halves, for callers that merge
command-line overrides into a checkpoint's config in between (``evaluate.py``). Every file is
read with ``files.read_torch_file`` or safetensors: nothing in it is executed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..builder import build_tokenizer
from ..heads import DEFAULT_HEAD
from ..model import CLIP4Clip
from .checkpoints import (check_checkpoint, checkpoint_file, exported_checkpoint, is_framework_checkpoint,
                          load_model_from_checkpoint)
from .clip_state import clip_from_state_dict, clip_state_dict
from .clip_weights import PRETRAINED, is_clip_folder, is_pretrained_name, load_clip, refuse_unknown_config
from .exported import is_exported_folder
from .files import is_safetensors_file, read_torch_file
from .official import load_official_checkpoint
from .openclip import is_open_clip_file

__all__ = ["Loaded", "load_model", "model_and_tokenizer", "read_checkpoint", "resolve_source"]


def resolve_source(arg: Union[str, os.PathLike]) -> str:
    """A released CLIP name stays as is; a run folder becomes its ``checkpoints/best.pt`` (or
    ``last.pt``); a file becomes its absolute path (indexes record where a model came from)."""
    arg = str(arg)
    if is_pretrained_name(arg):
        return arg
    path = Path(arg).expanduser()
    if path.is_dir() and (is_exported_folder(path) or is_clip_folder(path)):
        return str(path.resolve())
    if path.is_dir() and not (path / "checkpoints").is_dir():
        refuse_unknown_config(path)  # a truncated export config.json is named as such, not as a missing best.pt
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {arg}: no such file or run folder, and not a released "
                                f"CLIP name {list(PRETRAINED)} or hf:<repo id>")
    return str(checkpoint_file(path).resolve())


def read_checkpoint(arg: Union[str, os.PathLike]) -> Tuple[str, Any, str]:
    """-> (kind, payload, source): 'ours' (checkpoint dict), 'official' (state dict) or 'clip'
    (a CLIP model); ``source`` is ``resolve_source(arg)``."""
    source = resolve_source(arg)
    if is_pretrained_name(source):
        return "clip", load_clip(source), source
    path = Path(source)
    if path.is_dir():
        if is_exported_folder(path):
            ckpt = exported_checkpoint(path)
            check_checkpoint(ckpt, source)
            return "ours", ckpt, source
        return "clip", load_clip(path), source  # a Hugging Face / OpenCLIP folder
    if is_safetensors_file(path) or is_open_clip_file(path):
        return "clip", load_clip(path), source
    obj = read_torch_file(source, "checkpoint")
    if is_framework_checkpoint(obj):
        check_checkpoint(obj, source)  # callers read its config before the model is rebuilt
        return "ours", obj, source
    if isinstance(obj, dict) and any(str(k).startswith("clip.") for k in obj):
        return "official", obj, source
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        sd = clip_state_dict(obj, source)  # TorchScript archives arrive here as their state dict
        if "visual.proj" in sd:
            return "clip", clip_from_state_dict(sd, where=source), source
        if any(k.startswith(("text_model.", "vision_model.")) for k in sd):  # Hugging Face layout
            return "clip", load_clip(source), source
    raise ValueError(f"checkpoint={source} is none of: a checkpoint of this framework, an official "
                     f"CLIP4Clip checkpoint (keys 'clip.*'), CLIP weights (keys 'visual.*')")


def model_and_tokenizer(kind: str, payload: Any, model_cfg: Mapping,
                        source: Optional[str] = None) -> Tuple[CLIP4Clip, Any]:
    """The model and tokenizer of a ``read_checkpoint`` result. ``model_cfg`` is the ``model``
    config the tokenizer is built from (BPE vocabulary location); our checkpoints bring their
    own word vocabulary, the other kinds always use CLIP's BPE."""
    if kind == "ours":
        model = load_model_from_checkpoint(payload, source)
        tok_state = payload.get("tokenizer") or {"kind": "clip"}
        tokenizer = build_tokenizer(model_cfg, state=tok_state if tok_state["kind"] != "clip" else None)
    elif kind == "official":
        model = load_official_checkpoint(payload, where=source)
        tokenizer = build_tokenizer({**model_cfg, "tokenizer": "clip"})
    elif kind == "clip":
        model = CLIP4Clip.from_clip(payload, DEFAULT_HEAD)
        tokenizer = build_tokenizer({**model_cfg, "tokenizer": "clip"})
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected 'ours', 'official' or 'clip'")
    return model, tokenizer


@dataclass
class Loaded:
    """What ``load_model`` returns. ``config``: the resolved training config of our checkpoints
    (None for the other kinds, which carry none)."""

    model: CLIP4Clip
    tokenizer: Any
    config: Optional[Dict[str, Any]]
    kind: str
    source: str


def load_model(arg: Union[str, os.PathLike], model_cfg: Optional[Mapping] = None) -> Loaded:
    """Any checkpoint argument -> model + tokenizer + config. ``model_cfg``: the ``model``
    config for the tokenizer (default: the checkpoint's own, else CLIP's BPE from the cache)."""
    kind, payload, source = read_checkpoint(arg)
    config = payload.get("config") if kind == "ours" else None
    cfg = dict(model_cfg) if model_cfg is not None else dict((config or {}).get("model") or {"tokenizer": "clip"})
    model, tokenizer = model_and_tokenizer(kind, payload, cfg, source)
    return Loaded(model, tokenizer, config, kind, source)
