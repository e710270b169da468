"""Symmetric InfoNCE over a text-by-video similarity matrix (CLIP / CLIP4Clip), on one process
or over the global batch of many.

This module never calls ``torch.distributed``: the multi-process loss receives its gather as a
plain function (``clip4clip.engine.distributed.all_gather_with_grad``), so ``ClipLoss()`` runs
with no process group at all and the model package stays free of distributed code.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# x [b, D] -> one tensor per rank [b_r, D] in rank order. The gradient of entry r must reach
# rank r's x (summed over every rank that used it); the entry at our own rank is x itself.
Gather = Callable[[torch.Tensor], List[torch.Tensor]]


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, B] (rows texts, columns videos, matching pairs on the diagonal) -> scalar:
    mean of the text->video and video->text cross-entropies. Computed in float32."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive loss needs a square [B, B] matrix, got {tuple(logits.shape)}")
    logits = logits.float()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class ClipLoss(nn.Module):
    """The contrastive loss of the global batch, computed from this process's share of it.

    Args:
        rank, world_size: plain ints. ``world_size=1`` is the single-process loss
            (``contrastive_loss`` of the full matrix) and needs no process group.
        gather: required when ``world_size > 1``; see ``Gather`` above.

    ``forward(text_emb [b, D], video_emb [b, D], logit_scale scalar) -> scalar``, with
    ``logit_scale`` the multiplier itself (``exp`` of the learned log scale, clamped).

    With N processes each computes the cross-entropy of its own b text rows against all B
    videos and of its own b video columns against all B texts, and returns
    ``sum * N / (2 B)``. The mean of that over the ranks is exactly the single-process loss of
    the B-sample batch, and because the gather sends every rank's gradient back to the owner
    of the features, DistributedDataParallel's gradient *averaging* yields exactly the
    single-process gradient too (see ``engine/distributed.py`` for the derivation). Batches of
    unequal size on different ranks are handled.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, gather: Optional[Gather] = None):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ClipLoss needs 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if world_size > 1 and gather is None:
            raise ValueError("ClipLoss with world_size > 1 needs a gather function "
                             "(clip4clip.engine.distributed.all_gather_with_grad)")
        self.rank, self.world_size, self.gather = rank, world_size, gather

    def forward(self, text_emb: torch.Tensor, video_emb: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        if text_emb.shape != video_emb.shape or text_emb.ndim != 2:
            raise ValueError(f"text and video embeddings must both be [b, D], got "
                             f"{tuple(text_emb.shape)} and {tuple(video_emb.shape)}")
        # float32 whatever the autocast dtype: the softmax over up to a few thousand logits
        # of magnitude 100 loses the small probabilities in bf16.
        text_emb, video_emb = text_emb.float(), video_emb.float()
        if self.world_size == 1:
            return contrastive_loss(logit_scale * text_emb @ video_emb.t())
        texts, videos = self.gather(text_emb), self.gather(video_emb)
        if len(texts) != self.world_size:
            raise ValueError(f"gather returned {len(texts)} parts for world_size={self.world_size}")
        start = sum(t.shape[0] for t in texts[: self.rank])
        total = sum(t.shape[0] for t in texts)
        target = torch.arange(start, start + text_emb.shape[0], device=text_emb.device)
        t2v = logit_scale * text_emb @ torch.cat(videos).t()   # [b, B]: our texts, every video
        v2t = logit_scale * video_emb @ torch.cat(texts).t()   # [b, B]: our videos, every text
        local = (F.cross_entropy(t2v, target, reduction="sum")
                 + F.cross_entropy(v2t, target, reduction="sum"))
        return local * (self.world_size / (2 * total))
