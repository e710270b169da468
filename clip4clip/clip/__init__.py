"""CLIP towers in OpenAI's layout: architecture only (reading weights is ``clip4clip.weights``)."""
from .layers import (ACTIVATIONS, Attention, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer,
                     activation_layer)
from .towers import CLIP, CLIPConfig, VisionTransformer, clip_config_problems

__all__ = ["ACTIVATIONS", "Attention", "LayerNorm", "QuickGELU", "ResidualAttentionBlock", "Transformer",
           "activation_layer", "CLIP", "CLIPConfig", "VisionTransformer", "clip_config_problems"]
