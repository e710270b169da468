"""What every head shares: the interfaces (any head, temporal heads) and masked mean pooling."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

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
    #: Key prefixes that mark an official checkpoint as this head's, when ``official_prefixes``
    #: alone would not tell it from another (DRL, X-CLIP and TS2-Net keep seqTransf's
    #: ``transformerClip.*`` beside their own modules). The loader tries heads in ``HEADS`` order.
    official_markers: tuple = ()

    @classmethod
    def convert_official_clip(cls, clip_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The official checkpoint's ``clip.*`` part (prefix removed) -> OpenAI-layout CLIP keys.
        Default: already in that layout (TS2-Net renames the blocks it wraps)."""
        return dict(clip_sd)

    def attach(self, clip: nn.Module) -> None:
        """Inject what this head needs into the CLIP it sits on (TS2-Net's token shift in the
        vision blocks), in place; called once when the model is put together. Default: nothing.
        Injected modules must keep CLIP's parameter names, so CLIP weights load unchanged."""

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


class PairHead(Head):
    """A head that scores (text, video) pairs instead of embedding videos: the cross-encoder
    (tightTransf) and the token-interaction methods (DRL, X-CLIP, TS2-Net). There is no video
    embedding to index; evaluation keeps each side's features and scores every pair in chunks
    of texts.

    What the model hands a pair head:

    * text: with ``text_tokens`` the projected state of every text position ``[B, L, D]``
      (padding included) and its mask ``[B, L]`` (1 = real token, the caption's
      ``attention_mask``; the end-of-text token is the last real one); otherwise the projected
      end-of-text feature ``[B, D]``. ``text_features`` turns that into what is stored.
    * video: with ``visual_tokens`` every output token of each frame ``[B, T, 1 + HW, D]``
      (``ln_post`` and ``proj`` applied to all of them; index 0 = CLS); otherwise the per-frame
      CLIP feature ``[B, T, D]``; and the frame mask ``[B, T]``. ``video_features`` turns that
      into what is stored (per-video work such as a temporal transformer happens here, once per
      video, not once per pair).

    Stored features keep the sample on dim 0 (evaluation concatenates and slices them there);
    their other dims are the head's own layout. ``pair_scores`` scores a chunk of texts against
    every video: what evaluation ranks. ``train_logits`` gives a training batch's logits (text i
    matches video i) and any extra loss term (DRL's CDCR); the model adds the cross-entropy.

    ``clamp_logit_scale``: whether the logit scale a head multiplies by is CLIP4Clip's
    (exp clamped at 100) or the raw ``exp(logit_scale)`` the successors' code uses.
    """

    two_tower = False
    text_tokens: bool = False
    visual_tokens: bool = False
    clamp_logit_scale: bool = True

    def text_features(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return text

    def video_features(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        return frames

    def pair_scores(self, text: torch.Tensor, text_mask: Optional[torch.Tensor], video: torch.Tensor,
                    video_mask: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """Stored text features of ``nt`` captions against those of ``Nv`` videos -> [nt, Nv]."""
        raise NotImplementedError

    def forward(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                text_chunk: Optional[int] = None, *, text_mask: Optional[torch.Tensor] = None,
                logit_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every text against every video -> [Nt, Nv] (rows are texts), ``text_chunk`` texts per
        pass (None = all); the result does not depend on it: every score is a function of one
        pair only."""
        if self.text_tokens and text_mask is None:
            raise ValueError(f"the {self.name} head scores word features: it needs the text mask [Nt, L]")
        if logit_scale is None:
            logit_scale = text.new_tensor(1.0)
        nt = text.shape[0]
        step = nt if not text_chunk else max(1, int(text_chunk))
        rows = [self.pair_scores(text[i:i + step], None if text_mask is None else text_mask[i:i + step],
                                 video, video_mask, logit_scale) for i in range(0, nt, step)]
        return torch.cat(rows) if rows else text.new_zeros(0, video.shape[0])

    def train_logits(self, text: torch.Tensor, text_mask: Optional[torch.Tensor], video: torch.Tensor,
                     video_mask: torch.Tensor, logit_scale: torch.Tensor
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A training batch (text i matches video i) -> (logits [B, B] that the model's
        symmetric cross-entropy takes, an extra loss term to add or None). Default: the
        evaluation scores, nothing extra."""
        return self(text, video, video_mask, text_mask=text_mask, logit_scale=logit_scale), None


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


__all__ = ["Head", "OFFICIAL_LN_EPS", "PairHead", "TemporalHead", "l2_normalize", "masked_mean", "mean_pool_normalized",
           "official_block", "official_layer_norm", "copy_text_blocks"]
