"""meanP: parameter-free mean pooling of normalised frame features (CLIP4Clip default)."""
import torch

from .base import TemporalHead, mean_pool_normalized


class MeanPooling(TemporalHead):
    name = "meanP"

    def __init__(self, width: int = 0):
        super().__init__()

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], [B, T] -> [B, D] (L2-normalised)."""
        return mean_pool_normalized(frame_features, frame_mask)
