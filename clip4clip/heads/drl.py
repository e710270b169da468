"""DRL (Wang et al. 2022, *Disentangled Representation Learning for Text-Video Retrieval*;
official code foolwood/DRL, ``tvr/models/modeling.py``): every word against every frame.

The video side is CLIP4Clip's seqTransf over the frames (frame position embeddings, 4 blocks,
the residual), kept per frame; the text side is every position of CLIP's text tower. Scoring
(``interaction``):

- ``wti`` (the paper's method): a small MLP scores each token and each frame; t2v = sum over
  the caption's tokens of softmax weight x (max cosine over the video's frames); v2t = sum over
  frames of weight x (max over tokens); the score is (t2v + v2t) / 2, no logit scale (what the
  official evaluation ranks); training multiplies it by exp(logit_scale), unclamped as upstream.
- ``ti``: the same with uniform weights (mean over real tokens / frames).
- ``dp``: the end-of-text feature against the mean of the normalised frames (a two-tower
  score; with ``agg_module=seqTransf`` and ``cdcr=0`` it is CLIP4Clip's seqTransf).

CDCR (channel decorrelation regularisation, ``cdcr`` 1/2/3 as upstream's ``--cdcr``) adds
``cdcr_lambda`` x (alpha1 x on-diagonal + alpha2 x off-diagonal) of a cross-correlation of the
matched features to the training loss.

``padding``: ``"official"`` (default) reproduces DRL: the cosine matrix is multiplied by both
masks, so a padded token or frame enters each max as a score of 0 (a text whose every real
cosine with a video is negative then takes 0 from the padding instead). ``"masked"`` leaves
padded positions out of the maxima (-inf), which is what the paper's formula says.

Shapes: text ``[A, L, D]`` with ``text_mask`` ``[A, L]`` (1 = real token), video ``[B, T, D]``
with ``video_mask`` ``[B, T]`` (1 = real frame); similarities ``[A, B]``, rows = texts.
Parameter names are upstream's (``text_weight_fc.{0,2}``, ``video_weight_fc.{0,2}``) and
seqTransf's (``temporal.*``); an official checkpoint converts key for key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import PairHead
from .seqtransf import SeqTransf

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


#: Floor of CDCR's per-channel std. Upstream divides by the std as it is, so a channel that is
#: constant over the rows (e.g. every frame's best-matching word is the start token, whose feature
#: is the same in every caption under causal attention) makes the loss NaN; with the floor such a
#: channel standardises to 0 (it correlates with nothing). Any std above it is used unchanged.
STD_FLOOR = 1e-12


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(STD_FLOOR)  # unbiased std, as the official code


def cdcr_matrices(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                  inter: Interaction, text_weight: Optional[torch.Tensor] = None,
                  video_weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """DRL's CDCR cross-correlations c1, c2 [D, D] of a batch whose text i and video i match
    (A == B). c1: over the real tokens, each standardised normalised token feature against the
    frame of its own video that the t2v max picked; c2 the same over real frames and the tokens
    the v2t max picked. With weights (``--cdcr 3``) each row counts by its wti weight and the
    sums are divided by the batch size; without (``--cdcr 2``) by the number of rows."""
    n = text.shape[0]
    own = torch.arange(n, device=text.device)
    t, v = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    frame_of_token = inter.t2v_frame[own, own]  # [B, L]
    token_of_frame = inter.v2t_token[own, own]  # [B, T]
    picked_frames = v[own[:, None], frame_of_token]  # [B, L, D]
    picked_tokens = t[own[:, None], token_of_frame]  # [B, T, D]
    tm, vm = text_mask.bool(), video_mask.bool()
    za, zb = _standardise(t[tm]), _standardise(picked_frames[tm])
    xa, xb = _standardise(v[vm]), _standardise(picked_tokens[vm])
    if text_weight is None or video_weight is None:
        return za.t() @ zb / za.shape[0], xa.t() @ xb / xa.shape[0]
    c1 = torch.einsum("nc,nd,n->cd", za, zb, text_weight[tm]) / n
    c2 = torch.einsum("nc,nd,n->cd", xa, xb, video_weight[vm]) / n
    return c1, c2


def cdcr_random_matrix(text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor,
                       video_mask: torch.Tensor) -> torch.Tensor:
    """``--cdcr 1`` with token interaction: one random real token and one random real frame of
    each sample (upstream's ``randint(0, 10000) % count``), standardised, correlated / B."""
    n = text.shape[0]
    own = torch.arange(n, device=text.device)
    t_sum, v_sum = text_mask.sum(-1), video_mask.sum(-1)
    ta = F.normalize(text, dim=-1)[own, torch.randint_like(t_sum, 0, 10000) % t_sum]
    vb = F.normalize(video, dim=-1)[own, torch.randint_like(v_sum, 0, 10000) % v_sum]
    return _standardise(ta).t() @ _standardise(vb) / n


def cdcr_loss(c1: torch.Tensor, c2: Optional[torch.Tensor], alpha1: float, alpha2: float) -> Tuple[torch.Tensor, ...]:
    """(loss, on_diag, off_diag) of c = (c1 + c2) / 2 (c1 alone when c2 is None): alpha1 * sum
    (diag(c) - 1)^2 + alpha2 * sum offdiag(c)^2."""
    c = c1 if c2 is None else (c1 + c2) / 2.0
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return alpha1 * on + alpha2 * off, on, off


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------

INTERACTIONS = ("wti", "ti", "dp")
AGG_MODULES = ("seqTransf", "None")
#: ``--wti_arch``: hidden Linear+ReLU layers of the weight MLPs before their Linear(D, 1).
WTI_ARCH_HIDDEN = {1: 0, 2: 1, 3: 2}
INIT_STD = 0.02  # upstream's init_weights: N(0, 0.02) Linear weights, zero biases


def _weight_mlp(width: int, hidden: int) -> nn.Module:
    """upstream's text/video_weight_fc: Linear(D, 1), or (Linear(D, D), ReLU) x hidden + Linear(D, 1)
    in an nn.Sequential (so the keys are ``.0``, ``.2``, ``.4``)."""
    if hidden == 0:
        return nn.Linear(width, 1)
    layers = []
    for _ in range(hidden):
        layers += [nn.Linear(width, width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(width, 1))


class DRL(PairHead):
    """Args:
        width: feature width D (CLIP's embed_dim).
        interaction: ``wti`` | ``ti`` | ``dp`` (upstream ``--interaction``).
        wti_arch: 1 | 2 | 3, depth of the weight MLPs (upstream ``--wti_arch``; wti only).
        agg_module: ``seqTransf`` (frame positions + ``num_blocks`` blocks + residual) or
            ``None`` (the CLIP frame features as they are).
        num_blocks, heads, num_positions, activation: seqTransf's (4 blocks, D // 64 heads, 77
            positions copied from CLIP's text table, CLIP's MLP activation).
        padding: ``official`` | ``masked`` (module docstring).
        cdcr: 0 (off) | 1 (random token/frame, or the embeddings with dp) | 2 (the max-matched
            pairs) | 3 (the same, wti-weighted); cdcr_alpha1/2, cdcr_lambda: its coefficients.
    """

    name = "drl"
    text_tokens = True
    clamp_logit_scale = False   # upstream: logit_scale.exp(), no clamp
    scores_are_logits = False   # evaluation ranks cosine averages, no logit scale
    official_prefixes = ("text_weight_fc.", "video_weight_fc.", "transformerClip.")
    official_extra_keys = ("frame_position_embeddings.weight",)
    official_markers = ("text_weight_fc.", "video_weight_fc.")

    def __init__(self, width: int, interaction: str = "wti", wti_arch: int = 2, agg_module: str = "seqTransf",
                 num_blocks: int = 4, heads: Optional[int] = None, num_positions: int = 77,
                 activation: str = "quick_gelu", padding: str = "official", cdcr: int = 0,
                 cdcr_alpha1: float = 0.11, cdcr_alpha2: float = 0.0, cdcr_lambda: float = 0.001):
        super().__init__()
        for key, value, allowed in (("interaction", interaction, INTERACTIONS), ("agg_module", agg_module, AGG_MODULES),
                                    ("padding", padding, PADDING), ("wti_arch", wti_arch, tuple(WTI_ARCH_HIDDEN)),
                                    ("cdcr", cdcr, (0, 1, 2, 3))):
            if value not in allowed:
                raise ValueError(f"drl head: {key}={value!r}; expected one of {list(allowed)}")
        if interaction != "wti" and cdcr == 3:
            raise ValueError(f"drl head: cdcr=3 weights by the wti weights; interaction={interaction!r} has none "
                             "(use cdcr=2, or 1)")
        self.width, self.interaction, self.padding = width, interaction, padding
        self.wti_arch = wti_arch
        self.cdcr, self.cdcr_alpha1, self.cdcr_alpha2, self.cdcr_lambda = cdcr, cdcr_alpha1, cdcr_alpha2, cdcr_lambda
        self.temporal = (SeqTransf(width, num_blocks=num_blocks, heads=heads, num_positions=num_positions,
                                   activation=activation) if agg_module == "seqTransf" else None)
        if interaction == "wti":
            self.text_weight_fc = _weight_mlp(width, WTI_ARCH_HIDDEN[wti_arch])
            self.video_weight_fc = _weight_mlp(width, WTI_ARCH_HIDDEN[wti_arch])
            for module in (*self.text_weight_fc.modules(), *self.video_weight_fc.modules()):
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=INIT_STD)
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ features
    # Stored layout: the normalised features, plus (wti) one channel holding the MLP's raw
    # weight score, so the weights are computed once per caption / video, not once per pair.
    def contextualize(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] CLIP frame features -> DRL's video features [B, T, D] (not normalised)."""
        return frames if self.temporal is None else self.temporal.contextualize(frames, video_mask)

    def _with_score(self, feats: torch.Tensor, fc: Optional[nn.Module]) -> torch.Tensor:
        out = F.normalize(feats, dim=-1)
        return out if fc is None else torch.cat([out, fc(feats)], dim=-1)

    def text_features(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Every position's projected state [B, L, D] -> [B, L, D (+1 score channel for wti)]."""
        return self._with_score(text.float(), getattr(self, "text_weight_fc", None))

    def video_features(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T, D (+1)]: seqTransf per video, normalised, plus the weight score."""
        return self._with_score(self.contextualize(frames.float(), video_mask), getattr(self, "video_weight_fc", None))

    def _split(self, feats: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stored features -> (normalised features [N, K, D], weights [N, K])."""
        if self.interaction == "wti":
            return feats[..., :-1], masked_softmax_weights(feats[..., -1], mask)
        m = mask.to(feats.dtype)
        return feats, m / m.sum(-1, keepdim=True).clamp_min(1.0)  # ti: the mean over real positions

    # ------------------------------------------------------------------ scoring
    def _dp(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor,
            video_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, text embedding [A, D], video embedding [B, D]): the end-of-text token (the
        last real one, upstream's ``get_text_sep_feat``) against the normalised mean frame."""
        eot = text[torch.arange(text.shape[0], device=text.device), text_mask.sum(-1).long() - 1]
        m = video_mask.to(video.dtype).unsqueeze(-1)
        v = F.normalize((video * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
        t = F.normalize(eot, dim=-1)
        return t @ v.t(), t, v

    def interact(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor,
                 video_mask: torch.Tensor) -> Tuple[Interaction, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stored features -> (Interaction, normalised text, text weights, normalised video,
        video weights) for ``ti`` / ``wti``."""
        t, tw = self._split(text, text_mask)
        v, vw = self._split(video, video_mask)
        return wti_logits(t, text_mask, v, video_mask, tw, vw, self.padding), t, tw, v, vw

    def pair_scores(self, text, text_mask, video, video_mask, logit_scale):
        """[c, L, D(+1)] texts against [Nv, T, D(+1)] videos -> (t2v + v2t) / 2 [c, Nv]."""
        if self.interaction == "dp":
            return self._dp(text, text_mask, video, video_mask)[0]
        return self.interact(text, text_mask, video, video_mask)[0].logits

    def train_logits(self, text, text_mask, video, video_mask, logit_scale):
        """logit_scale x scores, and cdcr_lambda x the CDCR loss when ``cdcr`` is on."""
        if self.interaction == "dp":
            logits, t, v = self._dp(text, text_mask, video, video_mask)
            extra = None
            if self.cdcr:
                extra = cdcr_loss(_standardise(t).t() @ _standardise(v) / t.shape[0], None,
                                  self.cdcr_alpha1, self.cdcr_alpha2)[0]
            return logit_scale * logits, None if extra is None else self.cdcr_lambda * extra
        inter, t, tw, v, vw = self.interact(text, text_mask, video, video_mask)
        if not self.cdcr:
            return logit_scale * inter.logits, None
        if self.cdcr == 1:
            c1, c2 = cdcr_random_matrix(t, text_mask, v, video_mask), None
        else:
            weighted = self.cdcr == 3
            c1, c2 = cdcr_matrices(t, text_mask, v, video_mask, inter, tw if weighted else None,
                                   vw if weighted else None)
        return logit_scale * inter.logits, self.cdcr_lambda * cdcr_loss(c1, c2, self.cdcr_alpha1, self.cdcr_alpha2)[0]

    # ------------------------------------------------------------------ weights
    @property
    def max_frames(self):
        return None if self.temporal is None else self.temporal.max_frames

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """As upstream: seqTransf's positions and blocks from CLIP's text tower; the weight MLPs
        keep their N(0, 0.02) init."""
        if self.temporal is not None:
            self.temporal.init_from_clip(clip_state_dict)

    @classmethod
    def official_kwargs(cls, official_sd: Mapping[str, torch.Tensor]) -> dict:
        linears = {k.split(".")[1] for k in official_sd if k.startswith("text_weight_fc.") and k.endswith(".weight")}
        kwargs = {"interaction": "wti" if any(k.startswith("text_weight_fc.") for k in official_sd) else "ti",
                  "agg_module": "seqTransf" if "frame_position_embeddings.weight" in official_sd else "None"}
        if kwargs["interaction"] == "wti":
            # Linear(D, 1) alone has keys text_weight_fc.weight (split -> 'weight'); a Sequential
            # has one numbered Linear per layer.
            depth = 1 if linears == {"weight"} else len(linears)
            kwargs["wti_arch"] = depth
        if kwargs["agg_module"] == "seqTransf":
            kwargs.update(SeqTransf.official_kwargs(official_sd))
        return kwargs

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {k: v for k, v in official_sd.items() if k.startswith(("text_weight_fc.", "video_weight_fc."))}
        if self.temporal is not None:
            out.update({"temporal." + k: v for k, v in self.temporal.convert_official(official_sd).items()})
        return out


__all__ = ["DRL", "Interaction", "cdcr_loss", "cdcr_matrices", "cdcr_random_matrix", "pair_cosines",
           "token_weights", "wti_logits"]
