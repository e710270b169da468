"""Frame Weight Predict V2 (the seed model): seqTransf, then a learned softmax weighting of
frames instead of the plain mean."""
import torch
from torch import nn

from .base import l2_normalize
from .seqtransf import SeqTransf


class FrameWeight(SeqTransf):
    """After the seqTransf blocks and residual, w = Linear(D,1)(ReLU(Linear(D,D)(v))) per frame;
    alpha = softmax(w / temperature) over VALID frames; video = normalise(sum alpha_i v_i/|v_i|).

    The seed's code let padded frames into the softmax; here they get exactly zero weight.
    """

    name = "frameweight"
    official_prefixes = ()

    def __init__(self, width: int, num_blocks: int = 4, heads: int = None, num_positions: int = 77,
                 temperature: float = 0.1, activation: str = "quick_gelu"):
        super().__init__(width, num_blocks=num_blocks, heads=heads, num_positions=num_positions,
                         activation=activation)
        if temperature <= 0:
            raise ValueError(f"frameweight temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.weight_predictor = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def frame_weights(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Contextualised frames [B, T, D], mask [B, T] -> weights [B, T] (sum 1 over valid)."""
        logits = self.weight_predictor(frames).squeeze(-1).float() / self.temperature
        logits = logits.masked_fill(~frame_mask.bool(), float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor,
                return_weights: bool = False):
        """[B, T, D], [B, T] -> [B, D] (and the weights [B, T] if asked)."""
        v = self.contextualize(frame_features, frame_mask)
        alpha = self.frame_weights(v, frame_mask)
        video = l2_normalize((alpha.unsqueeze(-1).to(v.dtype) * l2_normalize(v)).sum(dim=1))
        return (video, alpha) if return_weights else video
