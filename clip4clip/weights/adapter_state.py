"""Small checkpoints: only what trains, reloaded onto a model rebuilt the same way.

What ``trainable_state_dict`` holds: every parameter with ``requires_grad`` (state-dict keys,
so ``visual.transformer.resblocks.3.temporal_adapter.fc1.weight``, ``head.*`` ...) and the
persistent buffers of the modules that own such a parameter (e.g. a norm's running stats in
a head), since those change in training too. What it does NOT hold, and the caller must store
beside it to rebuild: the base CLIP name/weights, the head name and arguments, the
``inject_aim`` / ``inject_lora`` arguments and the ``configure_trainable`` flags.

Rebuild: build CLIP -> load pretrained -> CLIP4Clip.from_clip(head) -> inject (same args) ->
configure_trainable (same flags) -> ``load_trainable_state_dict``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Set

import torch
from torch import nn


def trainable_keys(model: nn.Module) -> Set[str]:
    """State-dict keys of trainable parameters and of the persistent buffers of their modules."""
    keys = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        dot = f"{prefix}." if prefix else ""
        keys.update(dot + n for n, _ in own)
        keys.update(dot + n for n, b in module.named_buffers(recurse=False)
                    if b is not None and n not in module._non_persistent_buffers_set)
    return keys


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The part of ``model.state_dict()`` that training changes (see module docstring);
    tensors are detached and share storage with the model (``torch.save`` copies them)."""
    keys = trainable_keys(model)
    return {k: v for k, v in model.state_dict().items() if k in keys}


def trainable_problems(model: nn.Module, state_dict: Mapping[str, torch.Tensor], max_listed: int = 20) -> list:
    """Why ``state_dict`` does not load onto ``model`` as ``load_trainable_state_dict`` would:
    one phrase per kind (missing, unexpected, shape mismatch); [] when it loads. Works on a model
    built on the meta device, so a checkpoint can be checked before anything is allocated."""
    own = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(trainable_keys(model) - set(state_dict))
    unexpected = sorted(str(k) for k in set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k])}"
                    for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k]))

    def listed(keys):
        more = f" ... and {len(keys) - max_listed} more" if len(keys) > max_listed else ""
        return f"{keys[:max_listed]}{more}"
    return [f"{what} ({len(keys)}): {listed(keys)}" for what, keys in
            (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]


def load_trainable_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                              max_listed: int = 20) -> None:
    """Load a ``trainable_state_dict`` onto a model prepared exactly as the saved one was
    (same base, head, injection and ``configure_trainable`` flags), in place.

    Raises ValueError listing the keys when the checkpoint lacks a trainable key of ``model``
    (missing), holds a key ``model`` does not have (unexpected), or a shape differs. Keys of
    frozen parameters that ``model`` has are accepted and loaded (a full state dict works).
    """
    problems = trainable_problems(model, state_dict, max_listed)
    if problems:
        raise ValueError("trainable state dict does not match this model: " + "; ".join(problems) +
                         ". Rebuild the model with the same head, inject_aim/inject_lora arguments and "
                         "configure_trainable flags as when it was saved.")
    model.load_state_dict(state_dict, strict=False)


__all__ = ["trainable_keys", "trainable_problems", "trainable_state_dict", "load_trainable_state_dict"]
