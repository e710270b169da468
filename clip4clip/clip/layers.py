"""Transformer building blocks with OpenAI CLIP's parameter layout.

Parameter names match OpenAI's released checkpoints (``attn.in_proj_weight``,
``attn.out_proj``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``) so they load with
``strict=True``, but attention runs through ``F.scaled_dot_product_attention`` (fused
kernels on GPU) and tensors are batch-first ``[N, L, D]`` throughout.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (CLIP does this for fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_dtype = x.dtype
        out = F.layer_norm(
            x.float(), self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None, self.eps)
        return out.to(orig_dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation CLIP was trained with (not exact GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# The MLP activation of a CLIP. OpenAI trained with QuickGELU; most OpenCLIP/LAION models use
# exact GELU. The two are close enough that the wrong one still gives plausible features, so
# the choice travels with the weights (CLIPConfig.activation) instead of being guessed.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


def activation_layer(name: str) -> Callable[[], nn.Module]:
    """'quick_gelu' -> QuickGELU, 'gelu' -> nn.GELU (exact, erf form)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation={name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout.

    Args:
        dim: model width D.
        num_heads: heads; D must be divisible by it.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            # 0 would be a ZeroDivisionError below; a float or a string a TypeError deep in torch.
            raise ValueError(f"attention num_heads={num_heads!r}; expected a whole number >= 1")
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """x: [N, L, D]; attn_mask: bool (True = may attend) or additive float mask
        broadcastable to [N, heads, L, L]. Returns [N, L, D]."""
        n, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4.0,
                 act_layer: Callable[[], nn.Module] = QuickGELU,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm):
        super().__init__()
        hidden = int(d_model * mlp_ratio)
        self.attn = Attention(d_model, n_head)
        self.ln_1 = norm_layer(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, hidden)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(hidden, d_model)),
        ]))
        self.ln_2 = norm_layer(d_model)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False, **context) -> torch.Tensor:
        """x: [N, L, D] -> [N, L, D]. ``context`` carries per-call information that
        injected blocks (e.g. AIM's frame layout) need; the plain block has no use for it."""
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (``resblocks`` is a ModuleList so blocks can be
    swapped or wrapped by adapters without editing this class)."""

    def __init__(self, width: int, layers: int, heads: int,
                 block_fn: Callable[..., nn.Module] = ResidualAttentionBlock):
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.resblocks = nn.ModuleList([block_fn(width, heads) for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False, **context) -> torch.Tensor:
        """x: [N, L, D] -> [N, L, D]."""
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Non-reentrant checkpointing handles kwargs and frozen inputs correctly.
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False, **context)
            else:
                x = block(x, attn_mask, is_causal, **context)
        return x


def init_transformer_(transformer: Transformer) -> None:
    """CLIP's random initialisation: residual output projections scaled by 1/sqrt(2L) so the
    residual stream's variance does not grow with depth."""
    width, layers = transformer.width, max(transformer.layers, 1)
    proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
    attn_std = width ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def key_padding_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] (1 = valid) -> bool [B, 1, 1, T] for SDPA: padded keys are never attended.

    Equivalent to CLIP4Clip's additive -1e6 mask (exp(-1e6) underflows to exactly 0)."""
    return frame_mask.bool()[:, None, None, :]


def default_heads(width: int) -> int:
    """OpenAI's rule: one head per 64 channels (at least one)."""
    return max(1, width // 64)


__all__ = ["ACTIVATIONS", "LayerNorm", "QuickGELU", "activation_layer", "Attention", "ResidualAttentionBlock",
           "Transformer", "init_transformer_", "key_padding_mask", "default_heads"]
