"""CLIP with OpenAI's state-dict layout: a ViT image tower and a causal text transformer.

Text-tower parameters sit at the top level (``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection``) exactly as in the released checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .layers import (ACTIVATIONS, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer,
                     activation_layer, default_heads, init_transformer_)


@dataclass
class CLIPConfig:
    """Architecture of a ViT CLIP. ``*_heads`` of None means OpenAI's width // 64.

    ``activation``: the MLP activation of both towers, 'quick_gelu' (OpenAI's CLIP) or 'gelu'
    (most OpenCLIP/LAION models). Dicts written before the field existed load as quick_gelu,
    which is what every CLIP of this framework used until then."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: Optional[int] = None
    transformer_layers: int = 12
    vision_heads: Optional[int] = None
    activation: str = "quick_gelu"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"CLIP activation={self.activation!r}; expected one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "CLIPConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CLIP config field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "CLIPConfig":
        """Infer the architecture from an OpenAI-layout state dict, as OpenAI's build_model."""
        if "visual.proj" not in sd or "visual.conv1.weight" not in sd:
            if any(k.startswith("visual.layer1") for k in sd):
                raise ValueError("this is a ResNet CLIP checkpoint; only ViT CLIP models are supported")
            raise ValueError("not an OpenAI-layout CLIP state dict: missing 'visual.proj' / "
                             "'visual.conv1.weight' (got keys like %s)" % sorted(sd)[:5])
        conv = sd["visual.conv1.weight"]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_layers = len([k for k in sd if k.startswith("visual.transformer.resblocks.")
                             and k.endswith(".attn.in_proj_weight")])
        text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        width = sd["ln_final.weight"].shape[0]
        return cls(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=conv.shape[-1] * grid,
            vision_layers=vision_layers,
            vision_width=conv.shape[0],
            vision_patch_size=conv.shape[-1],
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=width,
            transformer_heads=default_heads(width),
            transformer_layers=text_layers,
        )


class VisionTransformer(nn.Module):
    """ViT image tower: patches -> [CLS] + tokens -> transformer -> projected CLS."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int, act_layer: Callable[[], nn.Module] = QuickGELU):
        super().__init__()
        if input_resolution % patch_size != 0:
            raise ValueError(f"image_resolution {input_resolution} is not a multiple of patch size {patch_size}")
        self.input_resolution = input_resolution
        self.grid_size = input_resolution // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads,
                                       block_fn=partial(ResidualAttentionBlock, act_layer=act_layer))
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        # Injection point for modules that act on the tokens before ln_pre, e.g. AIM's temporal
        # embedding: module(tokens [N, 1+HW, width], **context) -> tokens. None = nothing.
        self.pre_ln_adapter: Optional[nn.Module] = None

    def embed(self, x: torch.Tensor, **context) -> torch.Tensor:
        """Images [N, 3, H, W] -> token sequence [N, 1 + HW, width] after ln_pre."""
        x = self.conv1(x.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.pre_ln_adapter is not None:
            x = self.pre_ln_adapter(x, **context)
        return self.ln_pre(x)

    def forward(self, x: torch.Tensor, **context) -> torch.Tensor:
        """Images [N, 3, H, W] (CLIP-normalised) -> features [N, output_dim] (not normalised).
        ``context`` is passed to every block (used by injected adapters); for videos it holds
        ``frame_mask`` [B, T] and N = B*T, frames of one video contiguous."""
        x = self.transformer(self.embed(x, **context), **context)
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """OpenAI CLIP (ViT variants) with the released checkpoints' parameter names."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        c = config
        act = activation_layer(c.activation)
        self.visual = VisionTransformer(
            c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
            c.vision_heads or default_heads(c.vision_width), c.embed_dim, act_layer=act)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers,
                                       c.transformer_heads or default_heads(c.transformer_width),
                                       block_fn=partial(ResidualAttentionBlock, act_layer=act))
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's random initialisation (used when training from scratch)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        init_transformer_(self.transformer)
        init_transformer_(self.visual.transformer)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward on both towers (saves memory)."""
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor, **context) -> torch.Tensor:
        """[N, 3, H, W] -> [N, embed_dim], not normalised."""
        return self.visual(image, **context)

    def encode_text(self, text: torch.Tensor, return_hidden: bool = False):
        """Token ids [N, L] (L <= context_length; SOT ... EOT, zero padded) -> [N, embed_dim]
        taken at the end-of-text token (the highest id, as CLIP pools at ``argmax``), not
        normalised. With ``return_hidden`` also the projected token states [N, L, embed_dim]."""
        length = text.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"text has {length} tokens; this CLIP accepts at most "
                             f"context_length={self.config.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        # Causal attention: CLIP's mask is the upper triangle of context_length x context_length;
        # its top-left L x L corner is exactly the causal mask for L tokens.
        x = self.transformer(x, is_causal=True)
        hidden = self.ln_final(x) @ self.text_projection
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), text.argmax(dim=-1)]
        return (pooled, hidden) if return_hidden else pooled

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        """Returns (logits_per_image [Ni, Nt], logits_per_text [Nt, Ni]) as OpenAI's CLIP."""
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()
