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
        head.attach(clip)  # modules a head injects into the towers (TS2-Net's token shift)

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
            # The head names the setting that would take these frames (X-CLIP: its [T, T] frame
            # tables; TS2-Net: (K + 1) positions per frame); by default the position table.
            if hasattr(self.head, "frames_setting"):
                key, value = self.head.frames_setting(max_frames)
            else:
                key, value = "num_positions", max_frames + getattr(self.head, "num_positions", limit) - limit
            raise ValueError(f"dataset.max_frames={max_frames} but the {self.head.name} head takes at most {limit} "
                             f"frames (its {key} table); lower dataset.max_frames or raise it with "
                             f"++model.head.{key}={value}")

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

    def encode_frames(self, video: torch.Tensor, tokens: bool = False, **context) -> torch.Tensor:
        """video [B, T, 3, H, W] -> per-frame CLIP image features [B, T, D] (not normalised);
        with ``tokens`` every output token of each frame [B, T, 1 + HW, D] (index 0 = CLS)."""
        b, t = video.shape[:2]
        images = video.reshape(b * t, *video.shape[2:])
        if tokens:
            return self.clip.visual.forward_tokens(images, **context).reshape(b, t, -1, self.embed_dim)
        return self.clip.encode_image(images, **context).reshape(b, t, -1)

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
    @property
    def text_tokens(self) -> bool:
        """True when the head scores per-word text features (DRL, X-CLIP): ``text_features``
        is then [B, L, D] and ``score`` needs the captions' attention mask."""
        return bool(getattr(self.head, "text_tokens", False))

    def text_features(self, input_ids: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What ``score`` takes for texts: [B, D], L2-normalised for two-tower heads; for a pair
        head what it stores from the raw projected end-of-text feature [B, D] (tightTransf,
        TS2-Net) or from every position's projected state [B, L, D] (``text_tokens``)."""
        if self.two_tower:
            return self.encode_text(input_ids, attention_mask, normalize=True)
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        if self.text_tokens:
            _, hidden = self.clip.encode_text(input_ids, return_hidden=True)
            return self.head.text_features(hidden, attention_mask)
        return self.head.text_features(self.encode_text(input_ids, normalize=False), attention_mask)

    def video_features(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """What ``score`` takes for videos: the video embedding [B, D] (two-tower) or what a
        pair head stores per video from the frame features (keep ``video_mask``)."""
        if self.two_tower:
            return self.encode_video(video, video_mask)
        frames = self.encode_frames(video, tokens=bool(getattr(self.head, "visual_tokens", False)),
                                    frame_mask=video_mask)
        return self.head.video_features(frames, video_mask)

    def pair_logit_scale(self) -> torch.Tensor:
        """The logit scale a pair head multiplies by: exp(logit_scale), clamped at 100 unless
        the head's official code leaves it unclamped (``clamp_logit_scale``)."""
        log_scale = self.clip.logit_scale
        if getattr(self.head, "clamp_logit_scale", True):
            log_scale = log_scale.clamp(max=MAX_LOGIT_SCALE)
        return log_scale.exp()

    def score(self, text: torch.Tensor, video: torch.Tensor, video_mask: Optional[torch.Tensor] = None,
              text_chunk: Optional[int] = None, text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features from ``text_features`` and ``video_features`` -> logits [Bt, Bv] (rows are
        texts). Two-tower: ``similarity`` (masks unused). Pair heads: the head scores every
        pair, ``text_chunk`` texts at a time (the result does not depend on it); ``text_mask``
        [Bt, L] is the captions' attention mask, needed by ``text_tokens`` heads."""
        if self.two_tower:
            return self.similarity(text, video)
        if video_mask is None:
            raise ValueError(f"the {self.head.name} head needs the video mask [Bv, T] to score")
        return self.head(text, video, video_mask, text_chunk=text_chunk, text_mask=text_mask,
                         logit_scale=self.pair_logit_scale())

    def pair_loss(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                  text_mask: Optional[torch.Tensor] = None):
        """Pair heads: a training batch's features (text i matches video i) -> (logits [B, B],
        loss): the symmetric cross-entropy of the head's training logits plus its extra term."""
        logits, extra = self.head.train_logits(text, text_mask, video, video_mask, self.pair_logit_scale())
        loss = contrastive_loss(logits)
        return logits, loss if extra is None else loss + extra

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                video: torch.Tensor, video_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns {'text_emb', 'video_emb', 'logits' [B, B], 'loss' scalar}: the symmetric
        cross-entropy over the batch's text-by-video matrix (matching pairs on the diagonal),
        plus a pair head's own extra term. 'text_emb' / 'video_emb' are the ``text_features`` /
        ``video_features`` of the batch ([B, D] both for two-tower heads)."""
        text_emb = self.text_features(input_ids, attention_mask)
        video_emb = self.video_features(video, video_mask)
        if self.two_tower:
            logits = self.score(text_emb, video_emb, video_mask)
            loss = contrastive_loss(logits)
        else:
            logits, loss = self.pair_loss(text_emb, video_emb, video_mask, attention_mask)
        return {"text_emb": text_emb, "video_emb": video_emb, "logits": logits, "loss": loss}

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
