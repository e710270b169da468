"""LoRA (Hu et al., 2021) on the attention of CLIP's text tower, injected by wrapping.

CLIP's ``Attention`` keeps q, k and v in one fused ``in_proj_weight`` [3D, D]. LoRA here adds
a low-rank update to the q, k and/or v third of that projection (and/or to ``out_proj``):
``W_q x -> W_q x + (alpha / rank) * B_q A_q dropout(x)``, A [rank, D] random, B [D, rank] zero,
so a model starts unchanged. :class:`LoRAAttention` holds the original ``in_proj_weight``,
``in_proj_bias`` and ``out_proj`` under the same names, so the pretrained keys stay put;
:func:`merge_lora` folds the updates back into plain ``Attention`` modules for export.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip4clip.clip.layers import Attention

LORA_TARGETS = ("q", "k", "v", "out")


class LoRA(nn.Module):
    """A low-rank update of a [out_features, in_features] linear map:
    ``delta(x) = (alpha / rank) * B A dropout(x)``.

    A is Kaiming-uniform (as nn.Linear and PEFT), B zero, so delta = 0 at initialisation while
    B still receives gradient. Dropout acts on the LoRA input only, never on the base path.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> update [..., out_features]."""
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The update as a dense [out_features, in_features] matrix, (alpha / rank) * B @ A,
        computed in ``dtype`` (default: the parameters' dtype)."""
        dtype = dtype or self.A.dtype
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, in={self.A.shape[1]}, out={self.B.shape[0]}"


class LoRAAttention(nn.Module):
    """CLIP ``Attention`` plus LoRA updates, with the wrapped module's parameters reused.

    Args:
        attn: the ``Attention`` to wrap; its ``in_proj_weight``, ``in_proj_bias`` and
            ``out_proj`` become this module's (same objects, same state-dict names).
        rank, alpha, dropout: LoRA hyper-parameters (scaling = alpha / rank).
        targets: any of "q", "k", "v" (thirds of the fused in-projection) and "out".
    """

    def __init__(self, attn: Attention, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Sequence[str] = LORA_TARGETS):
        super().__init__()
        targets = _check_targets(targets)
        self.num_heads = attn.num_heads
        self.in_proj_weight = attn.in_proj_weight
        self.in_proj_bias = attn.in_proj_bias
        self.out_proj = attn.out_proj
        dim = attn.in_proj_weight.shape[1]
        ref = attn.in_proj_weight
        for name in LORA_TARGETS:
            module = None
            if name in targets:
                # Where the attention lives and in its dtype, so the wrapped model still runs.
                with torch.device(ref.device):
                    module = LoRA(dim, dim, rank=rank, alpha=alpha, dropout=dropout).to(dtype=ref.dtype)
            self.register_module(f"lora_{name}", module)

    def loras(self):
        """(target, LoRA) pairs present in this module."""
        return [(t, getattr(self, f"lora_{t}")) for t in LORA_TARGETS if getattr(self, f"lora_{t}") is not None]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """x: [N, L, D] -> [N, L, D]; same contract as ``Attention.forward``."""
        n, length, dim = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.lora_q is not None:
            q = q + self.lora_q(x)
        if self.lora_k is not None:
            k = k + self.lora_k(x)
        if self.lora_v is not None:
            v = v + self.lora_v(x)
        head_dim = dim // self.num_heads
        q, k, v = (t.reshape(n, length, self.num_heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(n, length, dim)
        y = self.out_proj(out)
        return y + self.lora_out(out) if self.lora_out is not None else y

    @torch.no_grad()
    def merged(self) -> Attention:
        """A plain ``Attention`` with the updates folded in. One-way: the base parameters are
        updated in place and moved into the new module (this wrapper must not be used after)."""
        dim = self.in_proj_weight.shape[1]
        # Built on meta because every parameter is replaced below: nothing to allocate or init.
        with torch.device("meta"):
            attn = Attention(dim, self.num_heads)
        for i, name in enumerate(("q", "k", "v")):
            lora = getattr(self, f"lora_{name}")
            if lora is not None:
                rows = self.in_proj_weight[i * dim:(i + 1) * dim]
                rows.add_(lora.delta_weight(torch.float32).to(rows.dtype))
        if self.lora_out is not None:
            w = self.out_proj.weight
            w.add_(self.lora_out.delta_weight(torch.float32).to(w.dtype))
        attn.in_proj_weight = self.in_proj_weight
        attn.in_proj_bias = self.in_proj_bias
        attn.out_proj = self.out_proj
        return attn

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, targets={[t for t, _ in self.loras()]}"


def _check_targets(targets: Iterable[str]) -> tuple:
    if isinstance(targets, str):
        raise TypeError(f"LoRA targets must be a sequence such as ('q', 'v'), got the string {targets!r}")
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)} invalid: choose a non-empty subset of {list(LORA_TARGETS)}")
    return targets


def _resblocks(text_transformer: nn.Module, fn: str):
    if not hasattr(text_transformer, "resblocks"):
        hint = " (pass clip.transformer, the text tower's Transformer)" if hasattr(text_transformer, "transformer") else ""
        raise TypeError(f"{fn} expects a Transformer with .resblocks, got {type(text_transformer).__name__}{hint}")
    return text_transformer.resblocks


def inject_lora(text_transformer: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Wrap the attention of every block of ``text_transformer`` (CLIP's ``.transformer``, the
    text tower) in a :class:`LoRAAttention`, in place; returns the transformer.

    Per block and target the update has 2 * D * rank parameters (A [rank, D] + B [D, rank]).
    """
    targets = _check_targets(targets)
    blocks = _resblocks(text_transformer, "inject_lora")
    for i, block in enumerate(blocks):
        if isinstance(block.attn, LoRAAttention):
            raise RuntimeError("LoRA is already injected into this transformer; injecting twice "
                               "would stack updates (build a fresh model, or merge_lora first)")
        if not isinstance(block.attn, Attention):
            raise TypeError(f"resblocks[{i}].attn is {type(block.attn).__name__}; LoRA wraps "
                            "clip4clip.clip.layers.Attention")
    for block in blocks:
        block.attn = LoRAAttention(block.attn, rank=rank, alpha=alpha, dropout=dropout, targets=targets)
    return text_transformer


def merge_lora(text_transformer: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weights and put plain ``Attention`` modules back,
    in place (for export: the state dict is then the plain CLIP layout). Returns the transformer.
    """
    blocks = _resblocks(text_transformer, "merge_lora")
    merged = 0
    for block in blocks:
        if isinstance(block.attn, LoRAAttention):
            block.attn = block.attn.merged()
            merged += 1
    if merged == 0:
        raise ValueError("merge_lora found no LoRAAttention in this transformer (nothing injected?)")
    return text_transformer


__all__ = ["LoRA", "LoRAAttention", "LORA_TARGETS", "inject_lora", "merge_lora"]
