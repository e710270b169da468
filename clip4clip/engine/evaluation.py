"""Retrieval evaluation: encode every caption and every video once, score all pairs, rank.

Two-tower models score by one matrix product of the embeddings. A cross-encoder (tightTransf)
keeps each video's frame features and mask instead, and the model scores the pairs in chunks
of texts (``similarity_matrix``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from ..metrics import retrieval_metrics, retrieval_metrics_multi
from .precision import autocast

# Cross-encoder scoring: (text, video) sequences per pass, i.e. texts per pass = this // videos.
# 8192 sequences of 13 tokens x 512 are ~220 MB per activation in float32.
CROSS_PAIRS_PER_PASS = 8192


@dataclass
class EncodedSplit:
    """Embeddings of a split. text_emb [Nt, D] and video_emb [Nv, D] are L2-normalised;
    text_video_index [Nt] gives each caption's video row.

    For a cross-encoder (``video_mask`` set) they are the model's ``text_features`` [Nt, D]
    (raw) and ``video_features``, the frame features [Nv, T, D], with video_mask [Nv, T]."""

    text_emb: torch.Tensor
    video_emb: torch.Tensor
    text_video_index: torch.Tensor
    texts: List[str]
    video_ids: List[str]
    frame_weights: Optional[torch.Tensor] = None
    video_mask: Optional[torch.Tensor] = None

    @property
    def cross(self) -> bool:
        return self.video_mask is not None


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _encode_videos(model, video: torch.Tensor, mask: torch.Tensor, weights: list) -> torch.Tensor:
    """[B,T,3,H,W], [B,T] -> [B,D] (a cross-encoder: frame features [B,T,D]); heads with frame
    weights also append them [B,T] to ``weights`` (TensorBoard shows their distribution)."""
    if not model.two_tower:
        return model.video_features(video, mask)
    if not hasattr(model.head, "frame_weights"):
        return model.encode_video(video, mask)
    v, w = model.head(model.encode_frames(video, frame_mask=mask), mask, return_weights=True)
    weights.append(w.float().cpu())
    return v


@torch.no_grad()
def encode_split(model, loader, device: torch.device, precision: str = "fp32",
                 progress: bool = True, desc: str = "eval") -> EncodedSplit:
    """Encode the captions and (unique) videos that ``loader`` yields.

    Every sample is encoded independently (eval mode, no batch statistics), so the batch size
    changes nothing but float rounding."""
    was_training = model.training
    model.eval()
    texts, text_embs, video_ids, video_embs, index, weights, masks = [], [], [], [], [], [], []
    row_of = {}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = _to(batch, device)
        with autocast(device, precision):
            t = model.text_features(batch["input_ids"], batch["attention_mask"])
            new = []
            for i, vid in enumerate(batch["video_id"]):  # a video shared by several captions
                if vid not in row_of:                     # is encoded once, even within a batch
                    row_of[vid] = len(row_of)
                    new.append(i)
            if new:
                sel = torch.tensor(new, device=device)
                video, mask = batch["video"][sel], batch["video_mask"][sel]
                v = _encode_videos(model, video, mask, weights)
                video_embs.append(v.float().cpu())
                masks.append(mask.cpu())
                video_ids.extend(batch["video_id"][i] for i in new)
        text_embs.append(t.float().cpu())
        texts.extend(batch["text"])
        index.extend(row_of[vid] for vid in batch["video_id"])
    model.train(was_training)
    if not texts:
        raise ValueError("the evaluation split is empty")
    return EncodedSplit(torch.cat(text_embs), torch.cat(video_embs), torch.tensor(index),
                        texts, video_ids, torch.cat(weights) if weights else None,
                        None if model.two_tower else torch.cat(masks))


@torch.no_grad()
def encode_texts_and_videos(model, dataset, tokenizer, max_words: int, batch_size: int, device,
                            precision: str = "fp32", num_workers: int = 0, progress: bool = True,
                            desc: str = "eval") -> EncodedSplit:
    """Two-stream encoding for datasets exposing ``texts``, ``text_video_ids`` and
    ``video_dataset()``: each caption and each UNIQUE video is encoded once (MSVD has ~40
    captions per video; decoding its videos per caption would be 40x the work)."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    texts, text_vids = list(dataset.texts), list(dataset.text_video_ids)
    text_embs = []
    for i in tqdm(range(0, len(texts), batch_size), desc=f"{desc} texts", disable=not progress, leave=False):
        ids, mask = tokenizer(texts[i:i + batch_size], max_words=max_words)
        with autocast(device, precision):
            text_embs.append(model.text_features(ids.to(device), mask.to(device)).float().cpu())
    videos = dataset.video_dataset()

    def collate(items):
        return {"video": torch.stack([it["video"] for it in items]),
                "video_mask": torch.stack([torch.as_tensor(it["video_mask"]) for it in items]),
                "video_id": [it["video_id"] for it in items]}

    loader = DataLoader(videos, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    video_ids, video_embs, weights, masks = [], [], [], []
    for batch in tqdm(loader, desc=f"{desc} videos", disable=not progress, leave=False):
        video = batch["video"].to(device, non_blocking=True)
        mask = batch["video_mask"].to(device, non_blocking=True)
        with autocast(device, precision):
            v = _encode_videos(model, video, mask, weights)
        video_embs.append(v.float().cpu())
        masks.append(batch["video_mask"])
        video_ids.extend(batch["video_id"])
    model.train(was_training)
    row_of = {vid: i for i, vid in enumerate(video_ids)}
    missing = sorted(set(text_vids) - set(row_of))
    if missing:
        raise ValueError(f"captions refer to videos the split did not yield: {missing[:5]}")
    if not texts:
        raise ValueError("the evaluation split is empty")
    return EncodedSplit(torch.cat(text_embs), torch.cat(video_embs),
                        torch.tensor([row_of[v] for v in text_vids]), texts, video_ids,
                        torch.cat(weights) if weights else None,
                        None if model.two_tower else torch.cat(masks))


@torch.no_grad()
def similarity_matrix(enc: EncodedSplit, model=None, precision: str = "fp32",
                      rows: Optional[slice] = None) -> torch.Tensor:
    """Scores [Nt, Nv] (float32, CPU; rows are captions, ``rows`` selects some) of a split.
    Two-tower: cosine similarities (the logit scale is a positive constant and does not change
    ranks). Cross-encoder: ``model.score`` on the model's device, in eval mode, under the
    evaluation precision, in passes of at most ``CROSS_PAIRS_PER_PASS`` pairs."""
    text = enc.text_emb if rows is None else enc.text_emb[rows]
    if not enc.cross:
        return text @ enc.video_emb.t()
    if model is None:
        raise ValueError("a cross-encoder's split is scored by its model: pass the model")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            sim = model.score(text.to(device), enc.video_emb.to(device), enc.video_mask.to(device),
                              text_chunk=max(1, CROSS_PAIRS_PER_PASS // max(len(enc.video_ids), 1)))
    finally:
        model.train(was_training)
    return sim.float().cpu()


def split_metrics(enc: EncodedSplit, model=None, precision: str = "fp32") -> Dict[str, Dict[str, float]]:
    """Text->video and video->text metrics of ``similarity_matrix`` (``model`` is needed for a
    cross-encoder's split only)."""
    sim = similarity_matrix(enc, model, precision)
    one_to_one = len(enc.video_ids) == len(enc.texts) and torch.equal(
        enc.text_video_index, torch.arange(len(enc.texts)))
    if one_to_one:
        return retrieval_metrics(sim)
    return retrieval_metrics_multi(sim, enc.text_video_index)


def evaluate(model, dataset, tokenizer, max_words: int, batch_size: int, device, precision="fp32",
             num_workers: int = 0, progress: bool = True, desc: str = "eval"):
    """Score every caption of ``dataset`` against every video of it.
    -> (metrics {'t2v': {...}, 'v2t': {...}}, EncodedSplit)."""
    if hasattr(dataset, "video_dataset"):
        enc = encode_texts_and_videos(model, dataset, tokenizer, max_words, batch_size, device,
                                      precision, num_workers, progress, desc)
    else:  # item datasets: (caption, video) pairs, videos shared by captions encoded once
        from torch.utils.data import DataLoader

        from .collate import TokenizeCollate
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            collate_fn=TokenizeCollate(tokenizer, max_words),
                            pin_memory=device.type == "cuda")
        enc = encode_split(model, loader, device, precision, progress, desc)
    return split_metrics(enc, model, precision), enc
