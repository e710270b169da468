"""X-CLIP (Ma et al., ACM MM 2022, *X-CLIP: End-to-End Multi-grained Contrastive Learning for
Video-Text Retrieval*; official code xuguohai/X-CLIP, ``modules/modeling_xclip.py``): the
sentence and its words against the video and its frames, four similarities averaged.

The video side is CLIP4Clip's seqTransf over the CLIP frame features (frame position
embeddings, ``num_blocks`` blocks, the residual; ``sim_header=meanP``: none), mean-pooled over
the real frames into the video embedding; the frame-level features are the normalised *CLIP*
frame features (upstream's ``use_original_clip_for_frame_features``), not the temporal ones.
The text side is the end-of-text feature (the sentence) and every position of the text tower
(the words), each L2-normalised. With s = exp(logit_scale) (unclamped, as upstream's forward;
the training loop clamps the parameter itself), and ``pool(x, W)`` = Σ_j x_j · (p @ W)_j with
p = softmax(x / 0.01) along one axis (an attention over a similarity vector whose weights are
mixed by a learned [n, n] matrix W, identity at init):

- video-sentence: s · sentence @ ``global_mat_weight`` @ video_embᵀ;
- video-word: s · pool over the words of (word · video_emb), W = ``word_logit_weight``;
- sentence-frame: s · pool over the frames of (sentence · frame), W = ``frame_logit_weight``;
- frame-word: fine = word @ ``local_mat_weight`` @ frameᵀ [A, L, B, T]; word-level = pool over
  words (``word_mat_weight``) [A, B, T], frame-level = pool over frames (``frame_mat_weight``)
  [A, L, B]; s · (pool over frames of word-level (``frame_mat_weight2``) + pool over words of
  frame-level (``word_mat_weight2``)) / 2.

The logits are the mean of the four (``XCLIP.get_similarity_logits``, what ``main_xclip.py``
ranks; they include the logit scale); training uses the same matrix (``XCLIP.forward``).

``padding``: ``"official"`` (default) reproduces X-CLIP: only the video embedding uses the
video mask; padded words (the text tower's output at the zero-padded positions) and padded
frames (the CLIP feature of a zero image) take part in every softmax and sum of the word- and
frame-level branches, so a caption's scores depend on how far it is padded. ``"masked"``
leaves padded words and frames out of those softmaxes and sums (what the paper's formulas
mean): scores then ignore what is stored at padded positions and how much padding there is.

The [L, L] and [T, T] matrices are sized by ``max_words`` / ``max_frames`` (upstream's
``--max_words`` / ``--max_frames``). Inputs may be shorter (a caption batch padded to fewer
positions, a video of fewer frames): their leading block is used, which for ``masked`` is the
same as padding to the full length; longer inputs are refused.

Stored features (sample on dim 0): text ``[A, 1 + L, D]``, row 0 the normalised sentence
(end-of-text) feature, rows 1.. the normalised word features of all L positions (scored with
the captions' mask ``[A, L]``); video ``[B, 1 + T, D]``, row 0 the video embedding, rows 1..
the normalised CLIP frame features (scored with the video mask ``[B, T]``). Parameter names
are upstream's (``global_mat_weight``, ...) and seqTransf's (``temporal.*``); an official
checkpoint converts key for key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import PairHead, masked_mean
from .seqtransf import SeqTransf

PADDING = ("official", "masked")
SIM_HEADERS = ("seqTransf", "meanP")
#: The softmax temperature of every attention over a similarity vector (upstream's ``/ 1e-2``).
TEMPERATURE = 1e-2
#: [L, L] tables (over words) and [T, T] tables (over frames), upstream's names.
WORD_WEIGHTS = ("word_logit_weight", "word_mat_weight", "word_mat_weight2")
FRAME_WEIGHTS = ("frame_logit_weight", "frame_mat_weight", "frame_mat_weight2")
DIM_WEIGHTS = ("global_mat_weight", "local_mat_weight")
ALL_WEIGHTS = DIM_WEIGHTS + WORD_WEIGHTS + FRAME_WEIGHTS


def attention_pool(sim: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   temperature: float = TEMPERATURE) -> torch.Tensor:
    """X-CLIP's attention over a similarity vector along the *last* axis of ``sim`` [..., n]:
    Σ_j sim_j · (softmax(sim / temperature) @ weight[:n, :n])_j -> [...].

    ``mask`` (broadcastable to ``sim``, True = real): positions left out of the softmax and of
    the sum (``padding="masked"``); None: every position takes part (official)."""
    n = sim.shape[-1]
    if n > weight.shape[0]:
        raise ValueError(f"xclip head: {n} positions but its weight table is {tuple(weight.shape)}")
    w = weight[:n, :n].to(sim.dtype)
    logits = sim / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(sim.dtype).min)
    mixed = torch.softmax(logits, dim=-1) @ w
    prod = sim * mixed
    if mask is not None:
        prod = prod.masked_fill(~mask, 0.0)
    return prod.sum(-1)


@dataclass
class Similarities:
    """Every step of X-CLIP's scoring of A texts against B videos (rows = texts); the four
    matrices and ``logits`` include the logit scale, the intermediate steps do not.

    fine_grained_sim [A, L, B, T]; word_level_logit [A, B, T]; frame_level_logit [A, L, B];
    sent2frame_logits, video2word_logits and the rest [A, B]."""

    video_sentence_logits: torch.Tensor
    video_word_logits: torch.Tensor
    sentence_frame_logits: torch.Tensor
    frame_word_logits: torch.Tensor
    fine_grained_sim: torch.Tensor
    word_level_logit: torch.Tensor
    frame_level_logit: torch.Tensor
    sent2frame_logits: torch.Tensor
    video2word_logits: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        """The mean of the four similarity matrices: what X-CLIP ranks and trains on."""
        return (self.video_sentence_logits + self.video_word_logits + self.sentence_frame_logits
                + self.frame_word_logits) / 4


def xclip_similarities(sentence: torch.Tensor, words: torch.Tensor, text_mask: torch.Tensor,
                       video_emb: torch.Tensor, frames: torch.Tensor, video_mask: torch.Tensor,
                       weights: Mapping[str, torch.Tensor], logit_scale: torch.Tensor,
                       padding: str = "official") -> Similarities:
    """Normalised sentence [A, D], words [A, L, D] (mask [A, L]), video embeddings [B, D] and
    frames [B, T, D] (mask [B, T]) -> ``Similarities``; ``weights`` maps upstream's parameter
    names to tensors. The masks are used only with ``padding="masked"``."""
    if padding not in PADDING:
        raise ValueError(f"padding={padding!r}; expected one of {PADDING}")
    masked = padding == "masked"
    tm = text_mask.bool() if masked else None   # [A, L]
    vm = video_mask.bool() if masked else None  # [B, T]

    def m(mask, *index):
        return None if mask is None else mask[index]

    video_sentence = logit_scale * (sentence @ weights["global_mat_weight"]) @ video_emb.t()
    word_video = torch.einsum("ald,bd->abl", words, video_emb)
    video_word = logit_scale * attention_pool(word_video, weights["word_logit_weight"], m(tm, slice(None), None))
    sentence_frame_sim = torch.einsum("ad,btd->abt", sentence, frames)
    sentence_frame = logit_scale * attention_pool(sentence_frame_sim, weights["frame_logit_weight"], m(vm, None))

    a, n_words, d = words.shape
    b, n_frames, _ = frames.shape
    fine = ((words.reshape(-1, d) @ weights["local_mat_weight"]) @ frames.reshape(-1, d).t()
            ).view(a, n_words, b, n_frames)
    # over the words: [A, B, T, L] -> [A, B, T]; over the frames: [A, L, B, T] -> [A, L, B]
    word_level = attention_pool(fine.permute(0, 2, 3, 1), weights["word_mat_weight"],
                                m(tm, slice(None), None, None))
    frame_level = attention_pool(fine, weights["frame_mat_weight"], m(vm, None, None))
    sent2frame = attention_pool(word_level, weights["frame_mat_weight2"], m(vm, None))
    video2word = attention_pool(frame_level.permute(0, 2, 1), weights["word_mat_weight2"], m(tm, slice(None), None))
    frame_word = logit_scale * (sent2frame + video2word) / 2
    return Similarities(video_sentence, video_word, sentence_frame, frame_word, fine, word_level, frame_level,
                        sent2frame, video2word)


class XCLIP(PairHead):
    """Args:
        width: feature width D (CLIP's embed_dim).
        max_words: L, the size of the [L, L] word tables (upstream ``--max_words``; the
            caption length ``model.max_words``).
        max_frames: T, the size of the [T, T] frame tables (upstream ``--max_frames``;
            ``dataset.max_frames``).
        sim_header: ``seqTransf`` (frame positions + ``num_blocks`` blocks + residual before
            pooling) or ``meanP`` (the CLIP frame features as they are).
        num_blocks, heads, num_positions, activation: seqTransf's (4 blocks, D // 64 heads, 77
            positions copied from CLIP's text table, CLIP's MLP activation).
        padding: ``official`` | ``masked`` (module docstring).
    """

    name = "xclip"
    text_tokens = True
    clamp_logit_scale = False  # upstream: logit_scale.exp() in the forward (main_xclip.py clamps the parameter)
    scores_are_logits = True   # the four matrices carry the logit scale
    official_prefixes = ("transformerClip.",)
    official_extra_keys = ("frame_position_embeddings.weight",) + ALL_WEIGHTS
    official_markers = ("global_mat_weight", "local_mat_weight")

    def __init__(self, width: int, max_words: int = 32, max_frames: int = 12, sim_header: str = "seqTransf",
                 num_blocks: int = 4, heads: Optional[int] = None, num_positions: int = 77,
                 activation: str = "quick_gelu", padding: str = "official"):
        super().__init__()
        for key, value, allowed in (("sim_header", sim_header, SIM_HEADERS), ("padding", padding, PADDING)):
            if value not in allowed:
                raise ValueError(f"xclip head: {key}={value!r}; expected one of {list(allowed)}")
        for key, value in (("max_words", max_words), ("max_frames", max_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"xclip head: {key}={value!r}; expected a whole number >= 1")
        self.width, self.padding, self.sim_header = width, padding, sim_header
        self.num_words, self.num_frames = max_words, max_frames
        self.temporal = (SeqTransf(width, num_blocks=num_blocks, heads=heads, num_positions=num_positions,
                                   activation=activation) if sim_header == "seqTransf" else None)
        for key in ALL_WEIGHTS:
            n = width if key in DIM_WEIGHTS else max_words if key in WORD_WEIGHTS else max_frames
            setattr(self, key, nn.Parameter(torch.eye(n)))

    # ------------------------------------------------------------------ features
    def _check_length(self, n: int, limit: int, what: str, key: str) -> None:
        if n > limit:
            raise ValueError(f"xclip head: {n} {what} per input but its [{limit}, {limit}] {what} tables take at most "
                             f"{limit} (model.head.{key}={limit}); set model.head.{key} >= {n} (a new model) or "
                             f"shorten the input")

    def contextualize(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] CLIP frame features -> the temporal features [B, T, D] (seqTransf + residual;
        not normalised), upstream's ``visual_output`` before pooling."""
        return frames if self.temporal is None else self.temporal.contextualize(frames, video_mask)

    def text_features(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Every position's projected state [A, L, D] -> [A, 1 + L, D]: the normalised
        end-of-text feature (the last real position), then the normalised words."""
        self._check_length(text.shape[1], self.num_words, "words", "max_words")
        text = text.float()
        eot = text[torch.arange(text.shape[0], device=text.device), text_mask.sum(-1).long().clamp_min(1) - 1]
        return F.normalize(torch.cat([eot[:, None], text], dim=1), dim=-1)

    def video_features(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """CLIP frame features [B, T, D] -> [B, 1 + T, D]: the video embedding (normalise the
        mean over real frames of the normalised temporal features), then the normalised CLIP
        frame features."""
        self._check_length(frames.shape[1], self.num_frames, "frames", "max_frames")
        frames = frames.float()
        video_emb = F.normalize(masked_mean(F.normalize(self.contextualize(frames, video_mask), dim=-1), video_mask),
                                dim=-1)
        return torch.cat([video_emb[:, None], F.normalize(frames, dim=-1)], dim=1)

    # ------------------------------------------------------------------ scoring
    def weights(self) -> Dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in ALL_WEIGHTS}

    def similarities(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor,
                     video_mask: torch.Tensor, logit_scale: torch.Tensor) -> Similarities:
        """Stored features of A texts and B videos -> every step of the scoring."""
        return xclip_similarities(text[:, 0], text[:, 1:], text_mask, video[:, 0], video[:, 1:], video_mask,
                                  self.weights(), logit_scale, self.padding)

    def pair_scores(self, text, text_mask, video, video_mask, logit_scale):
        """[c, 1 + L, D] texts against [Nv, 1 + T, D] videos -> the mean of the four [c, Nv]."""
        return self.similarities(text, text_mask, video, video_mask, logit_scale).logits

    # ------------------------------------------------------------------ weights
    @property
    def max_frames(self):
        limit = self.num_frames
        return limit if self.temporal is None else min(limit, self.temporal.max_frames)

    def frames_setting(self, frames: int):
        """(config key, value) that would let the head take ``frames`` frames (``check_frames``)."""
        if self.temporal is not None and self.temporal.max_frames < frames and self.num_frames >= frames:
            return "num_positions", frames
        return "max_frames", frames

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """As upstream: seqTransf's positions and blocks from CLIP's text tower; the mat weights
        keep their identity init."""
        if self.temporal is not None:
            self.temporal.init_from_clip(clip_state_dict)

    @classmethod
    def official_kwargs(cls, official_sd: Mapping[str, torch.Tensor]) -> dict:
        if any(k.startswith("lstm_visual.") for k in official_sd):
            raise ValueError("an X-CLIP checkpoint with --sim_header seqLSTM: the xclip head supports seqTransf and "
                             "meanP only")
        kwargs = {"max_words": official_sd["word_logit_weight"].shape[0],
                  "max_frames": official_sd["frame_logit_weight"].shape[0],
                  "sim_header": "seqTransf" if "frame_position_embeddings.weight" in official_sd else "meanP"}
        if kwargs["sim_header"] == "seqTransf":
            kwargs.update(SeqTransf.official_kwargs(official_sd))
        return kwargs

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {k: v for k, v in official_sd.items() if k in ALL_WEIGHTS}
        if self.temporal is not None:
            out.update({"temporal." + k: v for k, v in self.temporal.convert_official(official_sd).items()})
        return out


__all__ = ["Similarities", "XCLIP", "attention_pool", "xclip_similarities"]
