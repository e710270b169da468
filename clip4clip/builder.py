"""Thin builder from plain config mappings to model and tokenizer objects.

The only place that turns configuration into constructor calls for the model package; the
model classes themselves take plain arguments. Accepts dicts or OmegaConf containers.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import fields
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch

from .clip import CLIP, CLIPConfig, clip_config_problems
from .heads import DEFAULT_HEAD, HEADS
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


def tokenizer_state_problems(state: Any, prefix: str = "tokenizer") -> List[str]:
    """What keeps ``state`` (a checkpoint's ``tokenizer``, as ``tokenizer_state`` wrote it; None
    means CLIP's BPE) from building a tokenizer; one phrase each, [] when it builds."""
    if state is None:
        return []
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind == "clip":
        return []
    if kind != "word":
        return [f"{prefix} is {state!r:.60} (expected {{'kind': 'clip'}} or a word tokenizer's state)"]
    return [f"{prefix}: {p}" for p in WordTokenizer.state_problems(dict(state))]


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


def model_from_args(args: Mapping, device: Optional[str] = None) -> CLIP4Clip:
    """The architecture ``model_args`` describe (CLIP, head, adapters injected), randomly
    initialised; ``weights.model_with_state`` loads a checkpoint's state dict onto it.

    ``device="meta"``: the same model with shapes only, nothing allocated, so a checkpoint's
    keys and shapes can be compared with what its ``model_args`` declare before any memory is
    committed to them (the layer counts must be known to be sane first: they decide how many
    modules even a meta build makes)."""
    with torch.device(device) if device else contextlib.nullcontext():
        clip = CLIP(CLIPConfig.from_dict(args["clip"]))
        model = CLIP4Clip.from_clip(clip, args["head"], init_head_from_clip=False,
                                    **dict(args.get("head_kwargs") or {}))
    # Outside the device context: adapters take their blocks' device anyway, and AIM computes its
    # drop-path schedule with torch.linspace(...).tolist(), which a meta default device cannot answer.
    apply_adapters(model, args.get("adapter"))
    return model


# ----------------------------------------------------------------------------- model_args schema

def _expected_type(param: inspect.Parameter) -> Optional[str]:
    """'int', 'float', 'bool', 'str' or 'strings' for a constructor argument, from its default
    (or, for a default of None or none, its annotation); None when neither says."""
    default = param.default
    if default is not param.empty and default is not None:
        for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), ((list, tuple), "strings")):
            if isinstance(default, kind):
                return name
    ann = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    ann = ann.removeprefix("Optional[").removesuffix("]")
    return {"int": "int", "float": "float", "bool": "bool", "str": "str", "Sequence[str]": "strings"}.get(ann)


# What a value of each expected type must be. Every int argument of the heads and adapters is
# a count or a size (blocks, heads, positions, frames, rank), so it must be >= 1; every float
# a rate, scale or ratio, so finite and >= 0.
_VALUE_RULES = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
              "a number >= 0"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "strings": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def kwargs_problems(fn: Callable, kwargs: Any, prefix: str, skip: Sequence[str] = ()) -> List[str]:
    """What is wrong with ``kwargs`` as arguments of ``fn`` (a head class's ``__init__``,
    ``adapters.inject_aim``...): unknown names, required ones missing, and values whose type
    or range does not fit the argument (``_expected_type``); one phrase each, prefixed with
    ``prefix`` (the field's place in the file, e.g. ``model_args.head_kwargs.``)."""
    if not isinstance(kwargs, Mapping):
        return [f"{prefix.rstrip('.')} is a {type(kwargs).__name__} (expected a mapping of arguments)"]
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    problems = [f"{prefix}{k} is not an argument it takes (it takes {sorted(params)})"
                for k in kwargs if k not in params]
    problems += [f"{prefix}{n} is missing" for n, p in params.items() if p.default is p.empty and n not in kwargs]
    for name, value in kwargs.items():
        expected = _expected_type(params[name]) if name in params else None
        nullable = name in params and params[name].default is None
        if expected and not (value is None and nullable) and not _VALUE_RULES[expected][0](value):
            problems.append(f"{prefix}{name}={value!r:.40} (expected {_VALUE_RULES[expected][1]})")
    return problems


def _adapter_problems(cfg: Any, prefix: str) -> List[str]:
    """The ``adapter`` section: its ``aim`` / ``lora`` arguments and ``train`` flags, as
    ``apply_adapters`` passes them on."""
    if cfg is None:
        return []
    if not isinstance(cfg, Mapping):
        return [f"{prefix.rstrip('.')} is a {type(cfg).__name__} (expected a mapping)"]
    if cfg.get("name", "none") == "none":
        return []
    import adapters  # only needed when adapters are configured

    problems = []
    for section, fn, skip in (("aim", adapters.inject_aim, ("vision_tower",)),
                              ("lora", adapters.inject_lora, ("text_transformer",))):
        if cfg.get(section):
            problems += kwargs_problems(fn, cfg[section], f"{prefix}{section}.", skip)
    train = cfg.get("train") or {}
    flags = {f"train_{k}": v for k, v in train.items()} if isinstance(train, Mapping) else train
    problems += [p.replace(f"{prefix}train.train_", f"{prefix}train.")
                 for p in kwargs_problems(adapters.configure_trainable, flags, f"{prefix}train.", ("model",))]
    return problems


def model_args_problems(args: Any, prefix: str = "model_args") -> List[str]:
    """What is wrong with a checkpoint's ``model_args`` (what ``model_args`` writes and
    ``model_from_args`` reads): types and ranges of the CLIP fields, the head's name and
    arguments, the adapter's; one phrase each, naming the field; [] when nothing is. Nothing
    is compared with the weights here (``weights.rebuild`` does that)."""
    if not isinstance(args, Mapping):
        return [f"{prefix} is a {type(args).__name__} (expected a mapping with clip, head, head_kwargs, adapter)"]
    clip = args.get("clip")
    if not isinstance(clip, Mapping):
        problems = [f"{prefix}.clip is " + ("missing" if clip is None else f"a {type(clip).__name__}")]
    else:
        known = {f.name for f in fields(CLIPConfig)}
        problems = [f"{prefix}.clip.{k} is not a CLIP config field" for k in clip if k not in known]
        problems += [f"{prefix}.clip.{p}" for p in clip_config_problems(clip)]
    head = args.get("head")
    if not isinstance(head, str) or head not in HEADS:
        problems.append(f"{prefix}.head={head!r:.40} (expected one of {sorted(HEADS)})")
    else:
        problems += kwargs_problems(HEADS[head].__init__, args.get("head_kwargs") or {}, f"{prefix}.head_kwargs.",
                                    ("width",))
    return problems + _adapter_problems(args.get("adapter"), f"{prefix}.adapter.")


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


__all__ = ["apply_adapters", "arch_clip", "build_tokenizer", "head_kwargs", "kwargs_problems", "model_args",
           "model_args_problems", "model_from_args", "to_plain", "tokenizer_state", "tokenizer_state_problems"]
