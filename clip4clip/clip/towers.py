"""CLIP with OpenAI's state-dict layout: a ViT image tower and a causal text transformer.

Text-tower parameters sit at the top level (``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection``) exactly as in the released checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable, List, Mapping, Optional

import torch
from torch import nn

from .layers import (ACTIVATIONS, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer,
                     activation_layer, default_heads, init_transformer_)

__all__ = ["CLIP", "CLIPConfig", "VisionTransformer", "clip_config_problems"]


def _is_count(value) -> bool:
    """A whole number >= 1 (a bool is not one, though Python counts it as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Every size field of CLIPConfig is a count; the head counts may also be None (OpenAI's width // 64).
_COUNT_FIELDS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                 "context_length", "vocab_size", "transformer_width", "transformer_layers")
_HEAD_FIELDS = {"transformer_heads": "transformer_width", "vision_heads": "vision_width"}


def clip_config_problems(d: Mapping) -> List[str]:
    """What is wrong with the CLIPConfig fields in ``d`` (types, ranges, and the two divisibility
    rules the towers need), one short phrase each, naming the field; [] when nothing is.
    Fields ``d`` leaves out are not checked (they take the defaults)."""
    problems = [f"{name}={d[name]!r} (expected a whole number >= 1)"
                for name in _COUNT_FIELDS if name in d and not _is_count(d[name])]
    for name, width in _HEAD_FIELDS.items():
        heads = d.get(name)
        if heads is not None and not _is_count(heads):
            problems.append(f"{name}={heads!r} (expected null, i.e. width // 64, or a whole number >= 1)")
        elif heads is not None and _is_count(d.get(width)) and d[width] % heads:
            problems.append(f"{name}={heads} does not divide {width}={d[width]}")
    if "activation" in d and (not isinstance(d["activation"], str) or d["activation"] not in ACTIVATIONS):
        problems.append(f"activation={d['activation']!r} (expected one of {sorted(ACTIVATIONS)})")
    image, patch = d.get("image_resolution"), d.get("vision_patch_size")
    if _is_count(image) and _is_count(patch) and image % patch:
        problems.append(f"image_resolution={image} is not a multiple of vision_patch_size={patch}")
    return problems


def _layer_indices(sd: Mapping[str, torch.Tensor], prefix: str) -> set:
    """The N of every ``<prefix>N.`` key: which layers of a stack the weights hold."""
    return {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)}


def _dim(sd: Mapping[str, torch.Tensor], key: str, ndim: int, axis: int) -> Optional[int]:
    """``sd[key].shape[axis]`` if ``sd[key]`` is a tensor of ``ndim`` dimensions, else None."""
    value = sd.get(key)
    return value.shape[axis] if isinstance(value, torch.Tensor) and value.dim() == ndim else None


