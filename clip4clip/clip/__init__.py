"""CLIP towers in OpenAI's layout, and loading of released, Hugging Face and OpenCLIP weights."""
from .hf import check_tokenizer_files, hf_to_openai_state_dict, read_hf_folder, resolve_hf
from .layers import (ACTIVATIONS, Attention, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer,
                     activation_layer)
from .model import CLIP, CLIPConfig, VisionTransformer
from .openclip import open_clip_state_dict, read_open_clip
from .pretrained import (PRETRAINED, available_models, clip_from_state_dict, clip_state_dict, is_clip_folder, is_pretrained_name,
                         load_clip, read_clip_weights, read_state_dict, read_weights_file, resolve_clip_file,
                         resolve_clip_source)

__all__ = ["ACTIVATIONS", "Attention", "LayerNorm", "QuickGELU", "ResidualAttentionBlock", "Transformer",
           "activation_layer", "CLIP", "CLIPConfig", "VisionTransformer", "PRETRAINED", "available_models",
           "clip_from_state_dict", "clip_state_dict", "is_clip_folder", "is_pretrained_name", "load_clip", "read_clip_weights",
           "read_state_dict", "read_weights_file", "resolve_clip_file", "resolve_clip_source",
           "check_tokenizer_files", "hf_to_openai_state_dict", "read_hf_folder", "resolve_hf",
           "open_clip_state_dict", "read_open_clip"]
