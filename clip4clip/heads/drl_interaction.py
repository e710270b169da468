"""DRL's token-wise interaction and its channel decorrelation loss (Wang et al. 2022,
*Disentangled Representation Learning for Text-Video Retrieval*; official code foolwood/DRL,
``DRL.wti_interaction``), as plain functions of features, masks and the two weight MLPs.

The first step of issue 24: the scoring DRL adds, numerically equal to the official code
(tests/test_drl_interaction.py against ``drl_golden.pt``). The head around it (seqTransf over
the frames, the per-word text features from the model, evaluation in pair chunks, loading the
official checkpoint) comes next.

Shapes: text ``[A, L, D]`` with ``text_mask`` ``[A, L]`` (1 = real token), video ``[B, T, D]``
with ``video_mask`` ``[B, T]`` (1 = real frame); similarities ``[A, B]``, rows = texts.

``padding``: ``"official"`` (default) reproduces DRL: the cosine matrix is multiplied by both
masks, so a padded token or frame enters each max as a score of 0 (a text whose every real
cosine with a video is negative then takes 0 from the padding instead). ``"masked"`` leaves
padded positions out of the maxima (-inf), which is what the paper's formula says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

PADDING = ("official", "masked")


def masked_softmax_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the real positions of ``scores`` [N, K] (mask [N, K]); 0 at padding."""
    return torch.softmax(scores.masked_fill(~mask.bool(), float("-inf")), dim=-1)


def token_weights(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                  text_fc: Callable[[torch.Tensor], torch.Tensor],
                  video_fc: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """DRL's ``wti`` weights: text [A, L] and video [B, T], each a softmax of its MLP's score
    (``text_fc``: [.., D] -> [.., 1]) over the real tokens / frames; raw (unnormalised) features in."""
    return (masked_softmax_weights(text_fc(text).squeeze(-1), text_mask),
            masked_softmax_weights(video_fc(video).squeeze(-1), video_mask))


@dataclass
class Interaction:
    """Result of ``wti_logits``. t2v, v2t, logits: [A, B]; the argmax indices the CDCR loss
    needs: ``t2v_frame`` [A, B, L] (frame of video b each token of text a picked) and
    ``v2t_token`` [A, B, T] (token of text a each frame of video b picked)."""

    t2v: torch.Tensor
    v2t: torch.Tensor
    t2v_frame: torch.Tensor
    v2t_token: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        """(t2v + v2t) / 2: what evaluation ranks (no logit scale)."""
        return (self.t2v + self.v2t) / 2.0


def pair_cosines(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                 padding: str = "official") -> torch.Tensor:
    """Cosine of every (token, frame) pair: [A, B, L, T], padded positions 0 (official) or -inf."""
    if padding not in PADDING:
        raise ValueError(f"padding={padding!r}; expected one of {PADDING}")
    t, v = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    cos = torch.einsum("ald,btd->ablt", t, v)
    tm, vm = text_mask.to(cos.dtype), video_mask.to(cos.dtype)
    if padding == "official":  # DRL multiplies by the masks: padding scores 0 and takes part in the max
        return cos * tm[:, None, :, None] * vm[None, :, None, :]
    keep = tm[:, None, :, None].bool() & vm[None, :, None, :].bool()
    return cos.masked_fill(~keep, float("-inf"))


def wti_logits(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
               text_weight: torch.Tensor, video_weight: torch.Tensor, padding: str = "official") -> Interaction:
    """Weighted token-wise interaction: t2v[a, b] = sum over tokens of text_weight * (max over
    frames of the cosine); v2t[a, b] = sum over frames of video_weight * (max over tokens)."""
    cos = pair_cosines(text, text_mask, video, video_mask, padding)
    t2v_max, t2v_frame = cos.max(dim=-1)  # [A, B, L]
    v2t_max, v2t_token = cos.max(dim=-2)  # [A, B, T]
    if padding == "masked":  # a padded token/frame has weight 0; keep its -inf max out of the sum
        t2v_max, v2t_max = t2v_max.clamp_min(torch.finfo(cos.dtype).min), v2t_max.clamp_min(torch.finfo(cos.dtype).min)
        t2v_max = t2v_max * text_mask.bool()[:, None, :]
        v2t_max = v2t_max * video_mask.bool()[None, :, :]
    t2v = torch.einsum("abl,al->ab", t2v_max, text_weight)
    v2t = torch.einsum("abt,bt->ab", v2t_max, video_weight)
    return Interaction(t2v, v2t, t2v_frame, v2t_token)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0)  # unbiased std, as the official code


def cdcr_matrices(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                  text_weight: torch.Tensor, video_weight: torch.Tensor,
                  inter: Interaction) -> Tuple[torch.Tensor, torch.Tensor]:
    """DRL's CDCR cross-correlations c1, c2 [D, D] (``--cdcr 3``) of a batch whose text i and
    video i match (A == B). c1: over the real tokens, each standardised normalised token feature
    against the frame of its own video that the t2v max picked, weighted by ``text_weight``; c2
    the same over real frames and the tokens the v2t max picked; both divided by the batch size."""
    n = text.shape[0]
    own = torch.arange(n)
    t, v = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    frame_of_token = inter.t2v_frame[own, own]  # [B, L]
    token_of_frame = inter.v2t_token[own, own]  # [B, T]
    picked_frames = v[own[:, None], frame_of_token]  # [B, L, D]
    picked_tokens = t[own[:, None], token_of_frame]  # [B, T, D]
    tm, vm = text_mask.bool(), video_mask.bool()
    c1 = torch.einsum("nc,nd,n->cd", _standardise(t[tm]), _standardise(picked_frames[tm]), text_weight[tm]) / n
    c2 = torch.einsum("nc,nd,n->cd", _standardise(v[vm]), _standardise(picked_tokens[vm]), video_weight[vm]) / n
    return c1, c2


def cdcr_loss(c1: torch.Tensor, c2: torch.Tensor, alpha1: float, alpha2: float) -> Tuple[torch.Tensor, ...]:
    """(loss, on_diag, off_diag) of c = (c1 + c2) / 2: alpha1 * sum (diag(c) - 1)^2 + alpha2 *
    sum offdiag(c)^2."""
    c = (c1 + c2) / 2.0
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return alpha1 * on + alpha2 * off, on, off
