"""CLIP state dicts in OpenAI's layout: cleaned of non-parameters, checked, made into a CLIP.

Every format reader (OpenAI's release, Hugging Face, OpenCLIP, official CLIP4Clip) ends here:
it brings its weights to OpenAI's key names, and ``clip_from_state_dict`` builds the towers
with every key and shape checked.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from ..clip.towers import CLIP, CLIPConfig
from .files import check_state_fits, load_state_checked, read_weights_file, state_shapes

__all__ = ["NON_PARAMETER_KEYS", "check_clip_fits", "clip_from_state_dict", "clip_state_dict", "read_state_dict",
           "with_activation"]

# Buffers OpenAI's TorchScript archives (and, under clip., official CLIP4Clip checkpoints)
# carry that are not parameters of the model.
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read CLIP weights from a TorchScript archive (as released), a plain state-dict file
    (optionally nested under 'state_dict'/'model', optionally with a 'module.' prefix) or a
    safetensors file. Tensors come back in float32. Nothing in the file is executed."""
    path = Path(path)
    return clip_state_dict(read_weights_file(path), path)

def clip_state_dict(sd, path) -> Dict[str, torch.Tensor]:
    """``read_state_dict`` for an object already read from ``path`` (named in errors)."""
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise ValueError(f"{path}: key {k!r:.40} is a {type(k).__name__}; expected parameter names (strings)")
        if k in NON_PARAMETER_KEYS:
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: key {k!r} holds a {type(v).__name__}; expected a tensor (CLIP weights)")
        out[k] = v.float() if torch.is_floating_point(v) else v
    return out

def check_clip_fits(config: CLIPConfig, sd: Mapping[str, torch.Tensor], where: str,
                    names: Optional[Mapping[str, str]] = None) -> None:
    """Refuse, before anything is allocated, an architecture that does not fit an OpenAI-layout
    state dict: first the sizes (``CLIPConfig.size_problems``, fields named as ``names`` maps
    them; the layer counts decide how many modules even a shape-only build makes), then every
    key and shape against ``CLIP(config)`` built on the meta device, which allocates nothing."""
    problems = config.size_problems(sd, names)
    if problems:
        raise ValueError(f"{where}: the architecture does not fit the weights: " + "; ".join(problems))
    with torch.device("meta"):
        shapes = state_shapes(CLIP(config))
    check_state_fits(shapes, sd, where)


def clip_from_state_dict(sd: Mapping[str, torch.Tensor], config: Optional[CLIPConfig] = None,
                         where: Optional[str] = None) -> CLIP:
    """Build a CLIP (architecture ``config``, or inferred from ``sd``'s shapes) and load ``sd``
    with every key and shape checked. ``where`` (the file) is named in errors. Nothing is
    allocated before the architecture is known to fit the weights (``check_clip_fits``)."""
    inferred = config is None
    where = where or "CLIP weights"
    config = config or CLIPConfig.from_state_dict(sd, where)
    how = "inferred from their shapes" if inferred else "from their config"
    label = f"{where} (architecture {how}: width {config.vision_width}, {config.vision_layers} layers)"
    check_clip_fits(config, sd, label)
    model = CLIP(config)
    load_state_checked(model, sd, label)
    return model

def with_activation(config: CLIPConfig, activation: Optional[str], source: Optional[str]) -> CLIPConfig:
    """``config`` with an explicitly chosen activation. ``source``: what ``config.activation``
    was read from (None: nothing said it, so there is nothing to contradict). A choice that
    contradicts the checkpoint is allowed, with a warning: the features stay plausible, but worse."""
    if activation is None or activation == config.activation:
        return config
    if source is not None:
        warnings.warn(f"activation={activation!r} overrides {config.activation!r} from {source}: if the checkpoint "
                      "was trained with the latter, features will look plausible but retrieval will be worse",
                      stacklevel=3)
    return replace(config, activation=activation)
