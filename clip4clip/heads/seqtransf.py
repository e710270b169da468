"""seqTransf: frame position embeddings + residual transformer blocks over frames, then
meanP (CLIP4Clip). Initialised from CLIP's text tower, as CLIP4Clip does."""
from functools import partial
from typing import Dict, Mapping

import torch
from torch import nn

from ..clip.layers import Transformer, default_heads, init_transformer_, key_padding_mask
from .base import TemporalHead, copy_text_blocks, mean_pool_normalized, official_block


class SeqTransf(TemporalHead):
    """Args:
        width: feature width D (CLIP's embed_dim).
        num_blocks: transformer blocks (CLIP4Clip: 4).
        heads: attention heads (default D // 64, as CLIP's text tower).
        num_positions: rows of the frame position table (77 = CLIP's text context, so it can
            be copied from the text positional embedding); must be >= the number of frames.
    """

    name = "seqTransf"
    official_prefixes = ("transformerClip.",)
    official_extra_keys = ("frame_position_embeddings.weight",)

    def __init__(self, width: int, num_blocks: int = 4, heads: int = None, num_positions: int = 77,
                 activation: str = "quick_gelu"):
        super().__init__()
        self.num_positions = num_positions
        self.frame_position_embeddings = nn.Embedding(num_positions, width)
        # module_cross's blocks: CLIP's, with the head LayerNorm at eps 1e-12 as upstream.
        self.transformer = Transformer(width, num_blocks, heads or default_heads(width),
                                       block_fn=partial(official_block, activation=activation))
        init_transformer_(self.transformer)
        # nn.Embedding keeps its N(0, 1) init, as in CLIP4Clip before the copy from CLIP: a
        # position signal as large as the (layer-normed) features, so order is learnable at once.

    def contextualize(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], [B, T] -> [B, T, D]: frames after the blocks plus the residual to the
        input. Padded frames are never attended to, so valid outputs ignore padding content."""
        t = frame_features.shape[1]
        if t > self.num_positions:
            raise ValueError(f"{self.name} head: {t} frames per video (dataset.max_frames={t}) but only "
                             f"{self.num_positions} frame positions (model.head.num_positions={self.num_positions}); "
                             f"set dataset.max_frames <= {self.num_positions} or raise model.head.num_positions")
        x = frame_features + self.frame_position_embeddings.weight[:t].to(frame_features.dtype)
        x = self.transformer(x, attn_mask=key_padding_mask(frame_mask))
        return x + frame_features

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], [B, T] -> [B, D] (L2-normalised)."""
        return mean_pool_normalized(self.contextualize(frame_features, frame_mask), frame_mask)

    @property
    def max_frames(self) -> int:
        return self.num_positions

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Frame positions <- text positional embedding; block i <- text block i."""
        pos = clip_state_dict["positional_embedding"]
        n = min(self.num_positions, pos.shape[0])
        with torch.no_grad():
            self.frame_position_embeddings.weight[:n].copy_(pos[:n])
        copy_text_blocks(self.transformer, clip_state_dict, self.name)

    @classmethod
    def official_kwargs(cls, official_sd):
        blocks = {k.split(".")[2] for k in official_sd if k.startswith("transformerClip.resblocks.")}
        return {"num_blocks": len(blocks),
                "num_positions": official_sd["frame_position_embeddings.weight"].shape[0]}

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {"transformer." + k[len("transformerClip."):]: v for k, v in official_sd.items()
               if k.startswith("transformerClip.")}
        out["frame_position_embeddings.weight"] = official_sd["frame_position_embeddings.weight"]
        return out
