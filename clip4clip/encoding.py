"""Inference encoding, one batch at a time: the single definition of what a caption and a clip
become, shared by evaluation (``engine/evaluation.py``) and search (``search/encoder.py``), so
a search ranks exactly as evaluation scores.

Batching, devices, precision and progress bars are the callers'; these functions only say which
model calls make the embedding. All take and return tensors on the model's device.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .model import CLIP4Clip

__all__ = ["clip_embeddings", "text_embeddings", "video_embeddings"]


def text_embeddings(model: CLIP4Clip, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """input_ids, attention_mask [B, L] -> what ``model.score`` takes for texts: [B, D],
    L2-normalised for two-tower heads (a cross-encoder's raw projected feature)."""
    return model.text_features(input_ids, attention_mask)


def video_embeddings(model: CLIP4Clip, video: torch.Tensor, mask: torch.Tensor,
                     weights: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """video [B, T, 3, H, W], mask [B, T] -> [B, D] normalised (a cross-encoder: its frame
    features [B, T, D]). ``weights``: a list that heads with frame weights append theirs [B, T]
    to (evaluation shows their distribution in TensorBoard); the embedding is the same."""
    if not model.two_tower:
        return model.video_features(video, mask)
    if weights is None or not hasattr(model.head, "frame_weights"):
        return model.encode_video(video, mask)
    v, w = model.head(model.encode_frames(video, frame_mask=mask), mask, return_weights=True)
    weights.append(w.float().cpu())
    return v


def clip_embeddings(model: CLIP4Clip, video: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two-tower models: (per-frame features [B, T, D] (not normalised), the clip embedding
    [B, D] pooled from them), every frame through the image tower once; the embedding equals
    ``video_embeddings`` (search keeps the frame features for moments)."""
    feats = model.encode_frames(video, frame_mask=mask)  # what encode_video pools
    return feats, model.head(feats, mask)
