"""CLIP4Clip: CLIP's two towers plus a head on the frame features: a temporal head that pools
them into one video embedding (two-tower: meanP, seqLSTM, seqTransf, frameweight), or the
tightTransf cross-encoder that scores each (text, video) pair jointly.

Model code takes plain arguments (a CLIP module and a head module); configuration files and
distributed training live elsewhere.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch
from torch import nn

from .clip import CLIP
from .heads import DEFAULT_HEAD, HEADS, Head, build_head, l2_normalize
from .loss import contrastive_loss

# Maximum log logit scale: CLIP clamps logit_scale.exp() at 100.
MAX_LOGIT_SCALE = 4.605170185988092


class CLIP4Clip(nn.Module):
    """Args:
        clip: a CLIP model (its text tower and image tower are used as they are).
        head: a temporal head mapping [B, T, D] frame features to [B, D] videos, or a
            cross-encoder (``two_tower`` False) scoring texts against videos' frames.

    ``text_features`` / ``video_features`` / ``score`` are the retrieval interface common to
    both kinds: two-tower features are normalised embeddings [B, D] scored by a scaled dot
    product; a cross-encoder's are the raw text feature [B, D] and the frame features
    [B, T, D] (with the video mask), scored pair by pair.
    """

    def __init__(self, clip: CLIP, head: Head):
        super().__init__()
        self.clip = clip
        self.head = head

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    def check_frames(self, max_frames: int) -> None:
        """Refuse, before any work, a frame count the head's position table cannot take."""
        limit = self.head.max_frames
        if limit is not None and max_frames > limit:
            raise ValueError(f"dataset.max_frames={max_frames} but the {self.head.name} head takes at most {limit} "
                             f"frames (its position table); lower dataset.max_frames or raise it with "
                             f"+model.head.num_positions={max_frames + getattr(self.head, 'num_positions', limit) - limit}")

    @property
    def two_tower(self) -> bool:
        """False for a cross-encoder head: no video embedding exists, pairs are scored jointly."""
        return self.head.two_tower

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    normalize: bool = True) -> torch.Tensor:
        """input_ids [B, L] (SOT ... EOT, zero padded) -> [B, D].

        ``attention_mask`` is accepted for interface symmetry; CLIP's causal attention and
        end-of-text pooling already make padding irrelevant."""
        feats = self.clip.encode_text(input_ids)
        return l2_normalize(feats) if normalize else feats

    def encode_frames(self, video: torch.Tensor, **context) -> torch.Tensor:
        """video [B, T, 3, H, W] -> per-frame CLIP image features [B, T, D] (not normalised)."""
        b, t = video.shape[:2]
        feats = self.clip.encode_image(video.reshape(b * t, *video.shape[2:]), **context)
        return feats.reshape(b, t, -1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """video [B, T, 3, H, W], video_mask [B, T] (1 = real frame) -> [B, D] normalised.
        Two-tower heads only: a cross-encoder has no video embedding (see ``video_features``)."""
        if not self.two_tower:
            raise ValueError(f"the {self.head.name} head is a cross-encoder: it has no video embedding; "
                             "use video_features() and score()")
        return self.head(self.encode_frames(video, frame_mask=video_mask), video_mask)

    def similarity(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """Normalised text [Bt, D] and video [Bv, D] embeddings -> logits [Bt, Bv]
        (rows are texts), scaled by exp(logit_scale) clamped at 100."""
        scale = self.clip.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * text_emb @ video_emb.t()

    # ------------------------------------------------------------------ retrieval interface
    def text_features(self, input_ids: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What ``score`` takes for texts: [B, D], L2-normalised for two-tower heads, the raw
        projected end-of-text feature for a cross-encoder (CLIP4Clip feeds it unnormalised)."""
        return self.encode_text(input_ids, attention_mask, normalize=self.two_tower)

    def video_features(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """What ``score`` takes for videos: the video embedding [B, D] (two-tower) or the
        per-frame features [B, T, D], not normalised (cross-encoder; keep ``video_mask``)."""
        if self.two_tower:
            return self.encode_video(video, video_mask)
        return self.encode_frames(video, frame_mask=video_mask)

    def score(self, text: torch.Tensor, video: torch.Tensor, video_mask: Optional[torch.Tensor] = None,
              text_chunk: Optional[int] = None) -> torch.Tensor:
        """Features from ``text_features`` [Bt, D] and ``video_features`` -> logits [Bt, Bv]
        (rows are texts). Two-tower: ``similarity`` (``video_mask`` unused). Cross-encoder:
        the head scores every pair, ``text_chunk`` texts at a time (memory of text_chunk * Bv
        sequences; the result does not depend on it)."""
        if self.two_tower:
            return self.similarity(text, video)
        if video_mask is None:
            raise ValueError(f"the {self.head.name} head needs the video mask [Bv, T] to score")
        return self.head(text, video, video_mask, text_chunk=text_chunk)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                video: torch.Tensor, video_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns {'text_emb', 'video_emb', 'logits' [B, B], 'loss' scalar}: the symmetric
        cross-entropy over the batch's text-by-video matrix (matching pairs on the diagonal).
        'text_emb' / 'video_emb' are the ``text_features`` / ``video_features`` of the batch:
        [B, D] and [B, D] for two-tower heads, [B, D] and [B, T, D] for a cross-encoder."""
        text_emb = self.text_features(input_ids, attention_mask)
        video_emb = self.video_features(video, video_mask)
        logits = self.score(text_emb, video_emb, video_mask)
        return {"text_emb": text_emb, "video_emb": video_emb, "logits": logits,
                "loss": contrastive_loss(logits)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_clip(cls, clip: CLIP, head: str = DEFAULT_HEAD, init_head_from_clip: bool = True,
                  **head_kwargs) -> "CLIP4Clip":
        """Wrap a CLIP with a head: the one way a model is put together (new runs, our
        checkpoints and official ones alike). With ``init_head_from_clip`` the head is
        initialised from the CLIP weights where it knows how (seqTransf/frameweight/tightTransf
        copy the text tower, as CLIP4Clip); loaders pass False and then load the head's weights."""
        if head in HEADS and "activation" in inspect.signature(HEADS[head].__init__).parameters:
            # Heads built from CLIP blocks compute them as the CLIP does (QuickGELU / GELU).
            head_kwargs = {"activation": clip.config.activation, **head_kwargs}
        head_module = build_head(head, clip.embed_dim, **head_kwargs)
        if init_head_from_clip:
            head_module.init_from_clip(clip.state_dict())
        return cls(clip, head_module)
