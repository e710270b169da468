"""Released OpenAI CLIP weights: registry, cache resolution and loading.

Architecture (``CLIPConfig``) and weights are separate: a name resolves to a file in the
cache (downloaded with a SHA256 check if missing), and the architecture is read off the
weights' shapes, so any ViT CLIP file loads the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from ..download import default_cache_dir, ensure_file
from .model import CLIP, CLIPConfig

_BASE_URL = "https://openaipublic.azureedge.net/clip/models"

# name -> (sha256 of the file, which is also the folder in the URL; file name)
PRETRAINED: Dict[str, tuple] = {
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}

# Buffers OpenAI's TorchScript archives carry that are not parameters of the model.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def available_models() -> list:
    return list(PRETRAINED)


def pretrained_url(name: str) -> str:
    sha, fname = PRETRAINED[name]
    return f"{_BASE_URL}/{sha}/{fname}"


def resolve_clip_file(name_or_path: Union[str, os.PathLike], cache_dir=None,
                      progress: bool = True) -> Path:
    """A released name -> its file in the cache (downloaded and checked if missing);
    anything else must be an existing file."""
    name = str(name_or_path)
    if name in PRETRAINED:
        sha, fname = PRETRAINED[name]
        return ensure_file(pretrained_url(name), default_cache_dir(cache_dir) / fname,
                           sha256=sha, progress=progress)
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights '{name}' are neither a released model name {available_models()} "
            f"nor an existing file")
    return path


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read CLIP weights from a TorchScript archive (as released) or a plain state-dict file
    (optionally nested under 'state_dict'/'model', optionally with a 'module.' prefix).
    Tensors come back in float32. Nothing in the file is executed (``checkpoints.read_torch_file``)."""
    from ..checkpoints import read_torch_file

    path = Path(path)
    return clip_state_dict(read_torch_file(path, "CLIP weights file"), path)


def clip_state_dict(sd, path) -> Dict[str, torch.Tensor]:
    """``read_state_dict`` for an object already read from ``path`` (named in errors)."""
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        if k in _NON_PARAMETER_KEYS:
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: key {k!r} holds a {type(v).__name__}; expected a tensor (CLIP weights)")
        out[k] = v.float() if torch.is_floating_point(v) else v
    return out


def clip_from_state_dict(sd: Mapping[str, torch.Tensor], config: Optional[CLIPConfig] = None) -> CLIP:
    """Build a CLIP whose architecture is inferred from ``sd`` and load it with strict=True."""
    config = config or CLIPConfig.from_state_dict(sd)
    from ..checkpoints import load_state_checked

    model = CLIP(config)
    load_state_checked(model, sd, f"CLIP weights (architecture inferred from their shapes: "
                                  f"width {config.vision_width}, {config.vision_layers} layers)")
    return model


def load_clip(name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
              cache_dir=None, progress: bool = True) -> CLIP:
    """Load released or saved CLIP weights into float32 parameters.

    Args:
        name_or_path: 'ViT-B/32', 'ViT-B/16', 'ViT-L/14', 'ViT-L/14@336px' or a file path.
        device: where to put the model.
        cache_dir: download cache (default $CLIP4CLIP_CACHE_DIR or ~/.cache/clip).
    """
    path = resolve_clip_file(name_or_path, cache_dir=cache_dir, progress=progress)
    return clip_from_state_dict(read_state_dict(path)).to(device)
