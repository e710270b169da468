"""CLIP towers in OpenAI's layout, and loading of the released weights."""
from .layers import Attention, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer
from .model import CLIP, CLIPConfig, VisionTransformer
from .pretrained import (PRETRAINED, available_models, clip_from_state_dict, load_clip,
                         clip_state_dict, read_state_dict, resolve_clip_file)

__all__ = ["Attention", "LayerNorm", "QuickGELU", "ResidualAttentionBlock", "Transformer",
           "CLIP", "CLIPConfig", "VisionTransformer", "PRETRAINED", "available_models",
           "clip_from_state_dict", "clip_state_dict", "load_clip", "read_state_dict", "resolve_clip_file"]
