"""Batch assembly with tokenisation, run inside DataLoader workers (off the training loop)."""
from __future__ import annotations

from typing import List

from data.readers.collate import collate_fn


class TokenizeCollate:
    """``data.collate_fn`` plus ``input_ids`` / ``attention_mask`` [B, max_words] from the tokenizer.

    Contract with the training / evaluation loops:

    * Broken items (``"broken"`` key, from a dataset with ``skip_broken=True``) are dropped.
      Every batch has ``num_broken`` (int) and ``broken`` (list of ``(video_id, reason)``); the
      trainer should add up ``num_broken`` and log it (e.g. ``train/skipped_videos``): this
      object runs in worker processes, so only what is in the batch reaches the trainer. A
      warning naming each broken video is also issued (by the worker).
    * If every item of the batch was broken the result is ``{"empty": True, "num_broken": n,
      "broken": [...]}`` with no tensors and no ``input_ids``: skip it (no forward pass, no
      optimiser step), but count it.
    * Otherwise: ``video`` [B, T, 3, S, S], ``video_mask`` [B, T], ``index`` [B], ``video_id``
      (B str), and, when the items carry text, ``text`` (B str), ``input_ids`` and
      ``attention_mask`` [B, max_words]. Video-only items (``dataset.video_dataset()``) give a
      batch without the text fields.
    * Batches with text also carry ``num_cut`` (captions longer than ``max_words`` allows, cut
      to their first ``max_words - 2`` tokens) and ``num_empty`` (captions with no token), so
      the trainer can report them.
    """

    def __init__(self, tokenizer, max_words: int):
        self.tokenizer = tokenizer
        self.max_words = max_words

    def __call__(self, items: List[dict]) -> dict:
        batch = collate_fn(items)
        if "text" in batch:
            batch["input_ids"], batch["attention_mask"], lengths = self.tokenizer(
                batch["text"], max_words=self.max_words, return_lengths=True)
            batch["num_cut"] = int((lengths > self.max_words - 2).sum())
            batch["num_empty"] = int((lengths == 0).sum())
        return batch
