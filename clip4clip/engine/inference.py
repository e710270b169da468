"""Turn any checkpoint argument into a model and its tokenizer, for evaluation and search.

``checkpoint`` may be one of our training checkpoints, an official CLIP4Clip
``pytorch_model.bin.N``, a released CLIP name (``ViT-B/32``: zero-shot, meanP) or a CLIP
weights file. Shared by ``evaluate.py`` and ``python -m clip4clip.search`` so both read
checkpoints the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from ..checkpoints import read_torch_file
from ..builder import build_tokenizer, load_model_from_checkpoint
from ..clip import PRETRAINED, clip_from_state_dict, clip_state_dict, load_clip
from ..model import CLIP4Clip
from .checkpoint import is_framework_checkpoint


def load_any(ckpt_arg: str) -> Tuple[str, Any]:
    """-> (kind, payload): 'ours' (checkpoint dict), 'official' (state dict), 'clip' (CLIP)."""
    if ckpt_arg in PRETRAINED:
        return "clip", load_clip(ckpt_arg)
    path = Path(ckpt_arg).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={ckpt_arg}: no such file, and not a released CLIP name "
                                f"{list(PRETRAINED)}")
    obj = read_torch_file(path, "checkpoint")  # never runs code from the file
    if is_framework_checkpoint(obj):
        return "ours", obj
    if isinstance(obj, dict) and any(str(k).startswith("clip.") for k in obj):
        return "official", obj
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        sd = clip_state_dict(obj, path)  # TorchScript archives arrive here as their state dict
        if "visual.proj" in sd:
            return "clip", clip_from_state_dict(sd)
    raise ValueError(f"checkpoint={path} is none of: a checkpoint of this framework, an official "
                     f"CLIP4Clip checkpoint (keys 'clip.*'), CLIP weights (keys 'visual.*')")


def model_and_tokenizer(kind: str, payload: Any, model_cfg: Mapping,
                        source: Optional[str] = None) -> Tuple[CLIP4Clip, Any]:
    """The model and tokenizer of a ``load_any`` result. ``model_cfg`` is the ``model`` config
    the tokenizer is built from (BPE vocabulary location); our checkpoints bring their own word
    vocabulary, the other kinds always use CLIP's BPE."""
    if kind == "ours":
        model = load_model_from_checkpoint(payload, source)
        tok_state = payload.get("tokenizer") or {"kind": "clip"}
        tokenizer = build_tokenizer(model_cfg, state=tok_state if tok_state["kind"] != "clip" else None)
    elif kind == "official":
        model = CLIP4Clip.from_official_checkpoint(payload, where=source)
        tokenizer = build_tokenizer({**model_cfg, "tokenizer": "clip"})
    elif kind == "clip":
        model = CLIP4Clip.from_clip(payload, "meanP")
        tokenizer = build_tokenizer({**model_cfg, "tokenizer": "clip"})
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected 'ours', 'official' or 'clip'")
    return model, tokenizer
