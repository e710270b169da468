"""Batching dataset items, dropping the ones marked broken.

The batch contract (shared with ``clip4clip.engine.tokenize_collate.TokenizeCollate``):

* Items with a ``"broken"`` key (a dataset built with ``skip_broken=True`` could not read the
  video; the value says why) are left out of the batch. Every batch carries ``num_broken``
  (int) and ``broken`` (list of ``(video_id, reason)``) so the training loop can count and log
  them: collate runs inside DataLoader worker processes, so a counter kept there would never
  reach the trainer.
* When every item of a batch is broken, the batch is ``{"empty": True, "num_broken": n,
  "broken": [...]}`` with no tensors: skip the step (and count the items).
* Otherwise: ``video`` [B, max_frames, 3, S, S] (the items' dtype), ``video_mask`` int64
  [B, max_frames], ``index`` int64 [B], ``video_id`` list of B str, and ``text`` list of B str
  when the items have text (video-only items from ``video_dataset()`` have none).
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["BrokenVideoWarning", "collate_fn", "empty_batch", "split_broken"]


class BrokenVideoWarning(UserWarning):
    """A dataset item was dropped from its batch because its video could not be read."""


def split_broken(items: list[dict], warn: bool = True) -> tuple[list[dict], list[tuple[str, str]]]:
    """(items that are fine, [(video_id, reason)] of the broken ones); warns once per broken item."""
    good, broken = [], []
    for it in items:
        if it.get("broken"):
            broken.append((str(it.get("video_id")), str(it["broken"])))
            if warn:
                warnings.warn(f"skipping unreadable video {it.get('video_id')!r}: {it['broken']}", BrokenVideoWarning, stacklevel=3)
        else:
            good.append(it)
    return good, broken


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, writing straight into shared memory inside a DataLoader worker (as PyTorch's
    default_collate does): the batch then crosses to the main process without another copy,
    which matters for float32 clips (16 x 12 x 3 x 224 x 224 x 4 bytes = 116 MB a batch)."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        first = tensors[0]
        storage = first.untyped_storage()._new_shared(len(tensors) * first.numel() * first.element_size())
        out = first.new_empty(0).set_(storage).view(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def empty_batch(broken: list[tuple[str, str]]) -> dict:
    """The marker for a batch whose items were all broken."""
    return {"empty": True, "num_broken": len(broken), "broken": broken}


def collate_fn(batch: list[dict]) -> dict:
    """Stack dataset items into a batch (see the module docstring for the contract)."""
    if not batch:
        raise ValueError("collate_fn got an empty batch")
    items, broken = split_broken(batch)
    if not items:
        return empty_batch(broken)
    out = {
        "video": _stack([b["video"] for b in items]),
        "video_mask": torch.stack([torch.as_tensor(b["video_mask"]) for b in items]),
        "index": torch.tensor([int(b["index"]) for b in items], dtype=torch.int64),
        "video_id": [b["video_id"] for b in items],
        "num_broken": len(broken),
        "broken": broken,
    }
    if all("text" in b for b in items):
        out["text"] = [b["text"] for b in items]
    return out
