"""Choose what trains in a CLIP4Clip model by module, never by matching parameter names.

``configure_trainable`` freezes everything, then re-enables whole modules: the adapters, the
temporal embedding, the head, the text tower, the LoRA updates, ``logit_scale``. Call it after
injecting adapters/LoRA and before building the optimiser (which should receive only
``[p for p in model.parameters() if p.requires_grad]``).
"""
from __future__ import annotations

from typing import Dict, Iterable, List

from torch import nn

from .adapter import Adapter
from .aim import TemporalEmbedding
from .lora import LoRA


def _text_tower(clip: nn.Module) -> List[nn.Module]:
    """CLIP's text tower sits at the top level of the CLIP module (OpenAI layout)."""
    return [clip.token_embedding, clip.transformer, clip.ln_final]


def _text_params(clip: nn.Module) -> List[nn.Parameter]:
    return [clip.positional_embedding, clip.text_projection]


def _params(modules: Iterable[nn.Module]) -> List[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def configure_trainable(model: nn.Module, train_adapters: bool = True,
                        train_temporal_embedding: bool = True, train_head: bool = True,
                        train_text: bool = False, train_lora: bool = True,
                        train_logit_scale: bool = False, train_vision: bool = False) -> Dict:
    """Set ``requires_grad`` on a CLIP4Clip model, in place.

    Every parameter is frozen first; then these disjoint groups are set by their flag:
    the text tower (``token_embedding``, ``positional_embedding``, ``transformer``,
    ``ln_final``, ``text_projection``; its base weights, not its LoRA updates), the head,
    ``logit_scale``, every :class:`Adapter`, the :class:`TemporalEmbedding`, every
    :class:`LoRA`, and the vision tower's own weights (``train_vision``; off for adapter
    fine-tuning, on when a model trained from scratch uses AIM blocks as its video
    architecture). A flag for a part the model does not
    have (e.g. ``train_lora`` without LoRA injected) changes nothing.

    Returns ``parameter_summary(model)`` plus ``"groups"``: trainable parameter count per
    flag, e.g. ``{"adapters": 10651392, "temporal_embedding": 9216, ...}``.
    Raises ValueError when nothing would train.
    """
    clip = model.clip
    model.requires_grad_(False)
    lora = _params(m for m in model.modules() if isinstance(m, LoRA))
    lora_ids = {id(p) for p in lora}
    injected = {id(p) for m in model.modules() if isinstance(m, (Adapter, TemporalEmbedding)) for p in m.parameters()}
    # Disjoint groups: the text tower contains the LoRA modules, which train_lora decides.
    groups = {
        "text": [p for p in _params(_text_tower(clip)) + _text_params(clip) if id(p) not in lora_ids],
        "head": list(model.head.parameters()),
        "logit_scale": [clip.logit_scale],
        "adapters": _params(m for m in model.modules() if isinstance(m, Adapter)),
        "temporal_embedding": _params(m for m in model.modules() if isinstance(m, TemporalEmbedding)),
        "lora": lora,
        "vision": [p for p in clip.visual.parameters() if id(p) not in injected],
    }
    flags = {"text": train_text, "head": train_head, "logit_scale": train_logit_scale,
             "adapters": train_adapters, "temporal_embedding": train_temporal_embedding,
             "lora": train_lora, "vision": train_vision}
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(flags[name])
    summary = parameter_summary(model)
    if summary["trainable"] == 0:
        raise ValueError(f"configure_trainable left no trainable parameter (flags {flags}; "
                         f"parameters per group { {k: _count(v) for k, v in groups.items()} })")
    summary["groups"] = {name: _count(p for p in params if p.requires_grad) for name, params in groups.items()}
    return summary


def _count(params: Iterable[nn.Parameter]) -> int:
    # Deduplicate by identity: shared parameters count once, as in model.parameters().
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def parameter_summary(model: nn.Module) -> Dict:
    """{"total": int, "trainable": int, "percent": float (trainable / total * 100)}."""
    params = list(model.parameters())
    total = _count(params)
    trainable = _count(p for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable, "percent": 100.0 * trainable / max(total, 1)}


def format_parameter_summary(summary: Dict) -> str:
    """One line for logs, e.g. 'trainable params: 10.66M / 162.3M (6.57%) [adapters 10.65M, ...]'."""
    line = (f"trainable params: {_millions(summary['trainable'])} / {_millions(summary['total'])} "
            f"({summary['percent']:.2f}%)")
    groups = {k: v for k, v in summary.get("groups", {}).items() if v}
    if groups:
        line += " [" + ", ".join(f"{k} {_millions(v)}" for k, v in groups.items()) + "]"
    return line


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


__all__ = ["configure_trainable", "parameter_summary", "format_parameter_summary"]