@dataclass
class CLIPConfig:
    """Architecture of a ViT CLIP. ``*_heads`` of None means OpenAI's width // 64.

    ``activation``: the MLP activation of both towers, 'quick_gelu' (OpenAI's CLIP) or 'gelu'
    (most OpenCLIP/LAION models). Dicts written before the field existed load as quick_gelu,
    which is what every CLIP of this framework used until then.

    Every field is checked on construction (``clip_config_problems``): a zero, negative, bool
    or string size is a ValueError here rather than a ZeroDivisionError or a silent default
    deep inside the towers."""

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
        problems = clip_config_problems(asdict(self))
        if problems:
            raise ValueError("CLIP config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "CLIPConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CLIP config field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(d))

    def size_problems(self, sd: Mapping[str, torch.Tensor], names: Optional[Mapping[str, str]] = None) -> List[str]:
        """Where this architecture contradicts an OpenAI-layout state dict's shapes, one phrase
        per field, named as ``names`` maps our field names (e.g. ``vision_layers`` ->
        ``vision_config.num_hidden_layers``); [] when nothing does. Run before building: the
        sizes a config declares decide what the model allocates, so a config claiming 10^6
        layers or a width of 10^9 must be refused while it is still just numbers.

        Layer counts are checked always (no layer keys means 0 layers); the other fields only
        where the tensor that shows them is present (a missing key is reported by the key check)."""
        names = names or {}
        found = {
            "vision_layers": len(_layer_indices(sd, "visual.transformer.resblocks.")),
            "transformer_layers": len(_layer_indices(sd, "transformer.resblocks.")),
            "vision_width": _dim(sd, "visual.conv1.weight", 4, 0),
            "vision_patch_size": _dim(sd, "visual.conv1.weight", 4, -1),
            "embed_dim": _dim(sd, "text_projection", 2, 1),
            "transformer_width": _dim(sd, "ln_final.weight", 1, 0),
            "context_length": _dim(sd, "positional_embedding", 2, 0),
            "vocab_size": _dim(sd, "token_embedding.weight", 2, 0),
        }
        evidence = {"vision_layers": "visual.transformer.resblocks.N", "transformer_layers": "transformer.resblocks.N",
                    "vision_width": "visual.conv1.weight", "vision_patch_size": "visual.conv1.weight",
                    "embed_dim": "text_projection", "transformer_width": "ln_final.weight",
                    "context_length": "positional_embedding", "vocab_size": "token_embedding.weight"}
        problems = [f"{names.get(f, f)} is {getattr(self, f)} but the weights have {v} ({evidence[f]})"
                    for f, v in found.items() if v is not None and v != getattr(self, f)]
        rows = _dim(sd, "visual.positional_embedding", 2, 0)
        grid = self.image_resolution // self.vision_patch_size
        if rows is not None and rows != grid * grid + 1:
            problems.append(f"{names.get('image_resolution', 'image_resolution')} is {self.image_resolution} "
                            f"({grid}x{grid} patches of {self.vision_patch_size}) but the weights have {rows - 1} "
                            "patch positions (visual.positional_embedding)")
        return problems

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], where: str = "CLIP state dict") -> "CLIPConfig":
        """Infer the architecture from an OpenAI-layout state dict, as OpenAI's build_model.
        ``where`` (the file) is named in errors: a missing key or a tensor of the wrong number
        of dimensions is a ValueError naming both."""
        if "visual.proj" not in sd or "visual.conv1.weight" not in sd:
            if any(k.startswith("visual.layer1") for k in sd):
                raise ValueError(f"{where}: this is a ResNet CLIP checkpoint; only ViT CLIP models are supported")
            raise ValueError(f"{where}: not an OpenAI-layout CLIP state dict: missing 'visual.proj' / "
                             f"'visual.conv1.weight' (got keys like {sorted(sd)[:5]})")
        _require_shapes(sd, where)
        conv = sd["visual.conv1.weight"]
        grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
        width = sd["ln_final.weight"].shape[0]
        return cls(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=conv.shape[-1] * grid,
            vision_layers=len(_layer_indices(sd, "visual.transformer.resblocks.")),
            vision_width=conv.shape[0],
            vision_patch_size=conv.shape[-1],
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=width,
            transformer_heads=default_heads(width),
            transformer_layers=len(_layer_indices(sd, "transformer.resblocks.")),
        )


# The tensors ``from_state_dict`` reads sizes off, with the dimensions they must have.
_INFERRED_FROM = {"visual.conv1.weight": 4, "visual.positional_embedding": 2, "visual.proj": 2,
                  "text_projection": 2, "ln_final.weight": 1, "positional_embedding": 2, "token_embedding.weight": 2}


def _require_shapes(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """The keys ``from_state_dict`` reads are tensors of the right rank with non-zero sizes, and
    the vision position table has 1 + a square number of rows (class token + grid x grid)."""
    problems = []
    for key, ndim in _INFERRED_FROM.items():
        value = sd.get(key)
        if not isinstance(value, torch.Tensor):
            problems.append(f"'{key}' is missing" if value is None else f"'{key}' is not a tensor")
        elif value.dim() != ndim or 0 in value.shape:
            problems.append(f"'{key}' has shape {list(value.shape)} (expected {ndim} non-zero dimensions)")
    if not problems:
        rows = sd["visual.positional_embedding"].shape[0] - 1
        if rows < 1 or math.isqrt(rows) ** 2 != rows:
            problems.append(f"'visual.positional_embedding' has {rows + 1} rows (expected 1 + a square number)")
    if problems:
        raise ValueError(f"{where}: cannot read the architecture off the weights: " + "; ".join(problems))


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

    def forward_tokens(self, x: torch.Tensor, **context) -> torch.Tensor:
        """Images [N, 3, H, W] -> every output token [N, 1 + HW, output_dim] (index 0 = CLS, equal
        to ``forward``), ``ln_post`` and ``proj`` applied to each (TS2-Net's token selection)."""
        x = self.transformer(self.embed(x, **context), **context)
        return self.ln_post(x) @ self.proj


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
