"""Batching for ``MSRVTTDataset`` items (tokenisation happens later, in the training loop)."""

from __future__ import annotations

import torch

__all__ = ["collate_fn"]


def collate_fn(batch: list[dict]) -> dict:
    """Stack a list of dataset items into a batch.

    Returns ``video`` [B, max_frames, 3, S, S] (the items' dtype), ``video_mask`` int64
    [B, max_frames], ``index`` int64 [B], and ``text`` / ``video_id`` as lists of B strings.
    """
    if not batch:
        raise ValueError("collate_fn got an empty batch")
    return {
        "video": torch.stack([b["video"] for b in batch]),
        "video_mask": torch.stack([b["video_mask"] for b in batch]),
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.int64),
        "text": [b["text"] for b in batch],
        "video_id": [b["video_id"] for b in batch],
    }
