"""Checkpoints written by the official CLIP4Clip trainer (``pytorch_model.bin.N``).

They are ``torch.save(model.state_dict())``: CLIP under ``clip.`` in float16, the head's
modules in float32 under CLIP4Clip's names. Each head says which keys are its own
(``Head.official_prefixes`` / ``official_keys``) and how they map to its parameters
(``convert_official``), so nothing here branches on the head type.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Union

import torch

from ..clip import CLIP
from ..heads import DEFAULT_HEAD, HEADS
from ..model import CLIP4Clip
from .clip_state import NON_PARAMETER_KEYS, clip_from_state_dict
from .files import check_state_fits, load_state_checked, read_torch_file, state_shapes

def detect_official_head(non_clip_sd: Mapping[str, torch.Tensor]) -> str:
    """Which head wrote these non-CLIP keys: the first in ``HEADS`` whose markers
    (``official_markers``, else ``official_prefixes``) it finds; the default head when none.
    A DRL ``ti``/``dp`` checkpoint has no keys of its own (it is key for key a CLIP4Clip
    seqTransf/meanP one), so it is read as that unless the head is named."""
    for name, head_cls in HEADS.items():
        markers = head_cls.official_markers or head_cls.official_prefixes
        if markers and any(k.startswith(markers) for k in non_clip_sd):
            return name
    return DEFAULT_HEAD


def load_official_checkpoint(path: Union[str, os.PathLike, Mapping], where: Optional[str] = None,
                             head: Optional[str] = None, **head_kwargs) -> CLIP4Clip:
    """A model from a checkpoint of the official CLIP4Clip, DRL, X-CLIP or TS2-Net trainer (or
    its state dict). The head is detected from the keys (``detect_official_head``:
    ``text_weight_fc.*`` -> drl, ``transformerClip.*`` -> seqTransf, ``lstm_visual.*`` ->
    seqLSTM, ``cross.*`` / ``similarity_dense.*`` -> tightTransf, none -> meanP) unless ``head``
    names it; ``head_kwargs`` override what is read off the keys. Every key must be used."""
    sd = path if isinstance(path, Mapping) else _read(path)
    where = where or ("checkpoint" if isinstance(path, Mapping) else str(path))
    odd = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"{where}: keys {[str(k) for k in odd[:5]]} are not names of tensors; expected a state dict "
                         "of tensors")
    clip_sd = {k[len("clip."):]: v.float() if torch.is_floating_point(v) else v
               for k, v in sd.items() if k.startswith("clip.") and k[len("clip."):] not in NON_PARAMETER_KEYS}
    rest = {k: v for k, v in sd.items() if not k.startswith("clip.")}
    if not clip_sd:
        raise ValueError(f"{where} has no 'clip.*' keys: not an official CLIP4Clip checkpoint "
                         f"(first keys: {sorted(sd)[:5]})")
    if head is not None and head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {sorted(HEADS)}")
    head_name = head or detect_official_head(rest)
    clip_sd = HEADS[head_name].convert_official_clip(clip_sd)
    kwargs = {**_official_kwargs(head_name, rest, where), **head_kwargs}
    try:
        clip = clip_from_state_dict(clip_sd)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{where}: the 'clip.*' weights do not form a CLIP model: {e}") from e
    # The head on the meta device first: its block count comes from the keys, so the shapes are
    # compared before the real head allocates width^2-sized blocks for each of them.
    with torch.device("meta"):
        probe = CLIP4Clip.from_clip(CLIP(clip.config), head_name, init_head_from_clip=False, **kwargs)
    unknown = sorted(set(rest) - probe.head.official_keys(rest))
    if unknown:
        raise ValueError(f"{where}: unexpected keys for a {head_name} checkpoint: {unknown}")
    converted = {k: v.float() for k, v in probe.head.convert_official(rest).items()}
    check_state_fits(state_shapes(probe.head), converted, f"{where} ({head_name} head)")
    model = CLIP4Clip.from_clip(clip, head_name, init_head_from_clip=False, **kwargs)
    load_state_checked(model.head, converted, f"{where} ({head_name} head)")
    return model


def _official_kwargs(head_name: str, rest: Mapping[str, torch.Tensor], where: str) -> dict:
    """The head's constructor arguments read off its keys; a key the head needs for that being
    absent (or not the shape it reads) is named with the file."""
    try:
        return HEADS[head_name].official_kwargs(rest)
    except KeyError as e:  # the heads index the state dict directly
        raise ValueError(f"{where}: a {head_name} checkpoint without '{e.args[0]}'") from e
    except IndexError as e:  # a 0-d tensor where a table was expected
        raise ValueError(f"{where}: a {head_name} checkpoint whose head tensors have the wrong shape ({e})") from e


def _read(path) -> Dict[str, torch.Tensor]:
    sd = read_torch_file(path, "CLIP4Clip checkpoint")  # never runs code from the file
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


__all__ = ["detect_official_head", "load_official_checkpoint"]
