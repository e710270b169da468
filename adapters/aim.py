"""AIM (Yang et al., ICLR 2023, "Adapting Image Models for Efficient Video Action Recognition")
injected into a CLIP vision tower without copying its blocks.

``inject_aim(clip.visual, num_frames)`` wraps every ``ResidualAttentionBlock`` in an
:class:`AIMBlock` that reuses the block's own ``attn``, ``ln_1``, ``mlp`` and ``ln_2`` modules
under the same attribute names, so ``visual.transformer.resblocks.N.attn.in_proj_weight`` and
every other pretrained key stays where it was; the adapters add new keys beside them. It also
installs a zero-initialised :class:`TemporalEmbedding` at the tower's ``pre_ln_adapter`` hook.

Frame layout: the tower sees images [B*T, 3, H, W] with the T frames of a video contiguous,
and ``frame_mask`` [B, T] (1 = real frame) in its context, as ``CLIP4Clip.encode_video`` passes.
Unlike the AIM reference code, temporal attention honours the mask: padded frames are never
attended to, so they cannot change the features of real frames.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .adapter import Adapter, DropPath


def _num_frames(n: int, frame_mask: Optional[torch.Tensor], num_frames: Optional[int],
                who: str) -> int:
    """T for a batch of n = B*T images: from frame_mask [B, T] if given, else num_frames."""
    if frame_mask is not None:
        if frame_mask.ndim != 2 or frame_mask.shape[0] * frame_mask.shape[1] != n:
            raise ValueError(f"{who}: frame_mask of shape {tuple(frame_mask.shape)} does not describe "
                             f"{n} images as [B, T] videos (need B * T == {n})")
        return frame_mask.shape[1]
    if num_frames is None:
        raise ValueError(f"{who} needs the frame layout: pass frame_mask [B, T] in the context "
                         "(CLIP4Clip.encode_video does) or set num_frames")
    if n % num_frames != 0:
        raise ValueError(f"{who}: {n} images are not a whole number of videos of num_frames="
                         f"{num_frames}; pass frame_mask [B, T] to give the layout")
    return num_frames


def temporal_key_mask(frame_mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """frame_mask [B, T] (1 = valid) -> bool key mask [B*tokens, 1, 1, T] for attention over
    the T frames of each token position (rows ordered as the [B*(1+HW), T, D] rearrangement).

    A video with no valid frame would leave every key masked and SDPA would return NaN, which
    survives the heads' masking (NaN * 0 = NaN); such a video attends to all its frames instead.
    """
    valid = frame_mask.bool()
    valid = valid | ~valid.any(dim=1, keepdim=True)
    b, t = valid.shape
    return valid[:, None, :].expand(b, tokens, t).reshape(b * tokens, 1, 1, t)


class AIMBlock(nn.Module):
    """A CLIP ``ResidualAttentionBlock`` with AIM's temporal, spatial and joint adapters.

    For x [B*T, L, D] (L = 1 + HW tokens per frame):

    - temporal: per token position, attention over the T frames with the block's own (shared)
      ``attn`` and ``ln_1``; ``x = x + drop_path(temporal_adapter(attn))`` (adapter without skip).
    - spatial: ``x = x + spatial_adapter(attn(ln_1(x)))`` (adapter with skip). As in AIM's code
      this branch gets no drop path: it carries the frozen block's own attention residual.
    - joint: ``xn = ln_2(x); x = x + mlp(xn) + drop_path(scale * joint_adapter(xn))``.

    A disabled kind falls back to the plain block's residual. At initialisation (adapters'
    ``fc2`` zero) the output equals the wrapped block's exactly.

    Args:
        block: the block to wrap; its ``attn``, ``ln_1``, ``mlp``, ``ln_2`` are reused as they
            are (same objects, same state-dict names). The block itself is not kept.
        num_frames: T to assume when no ``frame_mask`` is passed (None: require the mask).
        temporal, spatial, joint: which adapters to add.
        scale: weight s of the joint adapter.
        ratio: adapter bottleneck ratio.
        drop_path: stochastic-depth probability for the temporal and joint branches.
    """

    def __init__(self, block: nn.Module, num_frames: Optional[int] = None, temporal: bool = True,
                 spatial: bool = True, joint: bool = True, scale: float = 0.5, ratio: float = 0.25,
                 drop_path: float = 0.0):
        super().__init__()
        missing = [name for name in ("attn", "ln_1", "mlp", "ln_2") if not hasattr(block, name)]
        if missing:
            raise TypeError(f"AIMBlock wraps a CLIP ResidualAttentionBlock; {type(block).__name__} "
                            f"has no {missing}")
        if isinstance(block, AIMBlock):
            raise ValueError("this block already is an AIMBlock; AIM adapters are injected once")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.attn, self.ln_1, self.mlp, self.ln_2 = block.attn, block.ln_1, block.mlp, block.ln_2
        self.num_frames = num_frames
        self.scale = scale
        width = block.attn.in_proj_weight.shape[1]
        ref = block.attn.in_proj_weight

        def new_adapter(skip: bool) -> Adapter:
            # Built where the block lives (GPU, or meta for sizing) and in its dtype, so the
            # injected model runs wherever the plain one ran.
            with torch.device(ref.device):
                return Adapter(width, ratio=ratio, skip=skip).to(dtype=ref.dtype)

        self.temporal_adapter = new_adapter(skip=False) if temporal else None
        self.spatial_adapter = new_adapter(skip=True) if spatial else None
        self.joint_adapter = new_adapter(skip=False) if joint else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False, frame_mask: Optional[torch.Tensor] = None,
                **context) -> torch.Tensor:
        """x: [B*T, L, D] -> [B*T, L, D]. ``attn_mask``/``is_causal`` apply to the spatial
        attention (None/False in the vision tower); ``frame_mask`` [B, T] gives T and which
        frames are padding. Other context is ignored."""
        if self.temporal_adapter is not None:
            x = x + self.drop_path(self._temporal(x, frame_mask))
        attn = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = x + (self.spatial_adapter(attn) if self.spatial_adapter is not None else attn)
        xn = self.ln_2(x)
        if self.joint_adapter is None:
            return x + self.mlp(xn)
        return x + self.mlp(xn) + self.drop_path(self.scale * self.joint_adapter(xn))

    def _temporal(self, x: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention across the frames of each video at every token position.
        [B*T, L, D] -> [B*L, T, D] -> attn -> adapter -> [B*T, L, D]."""
        n, tokens, dim = x.shape
        t = _num_frames(n, frame_mask, self.num_frames, "AIMBlock temporal attention")
        b = n // t
        xt = x.view(b, t, tokens, dim).transpose(1, 2).reshape(b * tokens, t, dim)
        mask = temporal_key_mask(frame_mask, tokens) if frame_mask is not None else None
        xt = self.temporal_adapter(self.attn(self.ln_1(xt), attn_mask=mask))
        return xt.view(b, tokens, t, dim).transpose(1, 2).reshape(n, tokens, dim)

    def extra_repr(self) -> str:
        kinds = [k for k, m in (("temporal", self.temporal_adapter), ("spatial", self.spatial_adapter),
                                ("joint", self.joint_adapter)) if m is not None]
        return f"adapters={kinds}, scale={self.scale}, num_frames={self.num_frames}"


