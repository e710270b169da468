"""Retrieval evaluation: encode every caption and every video once, score all pairs, rank.

Two-tower models score by one matrix product of the embeddings. A cross-encoder (tightTransf)
keeps each video's frame features and mask instead, and the model scores the pairs in chunks
of texts (``similarity_matrix``).

Post-processing (``eval.postprocess``: dual softmax, QB-Norm, inverted softmax) re-scores the
same similarity matrix with ``clip4clip.postprocess`` and ranks it again; its metrics are kept
beside the plain ones, never in their place (``evaluate_with_postprocessing``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoding import text_embeddings, video_embeddings
from ..metrics import format_table, retrieval_metrics, retrieval_metrics_multi
from ..postprocess import DSL_TEMPERATURE, POSTPROCESSORS, QB_BETA, QB_K, QUERYBANK_METHODS
from .config_values import positive_number, whole_number
from .precision import autocast
from .step import batch_to_device

# Cross-encoder scoring: (text, video) sequences per pass, i.e. texts per pass = this // videos.
# 8192 sequences of 13 tokens x 512 are ~220 MB per activation in float32.
CROSS_PAIRS_PER_PASS = 8192


@dataclass
class EncodedSplit:
    """Embeddings of a split. text_emb [Nt, D] and video_emb [Nv, D] are L2-normalised;
    text_video_index [Nt] gives each caption's video row.

    For a pair head (``video_mask`` set: tightTransf, DRL, X-CLIP, TS2-Net) they are the model's
    ``text_features`` and ``video_features`` (e.g. frame features [Nv, T, D]) with video_mask
    [Nv, T]; heads that score words (``model.text_tokens``) also keep text_mask [Nt, L]."""

    text_emb: torch.Tensor
    video_emb: torch.Tensor
    text_video_index: torch.Tensor
    texts: List[str]
    video_ids: List[str]
    frame_weights: Optional[torch.Tensor] = None
    video_mask: Optional[torch.Tensor] = None
    text_mask: Optional[torch.Tensor] = None
    #: The scores are logits (a logit scale or a learned layer inside), not cosines: DSL then
    #: softmaxes them at temperature 1 by default. Pair heads say which (``scores_are_logits``).
    logit_scores: bool = False

    @property
    def cross(self) -> bool:
        return self.video_mask is not None


def _to(batch: dict, device: torch.device) -> dict:
    """The batch on ``device``; uint8 videos (datasets built with ``normalize=False``) are
    CLIP-normalised there, exactly as the training step does (``step.batch_to_device``)."""
    return batch_to_device(batch, device)


@torch.no_grad()
def encode_split(model, loader, device: torch.device, precision: str = "fp32",
                 progress: bool = True, desc: str = "eval") -> EncodedSplit:
    """Encode the captions and (unique) videos that ``loader`` yields.

    Every sample is encoded independently (eval mode, no batch statistics), so the batch size
    changes nothing but float rounding."""
    was_training = model.training
    model.eval()
    texts, text_embs, video_ids, video_embs, index, weights, masks, text_masks = [], [], [], [], [], [], [], []
    row_of = {}
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = _to(batch, device)
        with autocast(device, precision):
            t = text_embeddings(model, batch["input_ids"], batch["attention_mask"])
            new = []
            for i, vid in enumerate(batch["video_id"]):  # a video shared by several captions
                if vid not in row_of:                     # is encoded once, even within a batch
                    row_of[vid] = len(row_of)
                    new.append(i)
            if new:
                sel = torch.tensor(new, device=device)
                video, mask = batch["video"][sel], batch["video_mask"][sel]
                v = video_embeddings(model, video, mask, weights)
                video_embs.append(v.float().cpu())
                masks.append(mask.cpu())
                video_ids.extend(batch["video_id"][i] for i in new)
        text_embs.append(t.float().cpu())
        text_masks.append(batch["attention_mask"].cpu())
        texts.extend(batch["text"])
        index.extend(row_of[vid] for vid in batch["video_id"])
    model.train(was_training)
    if not texts:
        raise ValueError("the evaluation split is empty")
    return EncodedSplit(torch.cat(text_embs), torch.cat(video_embs), torch.tensor(index),
                        texts, video_ids, torch.cat(weights) if weights else None,
                        None if model.two_tower else torch.cat(masks),
                        torch.cat(text_masks) if model.text_tokens else None, _logit_scores(model))


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], tokenizer, max_words: int, batch_size: int, device,
                 precision: str = "fp32", progress: bool = True, desc: str = "texts",
                 masks: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """``encoding.text_embeddings`` of every text, in batches, in eval mode -> float32 [N, D] on the
    CPU (L2-normalised for two-tower models; a pair head's features). ``masks``: a list the
    captions' attention masks [b, L] are appended to (what ``text_tokens`` heads score with)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
            ids, mask = tokenizer(list(texts[i:i + batch_size]), max_words=max_words)
            with autocast(device, precision):
                out.append(text_embeddings(model, ids.to(device), mask.to(device)).float().cpu())
            if masks is not None:
                masks.append(mask.cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("no texts to encode")
    return torch.cat(out)


@torch.no_grad()
def encode_texts_and_videos(model, dataset, tokenizer, max_words: int, batch_size: int, device,
                            precision: str = "fp32", num_workers: int = 0, progress: bool = True,
                            desc: str = "eval") -> EncodedSplit:
    """Two-stream encoding for datasets exposing ``texts``, ``text_video_ids`` and
    ``video_dataset()``: each caption and each UNIQUE video is encoded once (MSVD has ~40
    captions per video; decoding its videos per caption would be 40x the work)."""
    from torch.utils.data import DataLoader

    texts, text_vids = list(dataset.texts), list(dataset.text_video_ids)
    text_masks: List[torch.Tensor] = []
    text_emb = encode_texts(model, texts, tokenizer, max_words, batch_size, device, precision, progress,
                            f"{desc} texts", masks=text_masks) if texts else None
    was_training = model.training
    model.eval()
    videos = dataset.video_dataset()

    def collate(items):
        return {"video": torch.stack([it["video"] for it in items]),
                "video_mask": torch.stack([torch.as_tensor(it["video_mask"]) for it in items]),
                "video_id": [it["video_id"] for it in items]}

    loader = DataLoader(videos, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    video_ids, video_embs, weights, masks = [], [], [], []
    for batch in tqdm(loader, desc=f"{desc} videos", disable=not progress, leave=False):
        moved = _to({"video": batch["video"], "video_mask": batch["video_mask"]}, device)
        video, mask = moved["video"], moved["video_mask"]
        with autocast(device, precision):
            v = video_embeddings(model, video, mask, weights)
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
    return EncodedSplit(text_emb, torch.cat(video_embs),
                        torch.tensor([row_of[v] for v in text_vids]), texts, video_ids,
                        torch.cat(weights) if weights else None,
                        None if model.two_tower else torch.cat(masks),
                        torch.cat(text_masks) if model.text_tokens else None, _logit_scores(model))


@torch.no_grad()
def similarity_matrix(enc: EncodedSplit, model=None, precision: str = "fp32",
                      rows: Optional[slice] = None) -> torch.Tensor:
    """Scores [Nt, Nv] (float32, CPU; rows are captions, ``rows`` selects some) of a split.
    Two-tower: cosine similarities (the logit scale is a positive constant and does not change
    ranks). Cross-encoder: ``model.score`` on the model's device, in eval mode, under the
    evaluation precision, in passes of at most ``CROSS_PAIRS_PER_PASS`` pairs."""
    text = enc.text_emb if rows is None else enc.text_emb[rows]
    text_mask = enc.text_mask if rows is None or enc.text_mask is None else enc.text_mask[rows]
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
                              text_chunk=max(1, CROSS_PAIRS_PER_PASS // max(len(enc.video_ids), 1)),
                              text_mask=None if text_mask is None else text_mask.to(device))
    finally:
        model.train(was_training)
    return sim.float().cpu()


def _logit_scores(model) -> bool:
    return not model.two_tower and bool(getattr(model.head, "scores_are_logits", True))


def one_to_one(enc: EncodedSplit) -> bool:
    """True when caption i belongs to video i for every i (one caption per video, e.g. MSR-VTT
    1k-A, the paragraph datasets): the square layout with ground truth on the diagonal."""
    return len(enc.video_ids) == len(enc.texts) and torch.equal(
        enc.text_video_index, torch.arange(len(enc.texts)))


def rank_metrics(sim: Any, enc: EncodedSplit) -> Dict[str, Dict[str, float]]:
    """t2v and v2t metrics of a [texts, videos] matrix laid out as ``enc`` (square with the
    ground truth on the diagonal, or several captions per video via ``text_video_index``)."""
    if one_to_one(enc):
        return retrieval_metrics(sim)
    return retrieval_metrics_multi(sim, enc.text_video_index)


def split_metrics(enc: EncodedSplit, model=None, precision: str = "fp32") -> Dict[str, Dict[str, float]]:
    """Text->video and video->text metrics of ``similarity_matrix`` (``model`` is needed for a
    cross-encoder's split only)."""
    return rank_metrics(similarity_matrix(enc, model, precision), enc)


#: The random state evaluation runs under for heads that draw random numbers in evaluation
#: (``random_in_eval``: TS2-Net's official top-K noise): they then score a split the same way every
#: time (a run's final test and ``evaluate.py`` on its checkpoint agree), and the caller's random
#: state is left as it was. Other heads draw nothing, and their runs keep their random stream.
EVAL_SEED = 0


def _encode(model, dataset, tokenizer, max_words: int, batch_size: int, device, precision: str,
            num_workers: int, progress: bool, desc: str) -> EncodedSplit:
    if not getattr(getattr(model, "head", None), "random_in_eval", False):
        return _encode_seeded(model, dataset, tokenizer, max_words, batch_size, device, precision, num_workers,
                              progress, desc)
    cuda = [device] if getattr(device, "type", str(device)).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(EVAL_SEED)
        return _encode_seeded(model, dataset, tokenizer, max_words, batch_size, device, precision, num_workers,
                              progress, desc)


def _encode_seeded(model, dataset, tokenizer, max_words: int, batch_size: int, device, precision: str,
                   num_workers: int, progress: bool, desc: str) -> EncodedSplit:
    if hasattr(dataset, "video_dataset"):
        return encode_texts_and_videos(model, dataset, tokenizer, max_words, batch_size, device,
                                       precision, num_workers, progress, desc)
    # item datasets: (caption, video) pairs, videos shared by captions encoded once
    from torch.utils.data import DataLoader

    from .tokenize_collate import TokenizeCollate
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=TokenizeCollate(tokenizer, max_words),
                        pin_memory=device.type == "cuda")
    return encode_split(model, loader, device, precision, progress, desc)


def evaluate(model, dataset, tokenizer, max_words: int, batch_size: int, device, precision="fp32",
             num_workers: int = 0, progress: bool = True, desc: str = "eval"):
    """Score every caption of ``dataset`` against every video of it.
    -> (metrics {'t2v': {...}, 'v2t': {...}}, EncodedSplit)."""
    enc = _encode(model, dataset, tokenizer, max_words, batch_size, device, precision, num_workers, progress, desc)
    return split_metrics(enc, model, precision), enc


# ----------------------------------------------------------------------------------------------
# Post-processing at evaluation (``eval`` config section)
# ----------------------------------------------------------------------------------------------

#: ``eval.postprocess`` names -> ``clip4clip.postprocess.POSTPROCESSORS`` functions.
POSTPROCESS_METHODS = {"dsl": "dual_softmax", "qbnorm": "qb_norm", "isoftmax": "inverted_softmax"}
POSTPROCESS_CHOICES = ("none", *POSTPROCESS_METHODS)
_TITLES = {"dsl": "dual softmax (DSL)", "qbnorm": "QB-Norm (dynamic inverted softmax)",
           "isoftmax": "inverted softmax (IS)"}


@dataclass(frozen=True)
class Postprocess:
    """What ``eval`` asks for beside the plain metrics.

    methods: ``eval.postprocess`` names in order (``dsl``, ``qbnorm``, ``isoftmax``); empty = none.
    querybank_size / querybank_seed: training captions drawn for QB-Norm and IS (None = all).
    dsl_temperature: the multiplier inside DSL's softmax; None = ``postprocess.DSL_TEMPERATURE``
        (100, CLIP's logit scale) on cosine scores (two-tower models, DRL), 1 on logits
        (tightTransf, X-CLIP, TS2-Net; the official code softmaxes the logit matrix at
        temperature 1 in both cases).
    qb_beta, qb_k: QB-Norm's / IS's inverse temperature and QB-Norm's activation-set top-k.
    """

    methods: Tuple[str, ...] = ()
    querybank_size: Optional[int] = 5000
    querybank_seed: int = 0
    dsl_temperature: Optional[float] = None
    qb_beta: float = QB_BETA
    qb_k: int = QB_K

    @classmethod
    def from_config(cls, cfg: Optional[Mapping]) -> "Postprocess":
        """The ``eval`` config section -> Postprocess; a bad value is a one-line ValueError
        naming its key (``eval.postprocess='x'; expected one of none, dsl, qbnorm, isoftmax``)."""
        cfg = dict(cfg or {})
        raw = cfg.get("postprocess", "none")
        names = [raw] if raw is None or isinstance(raw, str) else raw
        choices = ", ".join(POSTPROCESS_CHOICES)
        if not isinstance(names, (list, tuple)) or not names \
                or any(n is not None and n not in POSTPROCESS_CHOICES for n in names):
            raise ValueError(f"eval.postprocess={raw!r}; expected one of {choices} (or a list of them)")
        bank = dict(cfg.get("querybank") or {})
        return cls(
            methods=tuple(dict.fromkeys(n for n in names if n not in (None, "none"))),
            querybank_size=whole_number(bank.get("size", 5000), "eval.querybank.size", 1, optional=True),
            querybank_seed=whole_number(bank.get("seed", 0), "eval.querybank.seed", 0),
            dsl_temperature=positive_number(cfg.get("dsl_temperature"), "eval.dsl_temperature", optional=True),
            qb_beta=positive_number(cfg.get("qb_beta", QB_BETA), "eval.qb_beta"),
            qb_k=whole_number(cfg.get("qb_k", QB_K), "eval.qb_k", 1),
        )

    @property
    def needs_querybank(self) -> bool:
        return any(POSTPROCESS_METHODS[m] in QUERYBANK_METHODS for m in self.methods)


@dataclass
class Querybank:
    """Queries drawn from the training split's captions for QB-Norm / IS (never test captions).

    texts: the drawn captions; available: how many training captions there were to draw from."""

    texts: List[str]
    available: int
    seed: int
    split: str = "train"

    def settings(self) -> dict:
        return {"split": self.split, "size": len(self.texts), "available": self.available, "seed": self.seed}


def draw_querybank(captions: Union[Mapping[str, Sequence[str]], Sequence[str]], size: Optional[int],
                   seed: int = 0, split: str = "train") -> Querybank:
    """``size`` captions (all of them if None or fewer exist) drawn without replacement with a
    seeded generator from ``captions`` (video -> captions, as ``dataset.captions``, or a list),
    kept in dataset order. The same captions, size and seed always give the same bank."""
    pool = [c for caps in captions.values() for c in caps] if isinstance(captions, Mapping) else list(captions)
    if not pool:
        raise ValueError(f"the {split} split has no captions to draw the QB-Norm / IS querybank from")
    n = len(pool) if size is None else min(int(size), len(pool))
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return Querybank([pool[i] for i in pick], len(pool), int(seed), split)


@torch.no_grad()
def querybank_similarities(model, enc: EncodedSplit, texts: Sequence[str], tokenizer, max_words: int,
                           batch_size: int, device, precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """[B bank texts, Nv] scores of the querybank against the split's videos, computed exactly
    as the split's own matrix (``similarity_matrix``: cosines, or the cross-encoder's logits)."""
    masks: List[torch.Tensor] = []
    emb = encode_texts(model, texts, tokenizer, max_words, batch_size, device, precision, progress, "querybank",
                       masks=masks)
    bank = dataclasses.replace(enc, text_emb=emb, texts=list(texts),
                               text_video_index=torch.zeros(len(texts), dtype=torch.long),
                               text_mask=torch.cat(masks) if enc.text_mask is not None else None)
    return similarity_matrix(bank, model, precision)


@dataclass
class PostprocessedMetrics:
    """``metrics``: method -> {direction -> summary} (``dsl``: t2v and v2t; ``qbnorm`` /
    ``isoftmax``: t2v only); ``settings``: method -> what it ran with. Both empty when no
    post-processing was asked for."""

    metrics: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    settings: Dict[str, dict] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def format(self) -> str:
        """One titled table per method, for printing under the plain table."""
        blocks = []
        for name, m in self.metrics.items():
            s = self.settings.get(name, {})
            if name == "dsl":
                how = f"over all {s.get('queries')} test queries at once, temperature {s.get('temperature'):g}"
            else:
                b = s.get("querybank", {})
                how = (f"querybank of {b.get('size')} {b.get('split')} captions (seed {b.get('seed')}), "
                       f"beta {s.get('beta'):g}" + (f", k {s.get('k')}" if name == "qbnorm" else "")
                       + "; t2v only")
            blocks.append(f"post-processed: {name} = {_TITLES[name]}, {how}\n{format_table(m)}")
        return "\n".join(blocks)


def postprocessed_metrics(sim: torch.Tensor, enc: EncodedSplit, post: Postprocess,
                          bank_sim: Optional[torch.Tensor] = None,
                          querybank: Optional[Querybank] = None) -> PostprocessedMetrics:
    """Metrics of ``sim`` [texts, videos] (the split's ``similarity_matrix``) after each of
    ``post.methods``, ranked with the plain metrics' own functions (``rank_metrics``).

    DSL runs on ``sim`` for t2v and on ``sim.T`` (videos as queries) for v2t, each ranked only
    in the direction it was computed for. QB-Norm and IS need a querybank of the same kind of
    queries; the bank is training captions, so they give t2v only (as the official QB-Norm
    code, which reports text-to-video): v2t would need a bank of training videos.
    ``bank_sim`` [B, videos]: the querybank's scores (``querybank_similarities``)."""
    out = PostprocessedMetrics()
    for name in post.methods:
        fn = POSTPROCESSORS[POSTPROCESS_METHODS[name]]
        try:
            if name == "dsl":
                t = post.dsl_temperature or (1.0 if enc.logit_scores else DSL_TEMPERATURE)
                t2v = rank_metrics(fn(sim, temperature=t), enc)["t2v"]
                v2t = rank_metrics(fn(sim.T, temperature=t).T, enc)["v2t"]
                out.metrics[name] = {"t2v": t2v, "v2t": v2t}
                out.settings[name] = {"temperature": t, "queries": int(sim.shape[0])}
                continue
            if bank_sim is None:
                raise ValueError("needs a querybank (bank_sim)")
            kwargs = {"beta": post.qb_beta, **({"k": post.qb_k} if name == "qbnorm" else {})}
            out.metrics[name] = {"t2v": rank_metrics(fn(sim, bank_sim, **kwargs), enc)["t2v"]}
            out.settings[name] = {**kwargs, "querybank": querybank.settings() if querybank else
                                  {"size": int(bank_sim.shape[0])}}
        except ValueError as e:
            raise ValueError(f"eval.postprocess={name}: {e}") from None
    return out


def score_split(enc: EncodedSplit, model=None, precision: str = "fp32", post: Optional[Postprocess] = None,
                querybank: Optional[Querybank] = None, *, tokenizer=None, max_words: int = 32,
                batch_size: int = 64, device=None, progress: bool = True
                ) -> Tuple[Dict[str, Dict[str, float]], PostprocessedMetrics]:
    """Plain metrics of the split (exactly ``split_metrics``) and, from the same similarity
    matrix, the post-processed ones. The querybank's texts are encoded with ``tokenizer`` /
    ``max_words`` / ``batch_size`` on ``device`` (only when a querybank method is asked for)."""
    sim = similarity_matrix(enc, model, precision)
    plain = rank_metrics(sim, enc)
    if post is None or not post.methods:
        return plain, PostprocessedMetrics()
    bank_sim = None
    if post.needs_querybank:
        if querybank is None:
            raise ValueError(f"eval.postprocess={','.join(post.methods)} needs a querybank of training captions")
        if device is None:
            device = next(model.parameters()).device
        bank_sim = querybank_similarities(model, enc, querybank.texts, tokenizer, max_words, batch_size,
                                          device, precision, progress)
    return plain, postprocessed_metrics(sim, enc, post, bank_sim, querybank)


def evaluate_with_postprocessing(model, dataset, tokenizer, max_words: int, batch_size: int, device,
                                 precision="fp32", num_workers: int = 0, progress: bool = True,
                                 desc: str = "eval", post: Optional[Postprocess] = None,
                                 querybank: Optional[Querybank] = None):
    """``evaluate`` plus the post-processed metrics of the same similarity matrix.
    -> (plain metrics, PostprocessedMetrics, EncodedSplit); the plain metrics are those
    ``evaluate`` returns whatever ``post`` says."""
    enc = _encode(model, dataset, tokenizer, max_words, batch_size, device, precision, num_workers, progress, desc)
    plain, processed = score_split(enc, model, precision, post, querybank, tokenizer=tokenizer,
                                   max_words=max_words, batch_size=batch_size, device=device, progress=progress)
    return plain, processed, enc
