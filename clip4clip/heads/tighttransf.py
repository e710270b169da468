"""tightTransf: CLIP4Clip's cross-encoder scorer. Each (text, video) pair becomes one sequence
[text feature ; frame features] that a transformer reads jointly; its pooled first position is
turned into one logit by a linear layer.

It is not a temporal head: there is no video embedding to index. Scoring Nt texts against Nv
videos takes Nt * Nv transformer passes, so evaluation keeps the frame features and scores in
chunks of texts, and search (one embedding per video) cannot use it.

Faithful to the official code (``modules/module_cross.py``; ``modeling.py``
``_cross_similarity`` / ``_get_cross_output``):

- the text side is one token, the projected end-of-text feature CLIP's text tower returns
  (not normalised), and its attention mask is one whatever the caption's padding;
- learned position embeddings are added to the concatenated sequence, then dropout (the
  cross config's ``hidden_dropout_prob`` 0.1); upstream's token-type embeddings and embedding
  LayerNorm are commented out, so text and frames are told apart only by position;
- CLIP-style pre-LN residual blocks (``nn.MultiheadAttention`` parameter layout, QuickGELU
  MLP) with the BERT-style LayerNorm of ``until_module`` (eps 1e-12); padded frames are
  masked out of attention (upstream: additive -1e6 mask, per sample since its issue #22 fix);
- pooler: LayerNorm, first position, Linear(D, D), QuickGELU; then ``similarity_dense``
  Linear(D, 1). No logit scale and no normalisation anywhere.

Parameter names are upstream's (``cross.embeddings.position_embeddings``,
``cross.transformer.resblocks.N.*``, ``cross.pooler.{ln_pool,dense}``, ``similarity_dense``),
so an official checkpoint loads key for key.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..clip.layers import QuickGELU, Transformer, default_heads, key_padding_mask
from .base import PairHead, copy_text_blocks, official_block, official_layer_norm

# modules/cross-base/cross_config.json. The head count is not stored in the weights, so an
# official checkpoint is always read with the 8 heads it was trained with.
OFFICIAL_HEADS = 8
INIT_STD = 0.02          # initializer_range


class CrossEmbeddings(nn.Module):
    """Position embeddings + dropout over the concatenated sequence (no token types)."""

    def __init__(self, num_positions: int, width: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(num_positions, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """[N, L, D] -> [N, L, D]."""
        pos = self.position_embeddings.weight[: sequence.shape[1]].to(sequence.dtype)
        return self.dropout(sequence + pos)


class CrossPooler(nn.Module):
    """[N, L, D] -> [N, D]: LayerNorm, first position, Linear, QuickGELU."""

    def __init__(self, width: int):
        super().__init__()
        self.ln_pool = official_layer_norm(width)
        self.dense = nn.Linear(width, width)
        self.activation = QuickGELU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # LayerNorm acts per position, so normalising position 0 alone equals upstream's
        # normalise-the-sequence-then-take-position-0.
        return self.activation(self.dense(self.ln_pool(hidden[:, 0])))


class CrossEncoder(nn.Module):
    """Upstream's ``CrossModel``: embeddings -> transformer -> pooler."""

    def __init__(self, width: int, num_layers: int, heads: int, num_positions: int, dropout: float,
                 activation: str = "quick_gelu"):
        super().__init__()
        self.embeddings = CrossEmbeddings(num_positions, width, dropout)
        self.transformer = Transformer(width, num_layers, heads, block_fn=partial(official_block, activation=activation))
        self.pooler = CrossPooler(width)

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sequence [N, L, D], mask [N, L] (1 = attend) -> pooled [N, D]."""
        x = self.transformer(self.embeddings(sequence), attn_mask=key_padding_mask(mask))
        return self.pooler(x)


class TightTransf(PairHead):
    """Args:
        width: feature width D (CLIP's embed_dim; 512 for ViT-B, as upstream's cross config).
        num_layers: cross transformer blocks (upstream ``cross_num_hidden_layers``, default 4).
        heads: attention heads (default D // 64, i.e. 8 for D = 512 as upstream).
        num_positions: rows of the position table (77 = CLIP's text context, copied from it);
            a video of T frames needs T + 1 positions.
        dropout: dropout after the position embeddings (upstream 0.1); active in training only.
    """

    name = "tightTransf"
    official_prefixes = ("cross.", "similarity_dense.")

    def __init__(self, width: int, num_layers: int = 4, heads: Optional[int] = None,
                 num_positions: int = 77, dropout: float = 0.1, activation: str = "quick_gelu"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"tightTransf needs num_layers >= 1, got {num_layers}")
        if num_positions < 2:
            raise ValueError(f"tightTransf needs num_positions >= 2 (text + one frame), got {num_positions}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"tightTransf dropout must be in [0, 1), got {dropout}")
        self.width = width
        self.num_positions = num_positions
        self.cross = CrossEncoder(width, num_layers, heads or default_heads(width), num_positions, dropout, activation)
        self.similarity_dense = nn.Linear(width, 1)
        self.apply(_official_init)

    # ------------------------------------------------------------------ scoring
    def pair_logits(self, text: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Aligned pairs: text [N, D] with video frames [N, T, D] and mask [N, T] -> logits [N]."""
        n, t, d = frames.shape
        if t + 1 > self.num_positions:
            raise ValueError(f"tightTransf head: {t} frames per video (dataset.max_frames={t}) need {t + 1} positions "
                             f"(text + frames) but its position table has {self.num_positions} rows "
                             f"(model.head.num_positions={self.num_positions}); set dataset.max_frames <= "
                             f"{self.num_positions - 1} or raise model.head.num_positions")
        if text.shape != (n, d) or frame_mask.shape != (n, t):
            raise ValueError(f"tightTransf takes text [N, D], frames [N, T, D], mask [N, T]; got "
                             f"{tuple(text.shape)}, {tuple(frames.shape)}, {tuple(frame_mask.shape)}")
        dtype = torch.promote_types(text.dtype, frames.dtype)
        sequence = torch.cat([text.to(dtype).unsqueeze(1), frames.to(dtype)], dim=1)   # [N, 1 + T, D]
        # The text token is always attended: CLIP's text tower already pooled the caption into
        # it, so its padding is meaningless here (upstream replaces that mask by ones).
        mask = torch.cat([frame_mask.new_ones(n, 1), frame_mask], dim=1)              # [N, 1 + T]
        return self.similarity_dense(self.cross(sequence, mask)).squeeze(-1)

    def pair_scores(self, text: torch.Tensor, text_mask: Optional[torch.Tensor], frames: torch.Tensor,
                    frame_mask: torch.Tensor, logit_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A chunk of texts against every video: text [c, D] (projected EOT features, not
        normalised), frames [Bv, T, D] (per-frame CLIP features, not normalised), frame_mask
        [Bv, T] (1 = real frame) -> logits [c, Bv]. No logit scale (upstream has none here)."""
        if frames.ndim != 3 or frame_mask.shape != frames.shape[:2] or text.ndim != 2:
            raise ValueError(f"tightTransf takes text [Bt, D], frames [Bv, T, D], mask [Bv, T]; got "
                             f"{tuple(text.shape)}, {tuple(frames.shape)}, {tuple(frame_mask.shape)}")
        c, bv = text.shape[0], frames.shape[0]
        # Pair p = i * Bv + j holds text i and video j (upstream's repeat order).
        pair_text = text.repeat_interleave(bv, dim=0)
        pair_frames = frames.unsqueeze(0).expand(c, -1, -1, -1).reshape(c * bv, *frames.shape[1:])
        pair_mask = frame_mask.repeat(c, 1)
        return self.pair_logits(pair_text, pair_frames, pair_mask).view(c, bv)

    # ------------------------------------------------------------------ weights
    @property
    def max_frames(self) -> int:
        return self.num_positions - 1  # one position is the text feature's

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """As upstream's ``from_pretrained``: positions <- CLIP's text positional embedding,
        block i <- text block i (the first ``num_layers``). The pooler and ``similarity_dense``
        keep their random init."""
        pos = clip_state_dict["positional_embedding"]
        if pos.shape[1] != self.width:
            raise ValueError(f"cannot initialise tightTransf (width {self.width}) from a CLIP whose text "
                             f"tower is {pos.shape[1]} wide; set model.init_head_from_clip=false")
        n = min(self.num_positions, pos.shape[0])
        with torch.no_grad():
            self.cross.embeddings.position_embeddings.weight[:n].copy_(pos[:n])
        copy_text_blocks(self.cross.transformer, clip_state_dict, self.name)

    @classmethod
    def official_kwargs(cls, official_sd: Mapping[str, torch.Tensor]) -> dict:
        blocks = {k.split(".")[3] for k in official_sd if k.startswith("cross.transformer.resblocks.")}
        pos = official_sd.get("cross.embeddings.position_embeddings.weight")
        # A checkpoint without blocks or positions still builds (default sizes), so the loader
        # can list what is missing.
        return {"num_layers": len(blocks) or 4, "heads": OFFICIAL_HEADS,
                "num_positions": int(pos.shape[0]) if pos is not None else 77}

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # Same names as upstream: nothing to rename.
        return {k: v for k, v in official_sd.items() if k.startswith(self.official_prefixes)}


def _official_init(module: nn.Module) -> None:
    """Upstream's ``PreTrainedModel.init_weights``, applied to every module: N(0, 0.02) for
    Linear and Embedding weights, zero Linear biases, LayerNorm 1 / 0. The attention
    in-projection is a bare parameter there too, so it keeps ``nn.MultiheadAttention``'s
    xavier-uniform init and zero bias (as ``Attention`` does). ``init_from_clip`` then replaces
    the blocks and positions."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


__all__ = ["TightTransf", "CrossEncoder", "OFFICIAL_HEADS"]
