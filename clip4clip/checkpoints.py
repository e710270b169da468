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
read with ``serialization.read_torch_file``: nothing in it is executed. Writing checkpoints
(atomic saves, RNG state) is the training engine's business.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .builder import build_model, build_tokenizer, model_from_args, to_plain
from .clip import (PRETRAINED, CLIPConfig, clip_from_state_dict, clip_state_dict, is_clip_folder,
                   is_pretrained_name, load_clip)
from .clip.openclip import is_open_clip_file
from .clip.pretrained import is_safetensors_file
from .export import exported_checkpoint, is_exported_folder
from .heads import DEFAULT_HEAD
from .model import CLIP4Clip
from .official import load_official_checkpoint
from .serialization import CheckpointReadError, load_state_checked, read_torch_file

FORMAT = "clip4clip-framework/1"

__all__ = ["FORMAT", "CheckpointReadError", "Loaded", "is_framework_checkpoint", "load_checkpoint",
           "load_model", "load_model_from_checkpoint", "load_state_checked", "model_and_tokenizer",
           "read_checkpoint", "read_init_checkpoint", "read_torch_file", "resolve_source"]


def is_framework_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """One of our training checkpoints, as the dict ``train.py`` wrote."""
    path = Path(path)
    if path.is_dir() and is_exported_folder(path):
        return exported_checkpoint(path)
    ckpt = read_torch_file(path, "checkpoint")
    if not is_framework_checkpoint(ckpt):
        raise ValueError(f"{path} is not a checkpoint written by this framework "
                         f"(expected a dict with format '{FORMAT}')")
    return ckpt


def resolve_source(arg: Union[str, os.PathLike]) -> str:
    """A released CLIP name stays as is; a run folder becomes its ``checkpoints/best.pt`` (or
    ``last.pt``); a file becomes its absolute path (indexes record where a model came from)."""
    arg = str(arg)
    if is_pretrained_name(arg):
        return arg
    path = Path(arg).expanduser()
    if path.is_dir():
        if is_exported_folder(path) or is_clip_folder(path):
            return str(path.resolve())
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return str((path / "checkpoints" / name).resolve())
        raise FileNotFoundError(f"checkpoint {arg}: a folder without checkpoints/best.pt or "
                                "checkpoints/last.pt (expected a training run folder)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {arg}: no such file or run folder, and not a released "
                                f"CLIP name {list(PRETRAINED)} or hf:<repo id>")
    return str(path.resolve())


def read_checkpoint(arg: Union[str, os.PathLike]) -> Tuple[str, Any, str]:
    """-> (kind, payload, source): 'ours' (checkpoint dict), 'official' (state dict) or 'clip'
    (a CLIP model); ``source`` is ``resolve_source(arg)``."""
    source = resolve_source(arg)
    if is_pretrained_name(source):
        return "clip", load_clip(source), source
    path = Path(source)
    if path.is_dir():
        if is_exported_folder(path):
            return "ours", exported_checkpoint(path), source
        return "clip", load_clip(path), source  # a Hugging Face / OpenCLIP folder
    if is_safetensors_file(path) or is_open_clip_file(path):
        return "clip", load_clip(path), source
    obj = read_torch_file(source, "checkpoint")
    if is_framework_checkpoint(obj):
        return "ours", obj, source
    if isinstance(obj, dict) and any(str(k).startswith("clip.") for k in obj):
        return "official", obj, source
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        sd = clip_state_dict(obj, source)  # TorchScript archives arrive here as their state dict
        if "visual.proj" in sd:
            return "clip", clip_from_state_dict(sd), source
        if any(k.startswith(("text_model.", "vision_model.")) for k in sd):  # Hugging Face layout
            return "clip", load_clip(source), source
    raise ValueError(f"checkpoint={source} is none of: a checkpoint of this framework, an official "
                     f"CLIP4Clip checkpoint (keys 'clip.*'), CLIP weights (keys 'visual.*')")


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
        import adapters
        mcfg = ckpt["config"]["model"]
        model = build_model(mcfg, vocab_size=ckpt["model_args"]["clip"]["vocab_size"],
                            adapter_cfg=ckpt["model_args"].get("adapter"), init_state=read_init_checkpoint(mcfg))
        if model.clip.config != CLIPConfig.from_dict(ckpt["model_args"]["clip"]):
            raise ValueError(f"{where}: the base CLIP named in this adapter checkpoint's config "
                             f"({ckpt['config']['model']['clip']}) is not the one it was trained on")
        adapters.load_trainable_state_dict(model, ckpt["model"])
        return model
    return model_from_args(ckpt["model_args"], ckpt["model"], where)


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
