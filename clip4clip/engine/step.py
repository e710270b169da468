"""Forward and backward of one training batch with the global-batch contrastive loss, plain or
through the gradient cache. The optimiser step stays in the trainer."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..loss import ClipLoss
from ..model import MAX_LOGIT_SCALE
from .distributed import all_reduce_mean
from .gradcache import backward_chunks, encode_chunks, split_batch
from .precision import autocast


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to ``device`` (non-blocking: the loader pins memory on CUDA). A uint8 ``video``
    (datasets built with ``normalize=False``) is CLIP-normalised there, after a copy 4x smaller
    than float32 frames; the result is float32 and autocast lowers it where it pays."""
    from data.video.transforms import normalize_uint8
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if torch.is_tensor(out.get("video")) and out["video"].dtype == torch.uint8:
        out["video"] = normalize_uint8(out["video"])
    return out


def logit_scale(core) -> torch.Tensor:
    """The multiplier of the similarities: exp(log scale) clamped at 100, as CLIP4Clip.similarity."""
    return core.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


class ContrastiveStep:
    """Args:
        model: CLIP4Clip, or DistributedDataParallel around it (its forward returns
            'text_emb' and 'video_emb' [b, D]).
        loss_fn: ClipLoss for this rank (default: the single-process loss).
        device, precision: 'fp32' | 'bf16' | 'fp16' (autocast; master weights stay float32).
        scaler: a GradScaler (fp16) or None.
        chunk_size: 0 = one forward/backward of the batch; k > 0 = gradient cache in chunks
            of k samples (same loss and gradients, activation memory of k samples).

    ``step(batch, check)`` leaves the gradients in ``.grad`` (scaled by the scaler, and after
    DDP's all-reduce identical on every rank) and returns the loss of the GLOBAL batch
    (detached float32 scalar, the same on every rank). ``check(loss)`` runs before any backward,
    so a non-finite loss can stop the run on every rank before gradients are touched.

    A pair head (tightTransf, DRL, X-CLIP, TS2-Net) scores the batch's pairs itself: its loss is
    the model's own (one process only). With the gradient cache its step 2 runs the head on the cached text
    and frame features, so the head's gradients come from there.
    """

    def __init__(self, model, loss_fn: Optional[ClipLoss] = None, device: Optional[torch.device] = None,
                 precision: str = "fp32", scaler=None, chunk_size: int = 0):
        if chunk_size < 0:
            raise ValueError(f"trainer.loss_chunk_size={chunk_size}; expected 0 (off) or a positive chunk size")
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else ClipLoss()
        self.device, self.precision = device or torch.device("cpu"), precision
        self.scaler, self.chunk_size = scaler, chunk_size
        self.cross = not getattr(self.core, "two_tower", True)
        if self.cross and self.loss_fn.world_size > 1:
            # Every rank would have to score its texts against all videos and all texts against
            # its videos (2x the pairs of one process) through a gather of frame features.
            raise ValueError(f"model/head={self.core.head.name} (a cross-encoder) trains in one process "
                             f"only; this run has {self.loss_fn.world_size} processes (torchrun); "
                             "start it without torchrun")

    @property
    def core(self):
        return getattr(self.model, "module", self.model)

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def __call__(self, batch: Dict[str, torch.Tensor],
                 check: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
        if self.chunk_size and batch["video"].shape[0] > self.chunk_size:
            return self._chunked(batch, check)
        with self._autocast():
            out = self.model(batch["input_ids"], batch["attention_mask"], batch["video"], batch["video_mask"])
        if self.cross:
            loss = out["loss"]
        else:
            loss = self.loss_fn(out["text_emb"], out["video_emb"], logit_scale(self.core))
        total = all_reduce_mean(loss)
        if check is not None:
            check(total)
        self._backward(loss)
        return total

    def _chunked(self, batch, check) -> torch.Tensor:
        chunks = split_batch(batch, self.chunk_size)
        # Step 1 on the bare module: no gradient, so DDP has nothing to do.
        text, video, states = encode_chunks(self.core, chunks, self._autocast, self.device)
        text.requires_grad_(True)
        video.requires_grad_(True)
        if self.cross:
            # The head sees the whole batch here, with grad: its parameters get their gradient
            # now, the encoders theirs through the cached feature gradients below. (Its dropout
            # draws other random numbers than in the plain step, which runs it after the encoders.)
            with self._autocast():
                _, loss = self.core.pair_loss(text, video, batch["video_mask"], batch["attention_mask"])
        else:
            scale = logit_scale(self.core).detach().requires_grad_(True)
            loss = self.loss_fn(text, video, scale)
        total = all_reduce_mean(loss)
        if check is not None:
            check(total)
        self._backward(loss)  # -> dLoss/d(embeddings) (and d/dscale), times the fp16 scale
        backward_chunks(self.model, chunks, text.grad, video.grad, states, self._autocast,
                        no_sync=getattr(self.model, "no_sync", None),
                        extra=None if self.cross else lambda: (logit_scale(self.core) * scale.grad).sum())
        return total


__all__ = ["ContrastiveStep", "batch_to_device", "logit_scale"]
