"""A new run's model and its first weights: a released or local CLIP, a finished run
(``model.init_checkpoint``), or a random ``model.clip.arch``."""
from __future__ import annotations

from typing import Mapping, Optional

from ..builder import apply_adapters, arch_clip, head_kwargs, to_plain
from ..clip import CLIP, CLIPConfig
from ..model import CLIP4Clip
from .clip_state import check_clip_fits
from .clip_weights import load_clip
from .files import load_state_checked

__all__ = ["build_model"]


def build_model(model_cfg: Mapping, vocab_size: Optional[int] = None,
                adapter_cfg: Optional[Mapping] = None, init_state: Optional[Mapping] = None) -> CLIP4Clip:
    """Model from ``model`` config: ``clip.pretrained`` (released name or file) or
    ``clip.arch`` (CLIPConfig fields, random init; vocab_size taken from the tokenizer),
    ``head`` ({name, **kwargs}), ``init_head_from_clip``, ``grad_checkpointing``; then the
    ``adapter`` config (AIM / LoRA injection and freezing) if given.

    ``init_state``: what ``checkpoints.read_init_checkpoint(model_cfg)`` returns for
    ``model.init_checkpoint`` (e.g. a finished run that adapters are now added to):
    ``{"model": full CLIP4Clip state dict, "clip": its CLIPConfig dict or None}``; loaded
    before injection."""
    cfg = to_plain(model_cfg)
    clip_cfg = cfg.get("clip") or {}
    if init_state is not None:
        clip = _init_clip(init_state)
        init_from_clip = False
    elif clip_cfg.get("pretrained"):
        clip = load_clip(clip_cfg["pretrained"], cache_dir=clip_cfg.get("cache_dir"),
                         activation=clip_cfg.get("activation"))
        init_from_clip = cfg.get("init_head_from_clip", True)
    elif clip_cfg.get("arch"):
        clip = arch_clip(clip_cfg, vocab_size)
        init_from_clip = False  # nothing learned to copy from a random CLIP
    else:
        raise ValueError("model.clip needs either 'pretrained' (e.g. ViT-B/32 or a file) or 'arch'")
    name, kwargs = head_kwargs(cfg)
    model = CLIP4Clip.from_clip(clip, name, init_head_from_clip=init_from_clip, **kwargs)
    if init_state is not None:
        _load_init_state(model, init_state["model"], init_state.get("path"))
    apply_adapters(model, adapter_cfg)
    model.clip.set_grad_checkpointing(bool(cfg.get("grad_checkpointing", False)))
    return model


def _init_clip(init_state: Mapping) -> CLIP:
    """The CLIP of ``model.init_checkpoint``, built from the checkpoint's own config (head counts
    cannot be read off the weights, and guessing OpenAI's width/64 would silently re-split a
    small model's attention: 4 heads -> 1), after that config is checked against its weights."""
    where = f"model.init_checkpoint={init_state.get('path')}"
    clip_sd = {k[len("clip."):]: v for k, v in init_state["model"].items() if k.startswith("clip.")}
    saved = init_state.get("clip")
    config = CLIPConfig.from_dict(dict(saved)) if saved else CLIPConfig.from_state_dict(clip_sd, where)
    check_clip_fits(config, clip_sd, where, {f: f"model_args.clip.{f}" for f in config.to_dict()})
    return CLIP(config)


def _load_init_state(model: CLIP4Clip, init_state: Mapping, where: Optional[str] = None) -> None:
    """CLIP weights must match exactly; the head's only if it is the same kind of head."""
    own = model.state_dict()
    head_ok = all(k in own and own[k].shape == v.shape for k, v in init_state.items() if k.startswith("head."))
    wanted = {k: v for k, v in init_state.items() if k.startswith("clip.") or head_ok}
    # Adapters are injected after this load, so only CLIP's own weights must all be there.
    load_state_checked(model, wanted, f"model.init_checkpoint={where}" if where else "model.init_checkpoint",
                       allow_missing=lambda k: not k.startswith("clip."))