class TemporalEmbedding(nn.Module):
    """A learned embedding per frame index, added to every token of that frame (AIM).

    Installed as the vision tower's ``pre_ln_adapter`` (after the positional embedding, before
    ``ln_pre``). Zero-initialised, so it starts as the identity.

    Args:
        num_frames: the most frames a video may have (T <= num_frames at every call).
        width: token width D.
    """

    def __init__(self, num_frames: int, width: int):
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        self.embedding = nn.Parameter(torch.zeros(num_frames, width))

    def forward(self, x: torch.Tensor, frame_mask: Optional[torch.Tensor] = None,
                **context) -> torch.Tensor:
        """x: [B*T, L, D] tokens, frames of a video contiguous -> [B*T, L, D]."""
        n, tokens, dim = x.shape
        t = _num_frames(n, frame_mask, self.num_frames, "TemporalEmbedding")
        if t > self.num_frames:
            raise ValueError(f"videos have T={t} frames but the temporal embedding holds num_frames="
                             f"{self.num_frames}; inject AIM with num_frames >= the largest max_frames used")
        emb = self.embedding[:t].to(x.dtype)
        return (x.view(n // t, t, tokens, dim) + emb[None, :, None, :]).view(n, tokens, dim)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, width={self.embedding.shape[1]}"


def inject_aim(vision_tower: nn.Module, num_frames: int, temporal: bool = True,
               spatial: bool = True, joint: bool = True, scale: float = 0.5, ratio: float = 0.25,
               drop_path: float = 0.0, temporal_embedding: bool = True) -> nn.Module:
    """Put AIM adapters into a CLIP vision tower, in place; returns the tower.

    Every ``vision_tower.transformer.resblocks[i]`` becomes an :class:`AIMBlock` with drop-path
    rate ``drop_path * i / (layers - 1)`` (linear in depth, as AIM); with ``temporal_embedding``
    a :class:`TemporalEmbedding` is installed at ``vision_tower.pre_ln_adapter``. New modules
    take the device and dtype of the block they wrap.

    Inject after loading the pretrained CLIP weights (or load them with ``strict=False``: only
    adapter keys are missing) and before building the optimiser.

    Args:
        vision_tower: ``clip.visual`` (a ``VisionTransformer``), not the CLIP or CLIP4Clip model.
        num_frames: frames per video the temporal embedding covers (>= max_frames); also the
            T assumed when the tower is called without ``frame_mask``.
        temporal, spatial, joint: adapter kinds to add (see :class:`AIMBlock`).
        scale: joint-adapter weight s. ratio: adapter bottleneck ratio.
        drop_path: stochastic-depth rate of the last block.
        temporal_embedding: install the temporal embedding.
    """
    if not hasattr(vision_tower, "pre_ln_adapter") or not hasattr(getattr(vision_tower, "transformer", None), "resblocks"):
        hint = " (pass model.clip.visual)" if hasattr(vision_tower, "clip") else \
            " (pass clip.visual)" if hasattr(vision_tower, "visual") else ""
        raise TypeError(f"inject_aim expects a CLIP vision tower with .transformer.resblocks and "
                        f".pre_ln_adapter, got {type(vision_tower).__name__}{hint}")
    if not (temporal or spatial or joint or temporal_embedding):
        raise ValueError("inject_aim with temporal, spatial, joint and temporal_embedding all False "
                         "would add nothing")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
    blocks = vision_tower.transformer.resblocks
    if any(isinstance(b, AIMBlock) for b in blocks) or isinstance(vision_tower.pre_ln_adapter, TemporalEmbedding):
        raise RuntimeError("AIM adapters are already injected into this vision tower; injecting twice "
                           "would stack adapters (build a fresh model instead)")
    if temporal_embedding and vision_tower.pre_ln_adapter is not None:
        raise RuntimeError(f"vision_tower.pre_ln_adapter is already taken by "
                           f"{type(vision_tower.pre_ln_adapter).__name__}; cannot install the temporal embedding")

    wrapped = [i for i, b in enumerate(blocks) if getattr(b, "wraps_block", False)]
    if wrapped:
        # A head's injected block (TS2-Net's token shift) would be dropped by the AIM block,
        # which rebuilds the block from its modules: refuse rather than lose it silently.
        raise RuntimeError(f"vision blocks {wrapped} are already wrapped ({type(blocks[wrapped[0]]).__name__}, "
                           "injected by the model's head); AIM adapters cannot be combined with that head")
    rates = torch.linspace(0, drop_path, len(blocks)).tolist()
    for i, block in enumerate(blocks):
        blocks[i] = AIMBlock(block, num_frames=num_frames, temporal=temporal, spatial=spatial,
                             joint=joint, scale=scale, ratio=ratio, drop_path=rates[i])
    if temporal_embedding:
        ref = vision_tower.positional_embedding
        with torch.device(ref.device):
            vision_tower.pre_ln_adapter = TemporalEmbedding(num_frames, ref.shape[-1]).to(dtype=ref.dtype)
    return vision_tower


__all__ = ["AIMBlock", "TemporalEmbedding", "inject_aim", "temporal_key_mask"]
