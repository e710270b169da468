"""OpenCLIP / LAION ViT checkpoints in our towers.

OpenCLIP's ``CLIP`` class keeps OpenAI's state-dict layout (``visual.class_embedding``,
``visual.positional_embedding``, ``positional_embedding``, ``text_projection``, ``logit_scale``,
``transformer.resblocks.N.attn.in_proj_weight``...), so the weights load as they are; what differs
is the architecture around them, which the file's ``open_clip_config.json`` says:

* the activation: exact GELU unless ``model_cfg.quick_gelu`` is true (OpenAI-trained models and
  LAION's ``*-quickgelu`` models use QuickGELU);
* the vision head count: ``width // head_width`` (``head_width`` 64 by default, 80 for ViT-H/14),
  not OpenAI's ``width // 64``.

Variants our towers do not implement (timm or Hugging Face towers, attentional pooling, layer
scale, SigLIP's ``logit_bias``, MLP ratios other than 4...) are refused with what is unsupported.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..clip.towers import CLIPConfig
from .clip_state import clip_state_dict, with_activation
from .files import COUNT, FLAG, POSITIVE, SECTION, SIZE, Field, field_problems, nullable, read_json, read_weights_file

__all__ = ["OPEN_CLIP_CONFIG_FILE", "OPEN_CLIP_WEIGHT_FILES", "clip_config_from_open_clip", "is_open_clip_file",
           "open_clip_state_dict", "read_open_clip"]

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"

# Vision widths of OpenCLIP architectures whose head width is not 64 (model_configs/ViT-H-14*.json:
# width 1280, head_width 80 -> 16 heads, where OpenAI's rule would give 20). Used only for a bare
# weights file without its open_clip_config.json.
_KNOWN_VISION_HEAD_WIDTH = {1280: 80}

# (section, key, the value our towers implement): any other value is refused.
_SUPPORTED = [
    ("model", "custom_text", (False, None)), ("model", "init_logit_bias", (None,)),
    ("model", "init_logit_scale", None),  # any value: only the initial value of a learned scalar
    ("vision", "timm_model_name", (None,)), ("vision", "attentional_pool", (False, None)),
    ("vision", "global_average_pool", (False, None)), ("vision", "final_ln_after_pool", (False, None)),
    ("vision", "pool_type", ("tok", None)), ("vision", "no_ln_pre", (False, None)),
    ("vision", "ls_init_value", (None,)), ("vision", "input_patchnorm", (False, None)),
    ("vision", "pos_embed_type", ("learnable", None)), ("vision", "act_kwargs", (None, {})),
    ("vision", "norm_kwargs", (None, {})),
    ("text", "hf_model_name", (None,)), ("text", "pool_type", ("argmax", None)),
    ("text", "no_causal_mask", (False, None)), ("text", "proj_bias", (False, None)),
    ("text", "proj_type", ("linear", None)), ("text", "embed_cls", (False, None)),
    ("text", "ls_init_value", (None,)), ("text", "act_kwargs", (None, {})), ("text", "norm_kwargs", (None, {})),
]


# The model config's schema, checked before any value is used. vision_cfg.layers may also be a
# list: a ResNet tower, refused by name below rather than as a malformed value.
_MODEL_SCHEMA = {"embed_dim": COUNT, "quick_gelu": FLAG, "vision_cfg": SECTION, "text_cfg": nullable(SECTION)}
_VISION_SCHEMA = {"image_size": SIZE, "width": COUNT, "patch_size": SIZE, "head_width": COUNT,
                  "mlp_ratio": POSITIVE,
                  "layers": Field(lambda v: COUNT.ok(v) or isinstance(v, (list, tuple)), COUNT.expected)}
_TEXT_SCHEMA = {"context_length": COUNT, "vocab_size": COUNT, "width": COUNT, "heads": COUNT, "layers": COUNT,
                "mlp_ratio": POSITIVE}
# Our CLIPConfig fields as the model config names them, for errors about sizes the weights contradict.
_OPEN_CLIP_NAMES = {"vision_layers": "vision_cfg.layers", "vision_width": "vision_cfg.width",
                    "vision_patch_size": "vision_cfg.patch_size", "image_resolution": "vision_cfg.image_size",
                    "transformer_layers": "text_cfg.layers", "transformer_width": "text_cfg.width",
                    "context_length": "text_cfg.context_length", "vocab_size": "text_cfg.vocab_size",
                    "embed_dim": "embed_dim"}


def is_open_clip_file(path: Union[str, os.PathLike]) -> bool:
    """The file is named as OpenCLIP's Hugging Face uploads name their weights."""
    return Path(path).name in OPEN_CLIP_WEIGHT_FILES


