"""Heads on top of CLIP's frame features. Temporal heads pool frames [B, T, D] + mask [B, T]
into a video embedding [B, D] (two-tower); pair heads (``PairHead``) score (text, video) pairs
instead: tightTransf's cross transformer and the token-interaction methods (DRL, ...)."""
import inspect
from typing import Dict, Type

from .base import Head, PairHead, TemporalHead, l2_normalize, masked_mean, mean_pool_normalized
from .drl import DRL
from .frameweight import FrameWeight
from .meanp import MeanPooling
from .seqlstm import SeqLSTM
from .seqtransf import SeqTransf
from .tighttransf import TightTransf
from .ts2net import TS2Net
from .xclip import XCLIP

# Order matters to the official-checkpoint loader, which takes the first head whose keys it finds:
# the successors (which carry seqTransf's keys beside their own) before seqTransf.
HEADS: Dict[str, Type[Head]] = {cls.name: cls for cls in (DRL, TS2Net, XCLIP, MeanPooling, SeqLSTM, SeqTransf, FrameWeight,
                                                           TightTransf)}
#: The head of a model whose config or checkpoint names none (CLIP4Clip's meanP: zero-shot CLIP).
DEFAULT_HEAD = "meanP"
# The two-tower subset: heads that turn a video into one embedding.
TEMPORAL_HEADS: Dict[str, Type[TemporalHead]] = {n: c for n, c in HEADS.items() if c.two_tower}


def build_head(name: str, width: int, **kwargs) -> Head:
    """Build a head by its name ('meanP', 'seqLSTM', 'seqTransf', 'frameweight', 'tightTransf',
    'drl', ...: the keys of ``HEADS``)."""
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; expected one of {sorted(HEADS)}")
    cls = HEADS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "width"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"head '{name}' does not take {unknown}; it accepts {sorted(accepted)}")
    return cls(width=width, **kwargs)


__all__ = ["DEFAULT_HEAD", "DRL", "HEADS", "TEMPORAL_HEADS", "build_head", "Head", "PairHead", "TemporalHead", "MeanPooling", "SeqLSTM",
           "SeqTransf", "FrameWeight", "TightTransf", "TS2Net", "XCLIP", "l2_normalize", "masked_mean", "mean_pool_normalized"]
