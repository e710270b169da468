"""What every head shares: the interfaces (any head, temporal heads) and masked mean pooling."""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from ..clip.layers import LayerNorm, ResidualAttentionBlock, activation_layer


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ||x|| as CLIP4Clip computes it (no epsilon: a zero vector is a bug upstream)."""
    return x / x.norm(dim=dim, keepdim=True)


def masked_mean(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean of valid frames. frames [B, T, D], frame_mask [B, T] (1 = valid) -> [B, D].
    A video with no valid frame divides by 1 (as CLIP4Clip) instead of producing NaN."""
    m = frame_mask.to(frames.dtype).unsqueeze(-1)
    denom = m.sum(dim=1).clamp_min(1.0)
    return (frames * m).sum(dim=1) / denom


def mean_pool_normalized(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's meanP: normalise each frame, average valid frames, normalise. -> [B, D]."""
    return l2_normalize(masked_mean(l2_normalize(frames), frame_mask))


class Head(nn.Module):
    """What every head shares: its CLIP4Clip name, how it starts from CLIP weights
    (``init_from_clip``) and how it reads the official CLIP4Clip checkpoint keys
    (``official_prefixes`` / ``official_kwargs`` / ``convert_official``), so the loaders never
    branch on the head type.

    ``two_tower`` says how the model scores: True for temporal heads (a video becomes one
    embedding, scored against texts by a dot product, so videos can be indexed); False for a
    cross-encoder (``tightTransf``), which scores each (text, video) pair jointly.
    """

    name: str = ""
    # Prefixes of the official CLIP4Clip state dict that identify this head.
    official_prefixes: tuple = ()
    two_tower: bool = True

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Initialise from a CLIP state dict (OpenAI layout). Default: nothing to copy."""

    @classmethod
    def official_kwargs(cls, official_sd: Mapping[str, torch.Tensor]) -> dict:
        """Constructor arguments read off an official checkpoint's non-CLIP keys."""
        return {}

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Official non-CLIP keys -> this head's state-dict keys. Default: no parameters."""
        return {}

    #: Official non-CLIP keys outside ``official_prefixes`` that this head reads, and those it
    #: knowingly ignores (CLIP4Clip creates some modules it never uses).
    official_extra_keys: tuple = ()
    official_ignored_keys: tuple = ()

    @property
    def max_frames(self):
        """The most frames per video this head takes (its position table), or None: no limit.
        Checked against ``dataset.max_frames`` before a run starts."""
        return None

    def official_keys(self, official_sd: Mapping[str, torch.Tensor]) -> set:
        """The keys of an official checkpoint's non-CLIP part that this head accounts for; the
        loader refuses any other."""
        prefixes = self.official_prefixes
        return {k for k in official_sd if (prefixes and k.startswith(prefixes))
                or k in self.official_extra_keys or k in self.official_ignored_keys}


def copy_text_blocks(transformer: nn.Module, clip_state_dict: Mapping[str, torch.Tensor], head: str) -> None:
    """Initialise a head's transformer from CLIP's text tower, block i <- text block i (CLIP4Clip's
    init for seqTransf, frameweight and tightTransf)."""
    new = {}
    for key in transformer.state_dict():
        src = "transformer." + key
        if src not in clip_state_dict:
            raise KeyError(f"cannot initialise {head} from CLIP: '{src}' missing (the text tower has "
                           f"fewer blocks than the head's {len(transformer.resblocks)}?)")
        new[key] = clip_state_dict[src]
    transformer.load_state_dict(new, strict=True)


class TemporalHead(Head):
    """Frame features [B, T, D] + frame mask [B, T] -> L2-normalised video embedding [B, D]."""

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


#: CLIP4Clip's head transformers (module_cross: seqTransf's TransformerClip and tightTransf's
#: cross model) use until_module's BERT-style LayerNorm, eps 1e-12, not CLIP's 1e-5.
OFFICIAL_LN_EPS = 1e-12


def official_layer_norm(width: int) -> nn.Module:
    return LayerNorm(width, eps=OFFICIAL_LN_EPS)


def official_block(width: int, heads: int, activation: str = "quick_gelu") -> nn.Module:
    """A CLIP residual attention block with CLIP4Clip's head LayerNorm (eps 1e-12). ``activation``
    is the CLIP's own (``CLIPConfig.activation``): heads copy the text tower's blocks, so they
    must compute them with the same MLP activation (GELU for most LAION models)."""
    return ResidualAttentionBlock(width, heads, act_layer=activation_layer(activation), norm_layer=official_layer_norm)


__all__ = ["Head", "OFFICIAL_LN_EPS", "TemporalHead", "l2_normalize", "masked_mean", "mean_pool_normalized",
           "official_block", "official_layer_norm", "copy_text_blocks"]