def _model_cfg(cfg: Mapping) -> Mapping:
    # open_clip_config.json nests the architecture under model_cfg (beside preprocess_cfg);
    # open_clip's own model_configs/*.json are the architecture itself.
    return cfg.get("model_cfg", cfg)


def _schema_problems(cfg: Any) -> List[str]:
    """The model config's types and ranges and the divisibility rules our towers need, named
    as in the file (``model_cfg.vision_cfg.width=...``); [] when all hold."""
    if not isinstance(cfg, dict) or not isinstance(_model_cfg(cfg), dict):
        return ["expected an object {...} (with model_cfg: {...})"]
    m = _model_cfg(cfg)
    pre = "model_cfg." if "model_cfg" in cfg else ""
    problems = field_problems(m, _MODEL_SCHEMA, pre) + ([] if "embed_dim" in m else [f"{pre}embed_dim is missing"])
    if problems:
        return problems
    v, t = m["vision_cfg"], m.get("text_cfg") or {}
    problems = (field_problems(v, _VISION_SCHEMA, f"{pre}vision_cfg.")
                + field_problems(t, _TEXT_SCHEMA, f"{pre}text_cfg."))
    if problems or isinstance(v.get("layers"), (list, tuple)):
        return problems
    width, head_width = v.get("width", 768), v.get("head_width", 64)
    text_width, heads = t.get("width", 512), t.get("heads", 8)
    if width % head_width:
        problems.append(f"{pre}vision_cfg.width={width} is not a multiple of head_width={head_width}")
    if text_width % heads:
        problems.append(f"{pre}text_cfg.heads={heads} does not divide width={text_width}")
    image, patch = (x[0] if isinstance(x, (list, tuple)) else x
                    for x in (v.get("image_size", 224), v.get("patch_size", 16)))
    if image % patch:
        problems.append(f"{pre}vision_cfg.image_size={image} is not a multiple of patch_size={patch}")
    return problems


def clip_config_from_open_clip(cfg: Mapping, where: str = OPEN_CLIP_CONFIG_FILE) -> CLIPConfig:
    """An OpenCLIP model config (``open_clip_config.json`` or ``model_configs/NAME.json``) ->
    CLIPConfig, with OpenCLIP's defaults for the keys it leaves out. Malformed values
    (``_schema_problems``) and variants our towers lack are refused, naming ``where``."""
    problems = _schema_problems(cfg)
    if problems:
        raise ValueError(f"{where}: not a valid OpenCLIP model config: " + "; ".join(problems))
    m = _model_cfg(cfg)
    v, t = dict(m.get("vision_cfg") or {}), dict(m.get("text_cfg") or {})
    problems = _unsupported(m, v, t)
    if problems:
        raise ValueError(f"{where}: this OpenCLIP model is not one our towers implement: {'; '.join(problems)}")
    image, patch = v.get("image_size", 224), v.get("patch_size", 16)
    image = image[0] if isinstance(image, (list, tuple)) else image
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    width = v.get("width", 768)
    return CLIPConfig(
        embed_dim=m["embed_dim"], image_resolution=image, vision_layers=v.get("layers", 12),
        vision_width=width, vision_patch_size=patch, context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", 49408), transformer_width=t.get("width", 512),
        transformer_heads=t.get("heads", 8), transformer_layers=t.get("layers", 12),
        vision_heads=width // v.get("head_width", 64),
        activation="quick_gelu" if m.get("quick_gelu", False) else "gelu")


def _unsupported(m: Mapping, v: Mapping, t: Mapping) -> List[str]:
    """What a well-formed OpenCLIP config asks for that our towers do not implement."""
    sections = {"model": m, "vision": v, "text": t}
    problems = [f"{sec}_cfg.{key}={sections[sec][key]!r}" if sec != "model" else f"{key}={m[key]!r}"
                for sec, key, ok in _SUPPORTED
                if ok is not None and key in sections[sec] and sections[sec][key] not in ok]
    if isinstance(v.get("layers"), (list, tuple)):
        problems.append("a ResNet image tower (vision_cfg.layers is a list); only ViT CLIPs are supported")
    for sec, c in (("vision", v), ("text", t)):
        if float(c.get("mlp_ratio", 4.0)) != 4.0:
            problems.append(f"{sec}_cfg.mlp_ratio={c['mlp_ratio']} (our blocks have 4)")
    for label, value in (("image_size", v.get("image_size")), ("patch_size", v.get("patch_size"))):
        if isinstance(value, (list, tuple)) and len(set(value)) != 1:
            problems.append(f"non-square vision_cfg.{label}={value}")
    return problems


