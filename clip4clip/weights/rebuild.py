"""A CLIP4Clip rebuilt from a checkpoint's ``model_args`` with its full state dict, every key checked.

Shared by our checkpoints and exported folders, which store the same two things.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..builder import model_from_args
from ..model import CLIP4Clip
from .files import load_state_checked

__all__ = ["model_with_state"]


def model_with_state(args: Mapping, state_dict: Mapping[str, torch.Tensor], where: Optional[str] = None) -> CLIP4Clip:
    """``builder.model_from_args(args)`` (architecture, adapters injected) with ``state_dict``
    loaded strictly. ``where`` (the file) is named in errors."""
    model = model_from_args(args)
    load_state_checked(model, state_dict, f"{where or 'checkpoint'} (a {args['head']} model as its "
                                          "model_args describe)")
    return model
