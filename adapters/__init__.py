"""Parameter-efficient fine-tuning of CLIP4Clip, injected into an existing model.

Order of use (after building CLIP and loading its pretrained weights)::

    model = CLIP4Clip.from_clip(clip, head="meanP")
    inject_aim(model.clip.visual, num_frames=12)            # AIM adapters, vision tower
    inject_lora(model.clip.transformer, rank=8, alpha=16)   # optional: LoRA, text tower
    summary = configure_trainable(model)                    # freeze CLIP, train adapters/head
    log.info(format_parameter_summary(summary))
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], ...)

Saving and reloading only what trains is ``clip4clip.weights.adapter_state``.
"""
from .adapter import Adapter, DropPath
from .aim import AIMBlock, TemporalEmbedding, inject_aim
from .freeze import configure_trainable, format_parameter_summary, parameter_summary
from .lora import LORA_TARGETS, LoRA, LoRAAttention, inject_lora, merge_lora

__all__ = ["Adapter", "DropPath", "AIMBlock", "TemporalEmbedding", "inject_aim", "LoRA",
           "LoRAAttention", "LORA_TARGETS", "inject_lora", "merge_lora", "configure_trainable",
           "parameter_summary", "format_parameter_summary"]
