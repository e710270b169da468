"""seqLSTM: a one-layer LSTM over frames with a residual, then meanP (CLIP4Clip)."""
from typing import Dict, Mapping

import torch
from torch import nn

from .base import TemporalHead, mean_pool_normalized


class SeqLSTM(TemporalHead):
    name = "seqLSTM"
    official_prefixes = ("lstm_visual.",)
    official_ignored_keys = ("frame_position_embeddings.weight",)  # created by CLIP4Clip, never used

    def __init__(self, width: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size=width, hidden_size=width, batch_first=True, num_layers=1)

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D], [B, T] -> [B, D].

        Valid frames must come first (the data pipeline pads at the end). The LSTM is causal,
        so outputs at valid positions equal CLIP4Clip's packed-sequence outputs without
        packing; padded positions are excluded by the masked mean either way."""
        out, _ = self.lstm(frame_features)
        return mean_pool_normalized(out + frame_features, frame_mask)

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # CLIP4Clip also creates frame_position_embeddings for seqLSTM but never uses them.
        return {"lstm." + k[len("lstm_visual."):]: v for k, v in official_sd.items()
                if k.startswith("lstm_visual.")}

