"""Our own checkpoints: the dict ``train.py`` writes (format ``FORMAT``), run folders, and the
models rebuilt from them (full, or adapter-only on top of their base CLIP).

Writing checkpoints (atomic saves, RNG state, the best/last pair) is the training engine's
(``engine/saving.py``); it takes ``FORMAT`` and ``checkpoint_file`` from here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..builder import (apply_adapters, head_kwargs, kwargs_problems, model_args_problems, to_plain,
                       tokenizer_state_problems)
from ..clip import CLIPConfig
from ..heads import HEADS
from ..model import CLIP4Clip
from .adapter_state import load_trainable_state_dict, trainable_problems
from .exported import is_exported_folder, read_export
from .files import SECTION, Field, field_problems, nullable, read_torch_file
from .initial import build_model
from .rebuild import head_layer_problems, meta_model, model_with_state

FORMAT = "clip4clip-framework/1"
#: What a run folder holds, in the order a checkpoint argument takes them.
RUN_CHECKPOINTS = ("best.pt", "last.pt")

__all__ = ["FORMAT", "RUN_CHECKPOINTS", "check_checkpoint", "checkpoint_file", "checkpoint_problems",
           "exported_checkpoint", "is_framework_checkpoint", "load_checkpoint", "load_model_from_checkpoint",
           "read_init_checkpoint"]

# The fields of our checkpoint dicts that loading reads besides 'model' and 'model_args'
# (which ``checkpoint_problems`` checks itself), with what each must be.
_SCHEMA = {"config": nullable(SECTION), "state": nullable(SECTION),
           "weights": nullable(Field(lambda v: v in ("full", "trainable"), "'full' or 'trainable'"))}


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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def checkpoint_problems(ckpt: Mapping, rebuild: bool = True) -> List[str]:
    """What is wrong with one of our checkpoint dicts, one phrase per field, [] when nothing
    is: 'model' must be a state dict (names -> tensors), 'config'/'state' mappings, 'weights'
    'full' or 'trainable', 'tokenizer' a tokenizer state; with ``rebuild`` (the model is to be
    rebuilt from it) 'model_args' must be there and well-formed, and an adapter-only
    checkpoint must name its base CLIP in config.model. Nothing is compared with the weights
    here (``rebuild.check_model_args`` does that)."""
    problems = field_problems(ckpt, _SCHEMA)
    model = ckpt.get("model")
    if model is None or not _is_state_dict(model):
        problems.append("'model' (the state dict) is missing" if model is None else
                        f"'model' is a {type(model).__name__} that is not a state dict (parameter names -> tensors)")
    problems += tokenizer_state_problems(ckpt.get("tokenizer"), "'tokenizer'")
    if "model_args" in ckpt or rebuild:
        problems += (model_args_problems(ckpt["model_args"]) if "model_args" in ckpt else
                     ["'model_args' is missing, so the model cannot be rebuilt"])
    if rebuild and ckpt.get("weights") == "trainable" and not problems:
        mcfg = (ckpt.get("config") or {}).get("model")
        if not isinstance(mcfg, Mapping) or not isinstance(mcfg.get("clip"), Mapping):
            problems.append("'config.model.clip' is missing (an adapter-only checkpoint needs its base CLIP named)")
        else:
            problems += _config_head_problems(mcfg)
    return problems


def _config_head_problems(mcfg: Mapping) -> List[str]:
    """config.model.head of an adapter-only checkpoint, which its head is rebuilt from."""
    head = mcfg.get("head") or {}
    if not isinstance(head, Mapping):
        return [f"config.model.head is a {type(head).__name__} (expected a mapping)"]
    name, kwargs = head_kwargs(mcfg)
    if name not in HEADS:
        return [f"config.model.head.name={name!r:.40} (expected one of {sorted(HEADS)})"]
    return kwargs_problems(HEADS[name].__init__, kwargs, "config.model.head.", ("width",))


def check_checkpoint(ckpt: Any, where: str, rebuild: bool = True) -> None:
    """Refuse a malformed checkpoint dict of ours (``checkpoint_problems``): one ValueError line
    naming ``where`` and every bad field."""
    if not is_framework_checkpoint(ckpt):
        raise ValueError(f"{where} is not a checkpoint written by this framework "
                         f"(expected a dict with format '{FORMAT}')")
    problems = checkpoint_problems(ckpt, rebuild)
    if problems:
        raise ValueError(f"{where}: malformed checkpoint: " + "; ".join(problems))


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """One of our training checkpoints, as the dict ``train.py`` wrote (an exported folder
    comes back in the same shape), its fields checked (``checkpoint_problems``; 'model_args'
    only if present: resuming does not need it)."""
    path = Path(path)
    if path.is_dir() and is_exported_folder(path):
        return exported_checkpoint(path)
    ckpt = read_torch_file(path, "checkpoint")
    check_checkpoint(ckpt, str(path), rebuild=False)
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
    ``where`` (the file) is named in errors. Every field is checked first (``check_checkpoint``),
    and every size ``model_args`` declares against the weights before anything is built."""
    where = where or "checkpoint"
    check_checkpoint(ckpt, where)
    if ckpt.get("weights") == "trainable":
        return _trainable_model(ckpt, where)
    return model_with_state(ckpt["model_args"], ckpt["model"], where)


def _trainable_model(ckpt: Mapping, where: str) -> CLIP4Clip:
    """An adapter-only checkpoint's model: the base CLIP and head its config names (the CLIP
    bounded by its own file), checked to be the CLIP ``model_args`` describe; then its adapters,
    whose sizes are compared with the checkpoint's keys on a meta-device build before the real
    model allocates them."""
    args, mcfg = ckpt["model_args"], ckpt["config"]["model"]
    layers = head_layer_problems(head_kwargs(mcfg)[1], ckpt["model"], "config.model.head.")
    if layers:
        raise ValueError(f"{where}: config.model.head does not describe the weights: " + "; ".join(layers))
    model = build_model(mcfg, vocab_size=args["clip"]["vocab_size"], init_state=read_init_checkpoint(mcfg))
    if model.clip.config != CLIPConfig.from_dict(args["clip"]):
        raise ValueError(f"{where}: the base CLIP named in this adapter checkpoint's config "
                         f"({mcfg['clip'].get('pretrained') or 'model.clip.arch'}) is not the one it was trained on")
    # Safe to build on meta now: model_args' CLIP is the one just loaded, so its layer counts are real.
    problems = trainable_problems(meta_model(args, where), ckpt["model"])
    if problems:
        raise ValueError(f"{where}: the adapter weights do not fit the model its model_args describe: "
                         + "; ".join(problems))
    apply_adapters(model, args.get("adapter"))
    load_trainable_state_dict(model, ckpt["model"])
    return model
