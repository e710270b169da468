"""Retrieval evaluation over several processes: each rank encodes a contiguous share of the
videos (with their captions); rank 0 puts the shares back into the single-process order and
computes the metrics once, which every rank then receives.

Encoding itself is ``evaluation.py``'s (same batching and frame-weight handling), so the
merged embeddings are those of a single-process evaluation up to float rounding.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Subset

from .distributed import DistInfo, broadcast_object, gather_objects
from .evaluation import (EncodedSplit, Postprocess, Querybank, encode_split,
                         encode_texts_and_videos, evaluate_with_postprocessing, score_split)


class _VideoShard:
    """The two-stream evaluation interface (texts, text_video_ids, video_dataset()) restricted
    to videos [lo, hi) of the parent's video order and the captions of those videos."""

    def __init__(self, dataset, lo: int, hi: int):
        videos = dataset.video_dataset()
        order = list(videos.video_ids)
        mine = set(order[lo:hi])
        vids = list(dataset.text_video_ids)
        self.text_rows = [i for i, v in enumerate(vids) if v in mine]
        all_texts = list(dataset.texts)
        self.texts = [all_texts[i] for i in self.text_rows]
        self.text_video_ids = [vids[i] for i in self.text_rows]
        self._videos = Subset(videos, range(lo, hi))

    def video_dataset(self):
        return self._videos


def _share(n: int, info: DistInfo) -> Tuple[int, int]:
    return n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size


def _encode_share(model, dataset, info: DistInfo, tokenizer, max_words, batch_size, device,
                  precision, num_workers, progress, desc) -> Optional[dict]:
    """This rank's share, as plain tensors/lists (None when the share is empty)."""
    if hasattr(dataset, "video_dataset"):
        lo, hi = _share(len(dataset.video_dataset()), info)
        shard = _VideoShard(dataset, lo, hi)
        if not shard.texts:
            return None
        enc = encode_texts_and_videos(model, shard, tokenizer, max_words, batch_size, device, precision,
                                      num_workers, progress, desc)
        rows = shard.text_rows
    else:  # item datasets: contiguous items; videos shared by neighbours are merged on rank 0
        from .tokenize_collate import TokenizeCollate
        lo, hi = _share(len(dataset), info)
        if lo == hi:
            return None
        loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=TokenizeCollate(tokenizer, max_words), pin_memory=device.type == "cuda")
        enc = encode_split(model, loader, device, precision, progress, desc)
        rows = list(range(lo, hi))
    return {"rows": rows, "text_emb": enc.text_emb, "texts": enc.texts,
            "text_vids": [enc.video_ids[i] for i in enc.text_video_index.tolist()],
            "video_ids": enc.video_ids, "video_emb": enc.video_emb, "frame_weights": enc.frame_weights,
            "video_mask": enc.video_mask, "text_mask": enc.text_mask, "logit_scores": enc.logit_scores}


def merge_shares(shares: List[Optional[dict]]) -> EncodedSplit:
    """Shares in rank order -> the EncodedSplit a single process would have produced: captions
    in dataset order, videos in first-appearance order."""
    shares = [s for s in shares if s is not None]
    if not shares:
        raise ValueError("the evaluation split is empty")
    texts = sorted(((row, s["text_emb"][i], s["texts"][i], s["text_vids"][i],
                     None if s.get("text_mask") is None else s["text_mask"][i])
                    for s in shares for i, row in enumerate(s["rows"])), key=lambda t: t[0])
    row_of, video_embs, weights, masks = {}, [], [], []
    for s in shares:  # rank order = the single process's video order
        for i, vid in enumerate(s["video_ids"]):
            if vid not in row_of:
                row_of[vid] = len(row_of)
                video_embs.append(s["video_emb"][i])
                if s["frame_weights"] is not None:
                    weights.append(s["frame_weights"][i])
                if s.get("video_mask") is not None:  # a cross-encoder's frame masks
                    masks.append(s["video_mask"][i])
    return EncodedSplit(
        text_emb=torch.stack([t[1] for t in texts]), video_emb=torch.stack(video_embs),
        text_video_index=torch.tensor([row_of[t[3]] for t in texts]), texts=[t[2] for t in texts],
        video_ids=list(row_of), frame_weights=torch.stack(weights) if weights else None,
        video_mask=torch.stack(masks) if masks else None,
        text_mask=torch.stack([t[4] for t in texts]) if texts[0][4] is not None else None,
        logit_scores=shares[0].get("logit_scores", False))


def evaluate_distributed(model, dataset, info: DistInfo, tokenizer, max_words: int, batch_size: int,
                         device, precision: str = "fp32", num_workers: int = 0, progress: bool = True,
                         desc: str = "eval"):
    """``evaluation.evaluate`` over all ranks. -> (metrics on every rank, EncodedSplit on rank 0
    and None on the others). One process: exactly ``evaluate``. Accepts uint8 videos."""
    metrics, _, enc = evaluate_distributed_with_postprocessing(
        model, dataset, info, tokenizer, max_words, batch_size, device, precision, num_workers, progress, desc)
    return metrics, enc


def evaluate_distributed_with_postprocessing(model, dataset, info: DistInfo, tokenizer, max_words: int,
                                             batch_size: int, device, precision: str = "fp32",
                                             num_workers: int = 0, progress: bool = True, desc: str = "eval",
                                             post: Optional[Postprocess] = None,
                                             querybank: Optional[Querybank] = None):
    """``evaluation.evaluate_with_postprocessing`` over all ranks -> (plain metrics and
    PostprocessedMetrics on every rank, EncodedSplit on rank 0 and None on the others). The
    scoring, post-processing and querybank encoding run on rank 0 (``querybank`` is only read
    there)."""
    if not info.enabled:
        return evaluate_with_postprocessing(model, dataset, tokenizer, max_words, batch_size, device, precision,
                                            num_workers, progress, desc, post, querybank)
    share = _encode_share(model, dataset, info, tokenizer, max_words, batch_size, device, precision,
                          num_workers, progress and info.is_main, desc)
    shares = gather_objects(share)
    enc = scored = None
    if info.is_main:
        enc = merge_shares(shares)
        scored = score_split(enc, model, precision, post, querybank, tokenizer=tokenizer, max_words=max_words,
                             batch_size=batch_size, device=device, progress=progress)
    metrics, processed = broadcast_object(scored)
    return metrics, processed, enc
