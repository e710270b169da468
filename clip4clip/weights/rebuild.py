"""A CLIP4Clip rebuilt from a checkpoint's ``model_args`` with its full state dict, every key checked.

Shared by our checkpoints and exported folders, which store the same two things. ``model_args``
is checked in three steps before any memory is committed to what it declares: its schema
(``builder.model_args_problems``), its sizes against the weights' shapes (the CLIP's fields,
and the head's block count: those decide how many modules even a shape-only build makes), then
every key and shape against the model built on the meta device.
"""
from __future__ import annotations

import re
from dataclasses import fields
from typing import List, Mapping, Optional

import torch

from ..builder import model_args_problems, model_from_args
from ..clip import CLIPConfig
from ..model import CLIP4Clip
from .files import check_state_fits, load_state_checked, state_shapes

__all__ = ["HEAD_LAYER_ARGS", "check_model_args", "head_layer_problems", "meta_model", "model_with_state"]

# Head arguments that set how many blocks a head stacks (seqTransf / frameweight: num_blocks,
# tightTransf: num_layers). Each head has one stack, ``head.<...>.resblocks.N``.
HEAD_LAYER_ARGS = ("num_blocks", "num_layers")
_HEAD_BLOCK_RE = re.compile(r"head\.(?:.+\.)?resblocks\.(\d+)\.")


def head_layer_problems(head_kwargs: Mapping, state_dict: Mapping, prefix: str) -> List[str]:
    """A head's declared block count (``HEAD_LAYER_ARGS``) against the blocks ``head.*`` keys
    of ``state_dict`` hold; one phrase per disagreement, naming ``prefix + argument``."""
    blocks = {m.group(1) for k in state_dict if isinstance(k, str) and (m := _HEAD_BLOCK_RE.match(k))}
    return [f"{prefix}{arg} is {head_kwargs[arg]} but the weights hold {len(blocks)} head blocks "
            "(head.*.resblocks.N)" for arg in HEAD_LAYER_ARGS
            if isinstance(head_kwargs.get(arg), int) and head_kwargs[arg] != len(blocks)]


def check_model_args(args: Mapping, state_dict: Mapping, where: str, prefix: str = "model_args") -> None:
    """Refuse ``model_args`` that are malformed or declare sizes the full ``state_dict``
    contradicts: one ValueError line naming ``where`` and each field."""
    problems = model_args_problems(args, prefix)
    if problems:
        raise ValueError(f"{where}: malformed {prefix}: " + "; ".join(problems))
    clip_sd = {k[len("clip."):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith("clip.")}
    names = {f.name: f"{prefix}.clip.{f.name}" for f in fields(CLIPConfig)}
    problems = CLIPConfig.from_dict(args["clip"]).size_problems(clip_sd, names)
    problems += head_layer_problems(args.get("head_kwargs") or {}, state_dict, f"{prefix}.head_kwargs.")
    if problems:
        raise ValueError(f"{where}: {prefix} do not describe the weights: " + "; ".join(problems))


def meta_model(args: Mapping, where: str) -> CLIP4Clip:
    """``model_from_args(args)`` on the meta device (shapes only). The heads and adapters check
    some of their arguments themselves (a frameweight temperature > 0, heads dividing the
    width): their ValueError gets the file's name."""
    try:
        return model_from_args(args, device="meta")
    except ValueError as e:
        raise ValueError(f"{where}: model_args do not describe a model: {e}") from e


def model_with_state(args: Mapping, state_dict: Mapping[str, torch.Tensor], where: Optional[str] = None) -> CLIP4Clip:
    """``builder.model_from_args(args)`` (architecture, adapters injected) with ``state_dict``
    loaded strictly, after ``check_model_args`` and a key/shape check against the meta-device
    model. ``where`` (the file) is named in errors."""
    where = where or "checkpoint"
    check_model_args(args, state_dict, where)
    label = f"{where} (a {args['head']} model as its model_args describe)"
    check_state_fits(state_shapes(meta_model(args, where)), state_dict, label)
    model = model_from_args(args)
    load_state_checked(model, state_dict, label)
    return model
