"""Temporal aggregation heads: frame features [B, T, D] + mask [B, T] -> video [B, D]."""
import inspect
from typing import Dict, Type

from .base import TemporalHead, l2_normalize, masked_mean, mean_pool_normalized
from .frameweight import FrameWeight
from .meanp import MeanPooling
from .seqlstm import SeqLSTM
from .seqtransf import SeqTransf

HEADS: Dict[str, Type[TemporalHead]] = {cls.name: cls for cls in (MeanPooling, SeqLSTM, SeqTransf, FrameWeight)}


def build_head(name: str, width: int, **kwargs) -> TemporalHead:
    """Build a head by its CLIP4Clip name ('meanP', 'seqLSTM', 'seqTransf', 'frameweight')."""
    if name not in HEADS:
        raise ValueError(f"unknown temporal head '{name}'; expected one of {sorted(HEADS)}")
    cls = HEADS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "width"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"temporal head '{name}' does not take {unknown}; it accepts {sorted(accepted)}")
    return cls(width=width, **kwargs)


__all__ = ["HEADS", "build_head", "TemporalHead", "MeanPooling", "SeqLSTM", "SeqTransf",
           "FrameWeight", "l2_normalize", "masked_mean", "mean_pool_normalized"]
