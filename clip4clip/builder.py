"""Thin builder from plain config mappings to model and tokenizer objects.

The only place that turns configuration into constructor calls for the model package; the
model classes themselves take plain arguments. Accepts dicts or OmegaConf containers.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from .clip import CLIP, CLIPConfig
from .heads import DEFAULT_HEAD
from .model import CLIP4Clip
from .tokenizer import ClipTokenizer, WordTokenizer


def to_plain(cfg: Any) -> dict:
    """A config section (dict or OmegaConf container, resolved) as a plain dict."""
    if cfg is None:
        return {}
    try:  # OmegaConf containers -> plain dicts without importing omegaconf here
        from omegaconf import OmegaConf
        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def build_tokenizer(model_cfg: Mapping, train_texts: Optional[Sequence[str]] = None,
                    state: Optional[dict] = None):
    """``model.tokenizer``: 'clip' (CLIP's BPE; vocabulary resolved at run time) or 'word'
    (vocabulary built from the training captions, or restored from a checkpoint's state)."""
    cfg = to_plain(model_cfg)
    kind = cfg.get("tokenizer", "clip")
    if kind == "clip":
        return ClipTokenizer(vocab_path=cfg.get("bpe_vocab"), cache_dir=(cfg.get("clip") or {}).get("cache_dir"))
    if kind == "word":
        if state is not None:
            return WordTokenizer.from_state_dict(state)
        if train_texts is None:
            raise ValueError("model.tokenizer=word needs the training captions to build its vocabulary")
        return WordTokenizer.build(train_texts)
    raise ValueError(f"model.tokenizer={kind!r}; expected 'clip' or 'word'")


def tokenizer_state(tokenizer) -> dict:
    return tokenizer.state_dict() if isinstance(tokenizer, WordTokenizer) else {"kind": "clip"}


def head_kwargs(model_cfg: Mapping) -> tuple:
    head = dict(to_plain(model_cfg).get("head") or {})
    name = head.pop("name", None) or DEFAULT_HEAD
    return name, head


def apply_adapters(model: CLIP4Clip, adapter_cfg: Optional[Mapping]) -> Optional[dict]:
    """Inject AIM adapters / text LoRA and freeze the rest as ``adapter`` config says.
    Returns the parameter summary, or None for ``adapter.name: none``."""
    cfg = to_plain(adapter_cfg)
    if not cfg or cfg.get("name", "none") == "none":
        return None
    import adapters  # only needed when adapters are configured

    aim = cfg.get("aim")
    if aim:
        aim = dict(aim)
        adapters.inject_aim(model.clip.visual, num_frames=int(aim.pop("num_frames")), **aim)
    lora = cfg.get("lora")
    if lora:
        lora = dict(lora)
        if "targets" in lora:
            lora["targets"] = tuple(lora["targets"])
        adapters.inject_lora(model.clip.transformer, **lora)
    train = {f"train_{k}": bool(v) for k, v in dict(cfg.get("train") or {}).items()}
    return adapters.configure_trainable(model, **train)


def model_args(model: CLIP4Clip, model_cfg: Mapping, adapter_cfg: Optional[Mapping] = None) -> dict:
    """What is needed to rebuild the architecture without the pretrained file (nanoGPT-style)."""
    name, kwargs = head_kwargs(model_cfg)
    return {"clip": model.clip.config.to_dict(), "head": name, "head_kwargs": kwargs,
            "adapter": to_plain(adapter_cfg) or {"name": "none"}}


def model_from_args(args: Mapping) -> CLIP4Clip:
    """The architecture ``model_args`` describe (CLIP, head, adapters injected), randomly
    initialised; ``weights.model_with_state`` loads a checkpoint's state dict onto it."""
    clip = CLIP(CLIPConfig.from_dict(args["clip"]))
    model = CLIP4Clip.from_clip(clip, args["head"], init_head_from_clip=False, **dict(args.get("head_kwargs") or {}))
    apply_adapters(model, args.get("adapter"))
    return model


def arch_clip(clip_cfg: Mapping, vocab_size: Optional[int] = None) -> CLIP:
    """``model.clip.arch`` (CLIPConfig fields): a randomly initialised CLIP, with the
    ``vision_pos_init_std`` and ``logit_scale_init`` options applied."""
    arch = dict(clip_cfg["arch"])
    if clip_cfg.get("activation"):
        arch["activation"] = clip_cfg["activation"]
    if vocab_size is not None:
        arch["vocab_size"] = vocab_size
    clip = CLIP(CLIPConfig.from_dict(arch))
    if clip_cfg.get("vision_pos_init_std"):
        # OpenAI's init (std width^-0.5, ~0.09) leaves positions a few % of the patch content
        # after ln_pre: fine with 400M pairs, too faint for a small model to learn where
        # things are in a few thousand steps.
        torch.nn.init.normal_(clip.visual.positional_embedding, std=float(clip_cfg["vision_pos_init_std"]))
    if clip_cfg.get("logit_scale_init"):
        # CLIP starts at 1/0.07 (~14). A from-scratch model whose captions differ in one word
        # (left/right) needs the sharper softmax to feel those few hard negatives early.
        value = float(clip_cfg["logit_scale_init"])
        if not 1.0 <= value <= 100.0:
            raise ValueError(f"model.clip.logit_scale_init={value}: expected a scale in [1, 100] "
                             "(logits are clamped at 100)")
        clip.logit_scale.data.fill_(math.log(value))
    return clip


__all__ = ["apply_adapters", "arch_clip", "build_tokenizer", "head_kwargs", "model_args", "model_from_args",
           "to_plain", "tokenizer_state"]
