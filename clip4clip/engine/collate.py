"""Batch assembly with tokenisation, run inside DataLoader workers (off the training loop)."""
from __future__ import annotations

from typing import List

import torch


class TokenizeCollate:
    """Stack ``video`` [B,T,3,H,W] / ``video_mask`` [B,T], keep ``text``/``video_id`` lists and
    add ``input_ids``/``attention_mask`` [B, max_words] from the tokenizer."""

    def __init__(self, tokenizer, max_words: int):
        self.tokenizer = tokenizer
        self.max_words = max_words

    def __call__(self, items: List[dict]) -> dict:
        batch = {
            "video": torch.stack([it["video"] for it in items]),
            "video_mask": torch.stack([torch.as_tensor(it["video_mask"]) for it in items]),
            "text": [it["text"] for it in items],
            "video_id": [it["video_id"] for it in items],
            "index": torch.tensor([int(it.get("index", -1)) for it in items]),
        }
        batch["input_ids"], batch["attention_mask"] = self.tokenizer(batch["text"], max_words=self.max_words)
        return batch
