"""Symmetric InfoNCE over a text-by-video similarity matrix (CLIP / CLIP4Clip)."""
import torch
import torch.nn.functional as F


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, B] (rows texts, columns videos, matching pairs on the diagonal) -> scalar:
    mean of the text->video and video->text cross-entropies. Computed in float32."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive loss needs a square [B, B] matrix, got {tuple(logits.shape)}")
    logits = logits.float()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