def _is_causal_mask(mask: torch.Tensor) -> bool:
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    n = mask.shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    return bool(torch.isinf(mask[upper]).all() and (mask[upper] < 0).all() and (mask[~upper] == 0).all())


def open_clip_state_dict(sd: Mapping[str, torch.Tensor], where: str = "OpenCLIP weights") -> Dict[str, torch.Tensor]:
    """OpenCLIP's state dict in OpenAI's layout: the same keys, less the ``attn_mask`` buffer that
    older OpenCLIP versions saved (checked to be the causal mask our text tower applies itself).
    Keys of towers we do not implement are refused, all of them listed."""
    out = dict(sd)
    mask = out.pop("attn_mask", None)
    if mask is not None and not _is_causal_mask(mask):
        raise ValueError(f"{where}: 'attn_mask' is not CLIP's causal mask (shape {list(mask.shape)}); this text "
                         "tower attends differently from ours")
    foreign = sorted(k for k in out if k.startswith(("text.", "visual.trunk.", "visual.attn_pool.")) or
                     k in ("logit_bias",) or ".ls_1." in k or ".ls_2." in k)
    if foreign:
        raise ValueError(f"{where}: {len(foreign)} key(s) of an OpenCLIP variant our towers do not implement "
                         f"(Hugging Face/timm towers, attentional pooling, SigLIP logit_bias, layer scale): "
                         f"{', '.join(foreign)}")
    return out


def _read_config(path: Path) -> Mapping:
    cfg = read_json(path, "OpenCLIP config")
    if not isinstance(cfg, dict) or not isinstance(_model_cfg(cfg), dict) or "vision_cfg" not in _model_cfg(cfg):
        raise ValueError(f"{path}: not an OpenCLIP config (expected model_cfg.vision_cfg / text_cfg)")
    return cfg


def read_open_clip(path: Union[str, os.PathLike], activation: Optional[str] = None,
                   config_path: Union[str, os.PathLike, None] = None
                   ) -> Tuple[Dict[str, torch.Tensor], CLIPConfig]:
    """OpenCLIP weights (a folder with ``open_clip_model.safetensors`` or
    ``open_clip_pytorch_model.bin``, or such a file) -> (OpenAI-layout float32 state dict, CLIPConfig).

    The architecture comes from ``config_path``, else the ``open_clip_config.json`` beside the
    weights. Without one it is read off the shapes (head counts as OpenCLIP's architectures have
    them) and ``activation`` must be given: OpenCLIP models differ in it and a wrong guess gives
    plausible but worse features. An explicit ``activation`` overrides the config's (with a
    warning when they differ)."""
    path = Path(path)
    if path.is_dir():
        name = next((n for n in OPEN_CLIP_WEIGHT_FILES if (path / n).is_file()), None)
        if name is None:
            raise FileNotFoundError(f"{path}: no OpenCLIP weights (expected one of {list(OPEN_CLIP_WEIGHT_FILES)})")
        path = path / name
    sd = open_clip_state_dict(clip_state_dict(read_weights_file(path), path), str(path))
    config_path = Path(config_path) if config_path else path.parent / OPEN_CLIP_CONFIG_FILE
    if config_path.is_file():
        cfg = _read_config(config_path)
        config = clip_config_from_open_clip(cfg, str(config_path))
        pre = "model_cfg." if "model_cfg" in cfg else ""
        problems = config.size_problems(sd, {k: pre + v for k, v in _OPEN_CLIP_NAMES.items()})
        if problems:
            raise ValueError(f"{config_path}: does not describe the weights in {path.name}: " + "; ".join(problems))
        return sd, with_activation(config, activation, f"{config_path} (model_cfg.quick_gelu)")
    if activation is None:
        raise ValueError(f"{path}: OpenCLIP weights without {OPEN_CLIP_CONFIG_FILE} beside them, so their activation "
                         "is unknown: put the config there, or pass activation='gelu' (most LAION models; "
                         "model.clip.activation=gelu) or 'quick_gelu' (OpenAI-trained and *-quickgelu models)")
    config = CLIPConfig.from_state_dict(sd, str(path))
    head_width = _KNOWN_VISION_HEAD_WIDTH.get(config.vision_width)
    return sd, replace(config, activation=activation,
                       vision_heads=config.vision_width // head_width if head_width else None)
