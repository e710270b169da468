"""Retrieval evaluation: encode every caption and every video once, score all pairs, rank."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from ..metrics import retrieval_metrics, retrieval_metrics_multi
from .precision import autocast


@dataclass
class EncodedSplit:
    """Embeddings of a split. text_emb [Nt, D] and video_emb [Nv, D] are L2-normalised;
    text_video_index [Nt] gives each caption's video row."""

    text_emb: torch.Tensor
    video_emb: torch.Tensor
    text_video_index: torch.Tensor
    texts: List[str]
    video_ids: List[str]
    frame_weights: Optional[torch.Tensor] = None


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def encode_split(model, loader, device: torch.device, precision: str = "fp32",
                 progress: bool = True, desc: str = "eval") -> EncodedSplit:
    """Encode the captions and (unique) videos that ``loader`` yields.

    Every sample is encoded independently (eval mode, no batch statistics), so the batch size
    changes nothing but float rounding."""
    was_training = model.training
    model.eval()
    texts, text_embs, video_ids, video_embs, index, weights = [], [], [], [], [], []
    row_of = {}
    want_weights = hasattr(model.head, "frame_weights")
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = _to(batch, device)
        with autocast(device, precision):
            t = model.encode_text(batch["input_ids"], batch["attention_mask"])
            new = [i for i, vid in enumerate(batch["video_id"]) if vid not in row_of]
            for i in new:  # a video shared by several captions is encoded once
                row_of.setdefault(batch["video_id"][i], len(row_of))
            if new:
                sel = torch.tensor(new, device=device)
                video, mask = batch["video"][sel], batch["video_mask"][sel]
                if want_weights:
                    frames = model.encode_frames(video, frame_mask=mask)
                    v, w = model.head(frames, mask, return_weights=True)
                    weights.append(w.float().cpu())
                else:
                    v = model.encode_video(video, mask)
                video_embs.append(v.float().cpu())
                video_ids.extend(batch["video_id"][i] for i in new)
        text_embs.append(t.float().cpu())
        texts.extend(batch["text"])
        index.extend(row_of[vid] for vid in batch["video_id"])
    model.train(was_training)
    if not texts:
        raise ValueError("the evaluation split is empty")
    return EncodedSplit(torch.cat(text_embs), torch.cat(video_embs), torch.tensor(index),
                        texts, video_ids, torch.cat(weights) if weights else None)


def split_metrics(enc: EncodedSplit) -> Dict[str, Dict[str, float]]:
    """Text->video and video->text metrics from cosine similarities (the logit scale is a
    positive constant and does not change ranks)."""
    sim = enc.text_emb @ enc.video_emb.t()
    one_to_one = len(enc.video_ids) == len(enc.texts) and torch.equal(
        enc.text_video_index, torch.arange(len(enc.texts)))
    if one_to_one:
        return retrieval_metrics(sim)
    return retrieval_metrics_multi(sim, enc.text_video_index)


def evaluate(model, loader, device, precision="fp32", progress=True, desc="eval"):
    """-> (metrics {'t2v': {...}, 'v2t': {...}}, EncodedSplit)."""
    enc = encode_split(model, loader, device, precision, progress, desc)
    return split_metrics(enc), enc
