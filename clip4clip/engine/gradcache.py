"""Gradient cache: the full-batch contrastive step computed in sub-batches (Gao et al. 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

The contrastive loss couples every pair of the batch, but the encoders treat each sample on
its own. So the step splits in three:

1. encode every chunk WITHOUT grad (no activations kept) -> all embeddings [B, D];
2. compute the full-batch loss on those embeddings (as leaves) and its gradient
   g = dLoss/d(embeddings) -- cheap, [B, D];
3. re-encode each chunk WITH grad and backpropagate ``sum(emb_chunk * g_chunk)``, whose
   parameter gradient is exactly the chunk's share of dLoss/dtheta.

Peak activation memory is that of one chunk; the loss and gradients are those of the plain
step (same arithmetic per sample; the random state of each chunk is replayed so dropout masks
match). The price is one extra forward pass.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch

Batch = Dict[str, torch.Tensor]
MODEL_KEYS = ("input_ids", "attention_mask", "video", "video_mask")


def split_batch(batch: Batch, chunk_size: int) -> List[Batch]:
    """The model inputs of ``batch`` in chunks of at most ``chunk_size`` samples."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = batch["video"].shape[0]
    return [{k: batch[k][i:i + chunk_size] for k in MODEL_KEYS} for i in range(0, n, chunk_size)]


class RngState:
    """CPU (and current CUDA device) random state, to replay a chunk's forward exactly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@torch.no_grad()
def encode_chunks(model, chunks: List[Batch], autocast: Callable[[], contextlib.AbstractContextManager],
                  device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, List[RngState]]:
    """Step 1. model(input_ids, attention_mask, video, video_mask) -> {'text_emb', 'video_emb'}.
    Returns text [B, D] and video [B, D] embeddings (float32; a cross-encoder's video features
    are frames [B, T, D]) and each chunk's random state."""
    texts, videos, states = [], [], []
    for chunk in chunks:
        states.append(RngState(device))
        with autocast():
            out = model(*(chunk[k] for k in MODEL_KEYS))
        texts.append(out["text_emb"].float())
        videos.append(out["video_emb"].float())
    return torch.cat(texts), torch.cat(videos), states


def backward_chunks(model, chunks: List[Batch], text_grad: torch.Tensor, video_grad: torch.Tensor,
                    states: List[RngState], autocast: Callable[[], contextlib.AbstractContextManager],
                    no_sync: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
                    extra: Optional[Callable[[], torch.Tensor]] = None) -> None:
    """Step 3. Re-encode each chunk with grad and backpropagate the cached embedding gradients
    text_grad / video_grad [B, D] (already multiplied by any loss scale).

    no_sync: DistributedDataParallel's ``no_sync`` -- gradients are all-reduced once, after the
    last chunk. extra(): a scalar added to the last chunk's backward, for parameters the loss
    used directly (the logit scale), so their gradient arrives inside the synchronised pass."""
    start = 0
    for i, (chunk, state) in enumerate(zip(chunks, states)):
        last = i == len(chunks) - 1
        n = chunk["video"].shape[0]
        state.restore()
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            with autocast():
                out = model(*(chunk[k] for k in MODEL_KEYS))
            # d/dtheta sum(e * g) = g . de/dtheta: the chain rule with the cached g.
            surrogate = ((out["text_emb"].float() * text_grad[start:start + n]).sum()
                         + (out["video_emb"].float() * video_grad[start:start + n]).sum())
            if last and extra is not None:
                surrogate = surrogate + extra()
            surrogate.backward()
        start += n
