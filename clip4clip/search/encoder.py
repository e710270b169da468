"""The model side of search: load any checkpoint, fingerprint it, encode queries and videos.

Videos are encoded exactly as evaluation encodes them (same frames, same resize-crop and
normalisation, same padding and mask, ``encode_video``), so a library search ranks videos by
the similarity that the reported metrics measure. Individual frames are also encoded, so each
hit can say which moment matched best.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data.video.keyframes import KeyframeParams
from data.video.transforms import pack_clip

from ..builder import tokenizer_state
from ..encoding import clip_embeddings, text_embeddings, video_embeddings
from ..weights import model_and_tokenizer, read_checkpoint
from ..heads import l2_normalize
from ..model import CLIP4Clip

#: Text length of zero-shot CLIP and official checkpoints (CLIP4Clip's setting); their frame
#: sampling is ``KeyframeParams``' defaults (CLIP4Clip's 1 fps, 12 frames), ours their dataset's.
DEFAULT_MAX_WORDS = 32


@dataclass(frozen=True)
class Sampling:
    """Which frames are encoded, in seconds of video (see ``data.video.decode.sample_frame_indices``).

    fps, max_frames, slice_framepos: the frames of the video embedding; the same as the
    evaluation of the checkpoint, so scores mean what the metrics mean.
    moment_fps, moment_frames: the frames scored one by one to find the best moment (at most
    ``moment_frames``, spread evenly over longer videos).
    image_size: side of the square model input in pixels.
    frame_rule: "exact" or "official" (CLIP4Clip's frame indices), as the checkpoint's dataset.
    """

    fps: float
    max_frames: int
    slice_framepos: str
    moment_fps: float
    moment_frames: int
    image_size: int
    frame_rule: str = "exact"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if d["frame_rule"] == "exact":
            del d["frame_rule"]  # indexes written before the rule existed used the exact rule
        return d


def model_fingerprint(model: torch.nn.Module, tokenizer_state: Optional[dict]) -> str:
    """SHA-256 (first 16 hex digits) of every weight (name, dtype, shape, bytes) and of the
    tokenizer's vocabulary: the same model gives the same value wherever its file lives."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(tokenizer_state or {"kind": "clip"}, sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TextUse:
    """How much of a query the text tower read: ``tokens`` of at most ``max_tokens``;
    ``truncated``: the query had more, which were cut; ``used_text``: the part that was read
    (decoded from the tokens, so cleaned and lower-cased), only when it was cut."""

    tokens: int
    max_tokens: int
    truncated: bool
    used_text: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Encoder:
    """A loaded model plus what it takes to encode for search.

    Build with ``Encoder.load(checkpoint)``. ``fingerprint`` identifies the weights and the
    vocabulary; ``description`` is a small JSON-able summary for the index and the web page.
    """

    def __init__(self, model: CLIP4Clip, tokenizer, max_words: int, sampling: Sampling,
                 fingerprint: str, description: Dict[str, Any], device: str = "cpu",
                 train_config: Optional[Dict[str, Any]] = None):
        if not model.two_tower:
            # An index stores one embedding per video; a cross-encoder only scores (text, video)
            # pairs, so a query would cost one transformer pass per library video.
            raise ValueError(f"a {model.head.name} model is a cross-encoder and cannot be indexed for search: "
                             "use a checkpoint with a two-tower head (meanP, seqLSTM, seqTransf, frameweight)")
        self.train_config = train_config  # the resolved config of our checkpoints, else None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.max_words = int(max_words)
        self.sampling = sampling
        self.fingerprint = fingerprint
        self.description = description
        self.device = torch.device(device)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @classmethod
    def load(cls, checkpoint: str, *, fps: Optional[float] = None, max_frames: Optional[int] = None,
             moment_fps: float = 1.0, moment_frames: int = 64, device: str = "cpu",
             bpe_vocab: Optional[str] = None) -> "Encoder":
        """Load ``checkpoint`` (ours / official CLIP4Clip / CLIP name or file; a run folder means
        its best checkpoint). ``fps`` and ``max_frames`` default to the checkpoint's own dataset
        settings (CLIP4Clip's 1 fps, 12 frames for the other kinds)."""
        kind, payload, source = read_checkpoint(checkpoint)  # a run folder means its best checkpoint
        config = (payload.get("config") or {}) if kind == "ours" else {}
        if kind == "ours":
            model_cfg = dict(config.get("model") or {})
            max_words = int(model_cfg.get("max_words", DEFAULT_MAX_WORDS))
        else:
            model_cfg = {"tokenizer": "clip", "bpe_vocab": bpe_vocab, "clip": {"cache_dir": None}}
            max_words = DEFAULT_MAX_WORDS
        # The evaluation frames of the checkpoint's test split: the same conversion the datasets use.
        frames = KeyframeParams.from_config(config.get("dataset") or {}, "test")
        if frames.scheme != "uniform":
            print(f"note: {source} was evaluated with '{frames.scheme}' keyframes; the index samples "
                  "frames uniformly in time", flush=True)
        if bpe_vocab:
            model_cfg["bpe_vocab"] = bpe_vocab
        model, tokenizer = model_and_tokenizer(kind, payload, model_cfg, source=source)
        tok_state = tokenizer_state(tokenizer)
        sampling = Sampling(fps=float(fps if fps is not None else frames.fps),
                            max_frames=int(max_frames if max_frames is not None else frames.max_frames),
                            slice_framepos=frames.slice_framepos, moment_fps=float(moment_fps),
                            moment_frames=int(moment_frames),
                            image_size=int(model.clip.visual.input_resolution), frame_rule=frames.rule)
        if sampling.fps <= 0 or sampling.moment_fps <= 0:
            raise ValueError(f"--fps and --moment-fps must be positive, got {sampling.fps}, {sampling.moment_fps}")
        if sampling.max_frames < 1 or sampling.moment_frames < 1:
            raise ValueError(f"--max-frames and --moment-frames must be >= 1, got "
                             f"{sampling.max_frames}, {sampling.moment_frames}")
        description = {"checkpoint": source, "kind": kind, "head": type(model.head).__name__,
                       "embed_dim": int(model.embed_dim), "image_size": sampling.image_size,
                       "tokenizer": tok_state.get("kind", "clip"), "max_words": max_words}
        if bpe_vocab:  # searching the index needs the same vocabulary file
            description["bpe_vocab"] = str(Path(bpe_vocab).expanduser().resolve())
        return cls(model, tokenizer, max_words, sampling, model_fingerprint(model, tok_state),
                   description, device, payload.get("config") if kind == "ours" else None)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], return_used: bool = False):
        """Queries -> float32 [N, D], L2-normalised (as evaluation's text embeddings).

        return_used: also return, per query, ``TextUse``: how many tokens of it the model read
        (at most ``max_words - 2``: the text tower's length) and whether the rest was cut."""
        ids, mask, lengths = self.tokenizer(list(texts), max_words=self.max_words, return_lengths=True)
        emb = text_embeddings(self.model, ids.to(self.device), mask.to(self.device)).float().cpu().numpy()
        if not return_used:
            return emb
        budget = self.max_words - 2
        used = []
        for row, n in zip(ids, lengths.tolist()):
            cut = n > budget
            text = self.tokenizer.decode(row, skip_special_tokens=True) if cut else None
            used.append(TextUse(tokens=min(n, budget), max_tokens=budget, truncated=cut, used_text=text))
        return emb, used

    # ------------------------------------------------------------------ video
    def _pack(self, frames: np.ndarray) -> tuple:
        """uint8 [T, H, W, 3] (T <= max_frames) -> (video [1, max_frames, 3, S, S], mask [1, max_frames]),
        exactly as the evaluation datasets pack them (``data.pack_clip``)."""
        video, mask = pack_clip(frames, self.sampling.max_frames, self.sampling.image_size)
        return video[None], mask[None]

    #: Clips of ``max_frames`` frames per forward pass: batching many short videos amortises
    #: the per-call cost (4x faster indexing of the synthetic clips on CPU); bounded for memory.
    batch_clips = 16

    def _forward_clips(self, packed: List[tuple], fn) -> torch.Tensor:
        """Run ``fn(video, mask)`` over packed clips in batches of ``batch_clips``; concatenated."""
        out = []
        for i in range(0, len(packed), self.batch_clips):
            part = packed[i:i + self.batch_clips]
            video = torch.cat([p[0] for p in part]).to(self.device)
            mask = torch.cat([p[1] for p in part]).to(self.device)
            out.append(fn(video, mask).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_videos(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """The evaluation frames of several videos, each uint8 [T, H, W, 3] with
        1 <= T <= max_frames -> float32 [B, D], L2-normalised (``encode_video`` of evaluation)."""
        for frames in clips:
            if not 1 <= len(frames) <= self.sampling.max_frames:
                raise ValueError(f"expected 1..{self.sampling.max_frames} frames, got {len(frames)}")
        emb = self._forward_clips([self._pack(f) for f in clips], lambda v, k: video_embeddings(self.model, v, k))
        return emb.numpy()

    @torch.no_grad()
    def encode_moments(self, clips: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Moment frames of several videos, each uint8 [T, H, W, 3] -> per video float32 [T, D],
        L2-normalised image-tower features (the frame features the head pools).

        Frames go through the image tower in clips of ``max_frames`` (padded and masked), the
        shape the model was trained on: temporal adapters (AIM) see neighbouring frames."""
        m = self.sampling.max_frames
        packed, counts = [], []
        for frames in clips:
            chunks = [self._pack(frames[i:i + m]) for i in range(0, len(frames), m)]
            packed += chunks
            counts.append(len(chunks))
        feats = self._forward_clips(packed, lambda v, k: self.model.encode_frames(v, frame_mask=k))
        mask = torch.cat([p[1] for p in packed]).bool()
        feats = l2_normalize(feats)
        out, first = [], 0
        for n in counts:
            rows = feats[first:first + n][mask[first:first + n]]  # [T, D]: real frames only
            out.append(rows.numpy())
            first += n
        return out

    @torch.no_grad()
    def encode_for_index(self, videos: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """Video embeddings and moment features of several videos, every frame through the image
        tower once.

        videos: per video (moment frames uint8 [T, H, W, 3], video_pos int [Tv]): the frames
        scored for the best moment and the positions among them of the evaluation frames
        (1 <= Tv <= max_frames, increasing).
        Returns (float32 [B, D], per video float32 [T, D]): the video embeddings, exactly
        ``encode_videos`` of the evaluation frames (the same clips, the same ``encode_frames``
        and head), and the L2-normalised frame features of the moment frames, those of the
        evaluation frames taken from the evaluation clip and the others encoded in clips of
        ``max_frames`` as ``encode_moments`` does (temporal adapters see neighbouring frames)."""
        m = self.sampling.max_frames
        clips, rest_clips, plan = [], [], []
        for frames, pos in videos:
            pos = np.asarray(pos, dtype=np.int64)
            if not 1 <= len(pos) <= m:
                raise ValueError(f"expected 1..{m} evaluation frames, got {len(pos)}")
            rest = np.setdiff1d(np.arange(len(frames)), pos)
            clips.append(self._pack(frames[pos]))
            chunks = [rest[i:i + m] for i in range(0, len(rest), m)]
            rest_clips += [self._pack(frames[c]) for c in chunks]
            plan.append((pos, rest, len(chunks)))
        video_embs, eval_feats = [], []
        for i in range(0, len(clips), self.batch_clips):
            part = clips[i:i + self.batch_clips]
            video = torch.cat([p[0] for p in part]).to(self.device)
            mask = torch.cat([p[1] for p in part]).to(self.device)
            feats, emb = clip_embeddings(self.model, video, mask)
            video_embs.append(emb.float().cpu())
            eval_feats.append(feats.float().cpu())
        eval_feats = l2_normalize(torch.cat(eval_feats))
        rest_feats = None
        if rest_clips:
            rest_feats = l2_normalize(self._forward_clips(
                rest_clips, lambda v, k: self.model.encode_frames(v, frame_mask=k)))
        moments, first = [], 0
        for j, (pos, rest, n) in enumerate(plan):
            out = torch.empty(len(pos) + len(rest), eval_feats.shape[-1])
            out[torch.from_numpy(pos)] = eval_feats[j, :len(pos)]
            if n:
                real = torch.cat([p[1] for p in rest_clips[first:first + n]]).bool()
                out[torch.from_numpy(rest)] = rest_feats[first:first + n][real]
                first += n
            moments.append(out.numpy())
        return torch.cat(video_embs).numpy(), moments

    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        """One video's evaluation frames -> float32 [D] (see ``encode_videos``)."""
        return self.encode_videos([frames])[0]

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """One video's moment frames -> float32 [T, D] (see ``encode_moments``)."""
        return self.encode_moments([frames])[0]
