"""TS2-Net (Liu et al., ECCV 2022, *TS2-Net: Token Shift and Selection Transformer for
Text-Video Retrieval*; official code yuqi657/ts2_net, ``modules/modeling.py``,
``modules/until_module.py`` ``PatchShiftModule``, ``modules/differential_topk.py``).

Three parts, all on the video side; the text side is CLIP's end-of-text feature [B, D].

- **Token shift** (``attach``): in the vision blocks ``shift_blocks`` (upstream hard codes 10
  and 11, written for ViT-B/32) the ``ln_1`` output that feeds the attention is shifted along
  time within each video's T consecutive frames: tokens 1, 1+f, 1+2f, ... take frame t-1's
  values and tokens 4, 4+f, ... frame t+1's (f = tokens // ``n_div``; the first / last frame
  keep their own; padded frames take part, as upstream). The residual is not shifted.
  :class:`TokenShiftBlock` wraps the block and reuses its own modules under their names, so
  CLIP weights load unchanged; upstream stores the wrapped attention as ``attn.net.*``, which
  ``convert_official_clip`` renames.
- **Token selection**: a score predictor (upstream's ``PredictorLG``: LayerNorm + Linear(D, D/2)
  + GELU on every token, each concatenated with the CLS's, then Linear(D, D/2) + GELU +
  Linear(D/2, 1) + tanh; Linears without bias) scores the patches of each frame; the
  perturbed top-K (Berthet et al. / Cordonnier et al.: ``num_samples`` draws of score + sigma x
  N(0, 1), one-hot of each draw's top-K sorted by patch index, averaged) gives an indicator
  [K, P] per frame; the frame becomes [CLS, indicator @ patches] (K + 1 tokens). The gradient
  is upstream's custom backward (:class:`PerturbedTopKFunction`).
- **Temporal module and similarity**: seqTransf over all T(K+1) selected tokens of a video
  (position embeddings 0..T(K+1)-1, 4 blocks, the residual), then the CLS positions [B, T, D];
  a text scores against a video by a softmax over frames weighted by 4 s / ||s|| of the frame
  cosines s (``get_frame_similarity`` and its one-token-text twin
  ``get_frame_selectedcls_similarity``), times exp(logit_scale), unclamped as upstream. The
  score is ``frame_match_weight`` (1.0) x semantic + (1 - w) x global; the training loss the
  symmetric cross-entropy of each, weighted the same way.

Two quirks of the official code are reproduced by default, each with its fix:

``topk_eval``: ``"official"`` (default) draws the top-K noise in evaluation too, as upstream,
so scores depend on the random state (evaluation after ``torch.manual_seed`` is reproducible);
``"hard"`` takes the plain top-K of the scores in eval mode (deterministic; the indicator is
the one-hot of the K best patches). Training always uses the perturbed top-K.

``mask_expand``: upstream widens the frame mask [B, T] to the T(K+1) tokens by tiling
(``mask.unsqueeze(1).repeat(1, 1, K+1).view(B, -1)``), so token p gets frame p mod T's entry
and the similarity's frame j counts when ``video_mask[((K+1) j) mod T]`` is 1: for a padded
video some padded frames are attended to and scored, some real ones left out. ``"official"``
(default) reproduces that; ``"repeat"`` gives each frame's entry to its K+1 tokens, so padded
frames are masked everywhere. For a video without padding the two are the same.

Upstream draws the top-K noise on the CPU and moves it; here it is drawn from the global
generator of the tokens' device (the same values on CPU).

Parameter names: ``visual_token_selector.score_predictor.*`` as upstream, seqTransf's under
``temporal.*`` (upstream ``frame_position_embeddings`` / ``transformerClip``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..clip.layers import LayerNorm, ResidualAttentionBlock
from .base import PairHead, l2_normalize
from .seqtransf import SeqTransf

TOPK_EVAL = ("official", "hard")
MASK_EXPAND = ("official", "repeat")
DEFAULT_SHIFT_BLOCKS = (10, 11)
#: upstream's right shift starts at token 1 + 3 whatever the fold (a literal in PatchShiftModule)
RIGHT_SHIFT_START = 4
INIT_STD = 0.02  # upstream's init_weights: N(0, 0.02) Linear weights


# ----------------------------------------------------------------------------------------------
# Token shift
# ----------------------------------------------------------------------------------------------

def shift_token_indices(tokens: int, n_div: int = 7) -> Tuple[torch.Tensor, torch.Tensor]:
    """(left, right): the token positions that take frame t-1's values (1, 1+f, 1+2f, ...) and
    frame t+1's (4, 4+f, ...), f = tokens // n_div as upstream. Upstream's ``arange`` fails for
    fewer than n_div tokens (f = 0); f is 1 then (every token from 1 on is shifted left, from
    4 on right; where both lists hold a token the right shift wins, as upstream's order)."""
    fold = max(1, tokens // n_div)
    return torch.arange(1, tokens, fold), torch.arange(RIGHT_SHIFT_START, tokens, fold)


def token_shift(x: torch.Tensor, frames: int, n_div: int = 7) -> torch.Tensor:
    """x [B*T, L, D] (each video's T frames contiguous) -> the same with the ``left`` tokens of
    frame t taken from frame t-1 (t >= 1) and the ``right`` tokens from frame t+1 (t < T-1)."""
    n, length, dim = x.shape
    if frames < 1 or n % frames:
        raise ValueError(f"token shift: {n} images are not a whole number of videos of {frames} frames")
    left, right = (i.to(x.device) for i in shift_token_indices(length, n_div))
    v = x.view(n // frames, frames, length, dim)
    out = v.clone()
    out[:, 1:, left] = v[:, :-1, left]
    out[:, :-1, right] = v[:, 1:, right]
    return out.view(n, length, dim)


class TokenShift(nn.Module):
    """The shift as a module (no parameters): ``forward(x [B*T, L, D], frame_mask [B, T])``.
    A module so that hooks can watch it (tests count its calls)."""

    def __init__(self, n_div: int = 7):
        super().__init__()
        self.n_div = n_div

    def forward(self, x: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if frame_mask is None:
            raise ValueError("TS2-Net's token shift needs the frame layout: call the vision tower with "
                             "frame_mask [B, T] in its context (CLIP4Clip.encode_frames does)")
        if frame_mask.ndim != 2 or frame_mask.shape[0] * frame_mask.shape[1] != x.shape[0]:
            raise ValueError(f"token shift: frame_mask of shape {tuple(frame_mask.shape)} does not describe "
                             f"{x.shape[0]} images as [B, T] videos")
        return token_shift(x, frame_mask.shape[1], self.n_div)

    def extra_repr(self) -> str:
        return f"n_div={self.n_div}"


class TokenShiftBlock(nn.Module):
    """A CLIP ``ResidualAttentionBlock`` whose attention input is token-shifted:
    ``x + attn(shift(ln_1(x)))``, then ``x + mlp(ln_2(x))``. The block's own ``attn``, ``ln_1``,
    ``mlp`` and ``ln_2`` are reused (same objects, same state-dict names)."""

    #: Tells injectors that rebuild blocks (AIM) that this one carries more than CLIP's modules.
    wraps_block = True

    def __init__(self, block: nn.Module, n_div: int = 7):
        super().__init__()
        if type(block) is not ResidualAttentionBlock:
            raise TypeError(f"TS2-Net's token shift wraps a plain CLIP ResidualAttentionBlock, not "
                            f"{type(block).__name__} (inject it before adapters that replace blocks)")
        self.attn, self.ln_1, self.mlp, self.ln_2 = block.attn, block.ln_1, block.mlp, block.ln_2
        self.shift = TokenShift(n_div)

    @property
    def n_div(self) -> int:
        return self.shift.n_div

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                frame_mask: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
        x = x + self.attn(self.shift(self.ln_1(x), frame_mask), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


def inject_token_shift(vision_tower: nn.Module, blocks: Sequence[int], n_div: int = 7) -> nn.Module:
    """Wrap ``vision_tower.transformer.resblocks[i]`` for i in ``blocks`` in a
    :class:`TokenShiftBlock`, in place. A tower whose shifted blocks are already exactly these
    (same ``n_div``) is left as it is; any other prior shift is refused."""
    resblocks = vision_tower.transformer.resblocks
    depth = len(resblocks)
    wanted = sorted(set(int(i) for i in blocks))
    beyond = [i for i in wanted if not 0 <= i < depth]
    if beyond:
        raise ValueError(f"ts2net head: shift_blocks {beyond} do not exist in a vision tower of {depth} blocks "
                         f"(0..{depth - 1}); upstream's 10, 11 are ViT-B/32's; set model.head.shift_blocks")
    present = {i: b for i, b in enumerate(resblocks) if isinstance(b, TokenShiftBlock)}
    if present:
        if sorted(present) == wanted and all(b.n_div == n_div for b in present.values()):
            return vision_tower  # already injected, as asked: nothing to do
        raise ValueError(f"this vision tower already has TS2-Net's token shift in blocks {sorted(present)} "
                         f"(n_div {sorted({b.n_div for b in present.values()})}); it is injected once")
    for i in wanted:
        resblocks[i] = TokenShiftBlock(resblocks[i], n_div)
    return vision_tower


# ----------------------------------------------------------------------------------------------
# Token selection
# ----------------------------------------------------------------------------------------------

class PerturbedTopKFunction(torch.autograd.Function):
    """Perturbed top-K with upstream's gradient. forward(scores [M, P], noise [M, S, P], k,
    sigma) -> indicator [M, k, P] = mean over the S draws of one-hot(top-k of scores + sigma x
    noise, sorted by patch index). backward: upstream's estimator, for each output (k, d) only
    the derivative with respect to score d:
    grad_scores[m, d] = sum_k grad[m, k, d] x sum_s onehot[m, s, k, d] noise[m, s, d] / (S sigma)."""

    @staticmethod
    def forward(ctx, scores, noise, k: int, sigma: float):
        m, p = scores.shape
        samples = noise.shape[1]
        perturbed = scores.unsqueeze(1) + noise * sigma                           # [M, S, P]
        idx = torch.topk(perturbed, k=k, dim=-1, sorted=False).indices.sort(dim=-1).values  # [M, S, k]
        slots = idx.transpose(1, 2)                                               # [M, k, S]
        counts = scores.new_zeros(m, k, p).scatter_add_(2, slots, scores.new_ones(m, k, samples))
        ctx.save_for_backward(noise, idx)
        ctx.sigma = sigma
        ctx.p = p
        return counts / samples

    @staticmethod
    def backward(ctx, grad_output):
        noise, idx = ctx.saved_tensors
        m, samples, k = idx.shape
        slots = idx.transpose(1, 2)                                               # [M, k, S]
        picked = noise.gather(2, idx).transpose(1, 2).to(grad_output.dtype)       # noise at each draw's choice
        expected = grad_output.new_zeros(m, k, ctx.p).scatter_add_(2, slots, picked) / samples / ctx.sigma
        return (grad_output * expected).sum(dim=1), None, None, None


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int = 500, sigma: float = 0.05,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scores [M, P] -> indicator [M, k, P] (differentiable), in float32 (counts up to
    ``num_samples`` must be exact: half precision holds whole numbers only to 256 / 2048).
    ``noise`` [M, num_samples, P] defaults to ``torch.randn`` from the global generator of the
    scores' device."""
    if noise is None:
        noise = torch.randn((scores.shape[0], num_samples, scores.shape[1]), device=scores.device)
    return PerturbedTopKFunction.apply(scores.float(), noise.float(), k, sigma)


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores [M, P] -> indicator [M, k, P]: one-hot of the k best patches, sorted by index."""
    idx = torch.topk(scores, k=k, dim=-1).indices.sort(dim=-1).values
    return F.one_hot(idx, num_classes=scores.shape[-1]).float()


class PredictorLG(nn.Module):
    """upstream's score predictor: tokens [M, N, D] -> tanh scores [M, N, 1]. Each token's
    ``in_conv`` output (D/2) is concatenated with the CLS's (token 0) before ``out_conv``."""

    def __init__(self, width: int):
        super().__init__()
        half = width // 2
        self.in_conv = nn.Sequential(LayerNorm(width), nn.Linear(width, half, bias=False), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(2 * half, half, bias=False), nn.GELU(),
                                      nn.Linear(half, 1, bias=False), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return self.out_conv(torch.cat([x, x[:, :1].expand_as(x)], dim=-1))


@dataclass
class Selection:
    """``scores`` [B, T, N] (index 0, the CLS's, unused), ``indicator`` [B, T, K, P],
    ``tokens`` [B, T, K + 1, D] (CLS, then the K selected mixtures)."""

    scores: torch.Tensor
    indicator: torch.Tensor
    tokens: torch.Tensor


class VisualTokenSelection(nn.Module):
    """upstream's ``VisualTokenSelection``: per frame, CLS + the top-K patches (K = ``topk``)."""

    def __init__(self, width: int, topk: int = 3, num_samples: int = 500, sigma: float = 0.05,
                 topk_eval: str = "official"):
        super().__init__()
        self.topk, self.num_samples, self.sigma, self.topk_eval = topk, num_samples, sigma, topk_eval
        self.score_predictor = PredictorLG(width)

    def forward(self, tokens: torch.Tensor) -> Selection:
        """tokens [B, T, N, D] (0 = CLS) -> Selection."""
        b, t, n, d = tokens.shape
        if not 1 <= self.topk <= n - 1:
            raise ValueError(f"ts2net head: topk={self.topk} but frames have {n - 1} patch tokens")
        x = tokens.reshape(b * t, n, d)
        scores = self.score_predictor(x).squeeze(-1)                              # [BT, N]
        patch_scores = scores[:, 1:]
        if self.training or self.topk_eval == "official":
            indicator = perturbed_topk(patch_scores, self.topk, self.num_samples, self.sigma)
        else:
            indicator = hard_topk(patch_scores, self.topk)
        selected = torch.einsum("bkp,bpd->bkd", indicator, x[:, 1:])
        out = torch.cat([x[:, :1], selected], dim=1)
        return Selection(scores.view(b, t, n), indicator.view(b, t, self.topk, n - 1),
                         out.view(b, t, self.topk + 1, d))


# ----------------------------------------------------------------------------------------------
# Masks and similarities
# ----------------------------------------------------------------------------------------------

def expand_frame_mask(video_mask: torch.Tensor, per_frame: int, mode: str = "official") -> torch.Tensor:
    """[B, T] -> [B, T * per_frame], one entry per selected token (frame-major order).
    ``official``: tiled (token p gets frame p mod T's entry, upstream's ``repeat``);
    ``repeat``: each frame's entry for its own tokens."""
    if mode not in MASK_EXPAND:
        raise ValueError(f"mask_expand={mode!r}; expected one of {MASK_EXPAND}")
    if mode == "official":
        return video_mask.unsqueeze(1).repeat(1, per_frame, 1).view(video_mask.shape[0], -1)
    return video_mask.repeat_interleave(per_frame, dim=1)


def frame_weighted_sum(sim: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """sim [B, T, A] (frame cosines with A texts), frame_mask [B, T] -> [B, A]: sum over frames
    of softmax(4 s / ||s||) x s, the norm and softmax over the masked-in frames (upstream)."""
    m = frame_mask.bool().unsqueeze(-1)
    w = sim * m
    w = w / w.norm(dim=1, keepdim=True)
    w = torch.softmax(4 * w.masked_fill(~m, -1e18), dim=1)
    return (w * sim).sum(dim=1)


def frame_similarity(text: torch.Tensor, video: torch.Tensor, frame_mask: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """upstream's ``get_frame_similarity``: text [A, D], video [B, T, D] -> [A, B]."""
    sim = torch.einsum("btd,ad->bta", l2_normalize(video), l2_normalize(text))
    return logit_scale * frame_weighted_sum(sim, frame_mask).t()


def frame_selectedcls_similarity(text: torch.Tensor, video: torch.Tensor, frame_mask: torch.Tensor,
                                 logit_scale: torch.Tensor) -> torch.Tensor:
    """upstream's ``get_frame_selectedcls_similarity``: the same through a one-token text axis
    (a softmax over it of 4 s / |s|, which is 1: equal to ``frame_similarity``). -> [A, B]."""
    sim = torch.einsum("btd,ald->btla", l2_normalize(video), l2_normalize(text).unsqueeze(1))
    w = torch.softmax(4 * F.normalize(sim, dim=2), dim=2)
    return logit_scale * frame_weighted_sum((w * sim).sum(dim=2), frame_mask).t()


def _symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """upstream's (CrossEn(S) + CrossEn(S^T)) / 2."""
    target = torch.arange(logits.shape[0], device=logits.device)
    logits = logits.float()
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------

class TS2Net(PairHead):
    """Args:
        width: feature width D (CLIP's embed_dim; even: the score predictor halves it).
        shift_blocks: vision blocks given the token shift; None = upstream's 10, 11 (hard coded
            there for ViT-B/32); [] = none. (None rather than a tuple default: the checkpoint
            schema in ``builder`` reads a list default as a list of strings.)
        n_div: the shift's fold is tokens // n_div (upstream 7).
        topk: patches selected per frame besides the CLS (upstream 3).
        num_samples, sigma: the perturbed top-K's draws and noise scale (500, 0.05).
        topk_eval: ``official`` | ``hard`` (module docstring).
        mask_expand: ``official`` | ``repeat`` (module docstring).
        num_blocks, heads, num_positions, activation: seqTransf's (4 blocks, D // 64 heads, 77
            positions: upstream's CLIP-context-sized table; it must hold T (K + 1) tokens).
        frame_match_weight: w of w x semantic + (1 - w) x global (upstream 1.0).
    """

    name = "ts2net"
    visual_tokens = True
    text_tokens = False
    clamp_logit_scale = False   # upstream: self.clip.logit_scale.exp(), no clamp
    scores_are_logits = True    # evaluation ranks logit_scale x similarity
    official_prefixes = ("visual_token_selector.", "transformerClip.")
    official_extra_keys = ("frame_position_embeddings.weight",)
    #: built by upstream's CLIP4Clip.__init__ but never used in its forward
    official_ignored_keys = tuple(
        [f"text_token_selector.score_predictor.{k}" for k in
         ("in_conv.0.weight", "in_conv.0.bias", "in_conv.1.weight", "in_conv.1.bias", "out_conv.0.weight",
          "out_conv.2.weight")]
        + [f"visual_prompt_encoder.{k}" for k in
           ("positional_embedding", "conv1.weight", "layer_norm.weight", "layer_norm.bias")])
    official_markers = ("visual_token_selector.",)

    def __init__(self, width: int, shift_blocks: Optional[Sequence[int]] = None, n_div: int = 7,
                 topk: int = 3, num_samples: int = 500, sigma: float = 0.05, topk_eval: str = "official",
                 mask_expand: str = "official", num_blocks: int = 4, heads: Optional[int] = None,
                 num_positions: int = 77, activation: str = "quick_gelu", frame_match_weight: float = 1.0):
        super().__init__()
        for key, value, allowed in (("topk_eval", topk_eval, TOPK_EVAL), ("mask_expand", mask_expand, MASK_EXPAND)):
            if value not in allowed:
                raise ValueError(f"ts2net head: {key}={value!r}; expected one of {list(allowed)}")
        if shift_blocks is None:
            shift_blocks = DEFAULT_SHIFT_BLOCKS
        if isinstance(shift_blocks, (int, str)):
            raise ValueError(f"ts2net head: shift_blocks={shift_blocks!r}; expected a list of block indices, "
                             "e.g. [10, 11] ([] for no shift)")
        blocks = list(shift_blocks)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in blocks) or len(set(blocks)) != len(blocks):
            raise ValueError(f"ts2net head: shift_blocks={blocks}; expected distinct block indices >= 0")
        for key, value in (("n_div", n_div), ("topk", topk), ("num_samples", num_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ts2net head: {key}={value!r}; expected a whole number >= 1")
        if not sigma > 0:
            raise ValueError(f"ts2net head: sigma={sigma!r}; expected > 0")
        if width % 2:
            raise ValueError(f"ts2net head: width {width} is odd; the score predictor halves it")
        self.width = width
        self.shift_blocks = tuple(sorted(blocks))
        self.n_div, self.topk, self.mask_expand = n_div, topk, mask_expand
        self.frame_match_weight = float(frame_match_weight)
        self.visual_token_selector = VisualTokenSelection(width, topk, num_samples, sigma, topk_eval)
        for module in self.visual_token_selector.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
        self.temporal = SeqTransf(width, num_blocks=num_blocks, heads=heads, num_positions=num_positions,
                                  activation=activation)

    @property
    def topk_eval(self) -> str:
        return self.visual_token_selector.topk_eval

    @property
    def random_in_eval(self) -> bool:
        """Evaluation draws random numbers (official top-K noise): it runs under a fixed seed."""
        return self.topk_eval == "official"

    @topk_eval.setter
    def topk_eval(self, value: str) -> None:
        if value not in TOPK_EVAL:
            raise ValueError(f"ts2net head: topk_eval={value!r}; expected one of {list(TOPK_EVAL)}")
        self.visual_token_selector.topk_eval = value

    # ------------------------------------------------------------------ the CLIP it sits on
    def attach(self, clip: nn.Module) -> None:
        """The token shift into ``clip.visual``'s ``shift_blocks`` (refused beyond its depth)."""
        patches = getattr(clip.visual, "grid_size", 0) ** 2
        if patches and self.topk > patches:
            raise ValueError(f"ts2net head: topk={self.topk} but the vision tower has {patches} patches per frame")
        inject_token_shift(clip.visual, self.shift_blocks, self.n_div)

    # ------------------------------------------------------------------ features
    def text_features(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The projected end-of-text feature [B, D], as it is (not normalised)."""
        return text.float()

    def select(self, tokens: torch.Tensor) -> Selection:
        """Every output token of each frame [B, T, 1 + P, D] -> the token selection."""
        return self.visual_token_selector(tokens.float())

    def tokens_per_frame(self) -> int:
        return self.topk + 1

    def contextualize(self, selected: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Selected tokens [B, T, K+1, D] -> seqTransf over the T(K+1) tokens + residual, at the
        CLS positions [B, T, D] (not normalised). The key mask follows ``mask_expand``."""
        b, t, s, d = selected.shape
        if t * s > self.temporal.num_positions:
            raise ValueError(f"ts2net head: {t} frames of {s} tokens need {t * s} positions but the table has "
                             f"{self.temporal.num_positions}; set dataset.max_frames <= {self.max_frames} or "
                             f"model.head.num_positions >= {t * s}")
        x = self.temporal.contextualize(selected.reshape(b, t * s, d), expand_frame_mask(video_mask, s, self.mask_expand))
        return x[:, ::s]

    def video_features(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, 1 + P, D] tokens -> [B, T, D]: selection, seqTransf, the CLS positions."""
        return self.contextualize(self.select(frames).tokens, video_mask)

    def frame_mask_used(self, video_mask: torch.Tensor) -> torch.Tensor:
        """The frame mask the similarities use [B, T] (``mask_expand``: the expanded mask at the
        CLS positions; official: frame j counts when video_mask[((K+1) j) mod T] is 1)."""
        s = self.tokens_per_frame()
        return expand_frame_mask(video_mask, s, self.mask_expand)[:, ::s]

    # ------------------------------------------------------------------ scoring
    def similarities(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor,
                     logit_scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sim_semantic, sim_global) [A, B], logit scale included."""
        mask = self.frame_mask_used(video_mask)
        scale = logit_scale.to(video.dtype)
        return (frame_selectedcls_similarity(text, video, mask, scale),
                frame_similarity(text, video, mask, scale))

    def pair_scores(self, text, text_mask, video, video_mask, logit_scale):
        """[c, D] texts against [Nv, T, D] videos -> w x semantic + (1 - w) x global [c, Nv]."""
        semantic, global_ = self.similarities(text, video, video_mask, logit_scale)
        w = self.frame_match_weight
        return semantic if w == 1.0 else w * semantic + (1 - w) * global_

    def train_logits(self, text, text_mask, video, video_mask, logit_scale):
        """The semantic logits, whose symmetric cross-entropy the model adds; with
        frame_match_weight w != 1 the extra term makes the loss w CE(semantic) + (1 - w) CE(global)."""
        semantic, global_ = self.similarities(text, video, video_mask, logit_scale)
        w = self.frame_match_weight
        if w == 1.0:
            return semantic, None
        return semantic, (1 - w) * (_symmetric_cross_entropy(global_) - _symmetric_cross_entropy(semantic))

    # ------------------------------------------------------------------ weights
    @property
    def max_frames(self) -> int:
        return self.temporal.num_positions // self.tokens_per_frame()

    def frames_setting(self, frames: int):
        """(config key, value) that would let the head take ``frames`` frames (``check_frames``):
        every frame takes K + 1 positions of the temporal transformer."""
        return "num_positions", frames * self.tokens_per_frame()

    def init_from_clip(self, clip_state_dict: Mapping[str, torch.Tensor]) -> None:
        """As upstream: seqTransf's positions and blocks from CLIP's text tower; the score
        predictor keeps its N(0, 0.02) init."""
        self.temporal.init_from_clip(clip_state_dict)

    @classmethod
    def official_kwargs(cls, official_sd: Mapping[str, torch.Tensor]) -> dict:
        """seqTransf's block count and table size; upstream hard codes the rest (top-3, blocks
        10-11, n_div 7: the defaults)."""
        return SeqTransf.official_kwargs(official_sd)

    def convert_official(self, official_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {k: v for k, v in official_sd.items() if k.startswith("visual_token_selector.")}
        out.update({"temporal." + k: v for k, v in self.temporal.convert_official(official_sd).items()})
        return out

    @classmethod
    def convert_official_clip(cls, clip_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """upstream's shift wrapper stores the wrapped attention as
        ``visual.transformer.resblocks.{i}.attn.net.*``: back to ``...attn.*``."""
        out = {}
        for key, value in clip_sd.items():
            parts = key.split(".")
            if (len(parts) > 5 and parts[:3] == ["visual", "transformer", "resblocks"]
                    and parts[4:6] == ["attn", "net"]):
                key = ".".join(parts[:5] + parts[6:])
                if key in clip_sd:
                    raise ValueError(f"official TS2-Net checkpoint holds both 'clip.{key}' and its shift-wrapped "
                                     "'attn.net.' twin")
            out[key] = value
        return out


__all__ = ["PerturbedTopKFunction", "PredictorLG", "Selection", "TS2Net", "TokenShift", "TokenShiftBlock",
           "VisualTokenSelection", "expand_frame_mask", "frame_selectedcls_similarity", "frame_similarity",
           "frame_weighted_sum", "hard_topk", "inject_token_shift", "perturbed_topk", "shift_token_indices",
           "token_shift"]
