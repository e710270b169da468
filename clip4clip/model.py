"""CLIP4Clip: CLIP's two towers plus a head on the frame features: a temporal head that pools
them into one video embedding (two-tower: meanP, seqLSTM, seqTransf, frameweight), or the
tightTransf cross-encoder that scores each (text, video) pair jointly.

Model code takes plain arguments (a CLIP module and a head module); configuration files and
distributed training live elsewhere.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from .checkpoints import load_state_checked
from .clip import CLIP, clip_from_state_dict
from .heads import HEADS, Head, build_head, l2_normalize
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
    def from_clip(cls, clip: CLIP, head: str = "meanP", init_head_from_clip: bool = True,
                  **head_kwargs) -> "CLIP4Clip":
        """Wrap a (pretrained) CLIP with a new head, initialised from the CLIP weights where
        the head knows how (seqTransf/frameweight/tightTransf copy the text tower, as CLIP4Clip)."""
        head_module = build_head(head, clip.embed_dim, **head_kwargs)
        if init_head_from_clip:
            head_module.init_from_clip(clip.state_dict())
        return cls(clip, head_module)

    @classmethod
    def from_official_checkpoint(cls, path: Union[str, os.PathLike, Mapping], where: Optional[str] = None,
                                 **head_kwargs) -> "CLIP4Clip":
        """Load a checkpoint written by the official CLIP4Clip trainer (``pytorch_model.bin.N``:
        CLIP under ``clip.`` in float16, heads in float32). The head is detected from the keys:
        ``transformerClip.*`` -> seqTransf, ``lstm_visual.*`` -> seqLSTM, ``cross.*`` /
        ``similarity_dense.*`` -> tightTransf, none -> meanP."""
        sd = path if isinstance(path, Mapping) else _read_checkpoint(path)
        where = where or ("checkpoint" if isinstance(path, Mapping) else str(path))
        odd = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if odd:
            raise ValueError(f"{where}: keys {odd[:5]} hold no tensor; expected a state dict of tensors")
        clip_sd = {k[len("clip."):]: v.float() if torch.is_floating_point(v) else v
                   for k, v in sd.items() if k.startswith("clip.")}
        rest = {k: v for k, v in sd.items() if not k.startswith("clip.")}
        if not clip_sd:
            raise ValueError(f"{where} has no 'clip.*' keys: not an official CLIP4Clip checkpoint "
                             f"(first keys: {sorted(sd)[:5]})")
        head_name = detect_official_head(rest)
        head_cls = HEADS[head_name]
        kwargs = {**head_cls.official_kwargs(rest), **head_kwargs}
        try:
            clip = clip_from_state_dict({k: v for k, v in clip_sd.items()
                                         if k not in ("input_resolution", "context_length", "vocab_size")})
        except (ValueError, KeyError) as e:
            raise ValueError(f"{where}: the 'clip.*' weights do not form a CLIP model: {e}") from e
        head = build_head(head_name, clip.embed_dim, **kwargs)
        converted = head.convert_official(rest)
        used = _official_keys_used(head, rest)
        unknown = sorted(set(rest) - used)
        if unknown:
            raise ValueError(f"{where}: unexpected keys for a {head_name} checkpoint: {unknown}")
        load_state_checked(head, {k: v.float() for k, v in converted.items()}, f"{where} ({head_name} head)")
        return cls(clip, head)


def detect_official_head(non_clip_sd: Mapping[str, torch.Tensor]) -> str:
    """Which CLIP4Clip head wrote these non-CLIP keys ('meanP' when there are none)."""
    for name, head_cls in HEADS.items():
        if head_cls.official_prefixes and any(k.startswith(head_cls.official_prefixes) for k in non_clip_sd):
            return name
    return "meanP"


def _official_keys_used(head: Head, non_clip_sd: Mapping) -> set:
    ignored = set(getattr(head, "ignored_official_keys", lambda: ())())
    prefixes = type(head).official_prefixes
    used = {k for k in non_clip_sd if prefixes and k.startswith(prefixes)}
    if "frame_position_embeddings.weight" in non_clip_sd and hasattr(head, "frame_position_embeddings"):
        used.add("frame_position_embeddings.weight")
    return used | (ignored & set(non_clip_sd))


def _read_checkpoint(path) -> Dict[str, torch.Tensor]:
    from .checkpoints import read_torch_file  # never runs code from the file

    sd = read_torch_file(path, "CLIP4Clip checkpoint")
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)
