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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from data.transforms import clip_resize_crop, normalize_uint8_numpy

from ..builder import tokenizer_state
from ..heads import l2_normalize
from ..model import CLIP4Clip

#: Sampling used for zero-shot CLIP and official checkpoints (CLIP4Clip's MSR-VTT setting).
DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 12
DEFAULT_MAX_WORDS = 32


@dataclass(frozen=True)
class Sampling:
    """Which frames are encoded, in seconds of video (see ``data.video.sample_frame_indices``).

    fps, max_frames, slice_framepos: the frames of the video embedding; the same as the
    evaluation of the checkpoint, so scores mean what the metrics mean.
    moment_fps, moment_frames: the frames scored one by one to find the best moment (at most
    ``moment_frames``, spread evenly over longer videos).
    image_size: side of the square model input in pixels.
    """

    fps: float
    max_frames: int
    slice_framepos: str
    moment_fps: float
    moment_frames: int
    image_size: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def resolve_checkpoint(arg: str) -> str:
    """A released CLIP name stays as is; a run folder becomes its ``checkpoints/best.pt`` (or
    ``last.pt``); a file becomes its absolute path (the index records where its model came from)."""
    from ..clip import PRETRAINED

    if arg in PRETRAINED:
        return arg
    path = Path(arg).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return str((path / "checkpoints" / name).resolve())
        raise FileNotFoundError(f"--checkpoint {arg}: a folder without checkpoints/best.pt or "
                                "checkpoints/last.pt (expected a training run folder)")
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {arg}: no such file or run folder, and not a released "
                                f"CLIP name {list(PRETRAINED)}")
    return str(path.resolve())


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
        from ..engine.inference import load_any, model_and_tokenizer

        source = resolve_checkpoint(checkpoint)
        kind, payload = load_any(source)
        if kind == "ours":
            config = payload.get("config") or {}
            model_cfg = dict(config.get("model") or {})
            dcfg = config.get("dataset") or {}
            default_fps = float(dcfg.get("fps", DEFAULT_FPS))
            default_frames = int(dcfg.get("max_frames", DEFAULT_MAX_FRAMES))
            slice_framepos = str(dcfg.get("slice_framepos", "uniform"))
            max_words = int(model_cfg.get("max_words", DEFAULT_MAX_WORDS))
            scheme = dcfg.get("eval_keyframes") or dcfg.get("keyframes") or "uniform"
            if scheme != "uniform":
                print(f"note: {source} was evaluated with '{scheme}' keyframes; the index samples "
                      "frames uniformly in time", flush=True)
        else:
            model_cfg = {"tokenizer": "clip", "bpe_vocab": bpe_vocab, "clip": {"cache_dir": None}}
            default_fps, default_frames, slice_framepos = DEFAULT_FPS, DEFAULT_MAX_FRAMES, "uniform"
            max_words = DEFAULT_MAX_WORDS
        if bpe_vocab:
            model_cfg["bpe_vocab"] = bpe_vocab
        model, tokenizer = model_and_tokenizer(kind, payload, model_cfg, source=source)
        tok_state = tokenizer_state(tokenizer)
        sampling = Sampling(fps=float(fps if fps is not None else default_fps),
                            max_frames=int(max_frames if max_frames is not None else default_frames),
                            slice_framepos=slice_framepos, moment_fps=float(moment_fps),
                            moment_frames=int(moment_frames),
                            image_size=int(model.clip.visual.input_resolution))
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
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Queries -> float32 [N, D], L2-normalised (as evaluation's text embeddings)."""
        ids, mask = self.tokenizer(list(texts), max_words=self.max_words)
        emb = self.model.encode_text(ids.to(self.device), mask.to(self.device))
        return emb.float().cpu().numpy()

    # ------------------------------------------------------------------ video
    def _pack(self, frames: np.ndarray) -> tuple:
        """uint8 [T, H, W, 3] (T <= max_frames) -> (video [1, max_frames, 3, S, S], mask [1, max_frames]),
        the same resize-crop, normalisation and zero padding as the evaluation datasets."""
        s, m = self.sampling.image_size, self.sampling.max_frames
        chw = clip_resize_crop(np.ascontiguousarray(frames), s).transpose(0, 3, 1, 2)
        video = np.zeros((m, 3, s, s), dtype=np.float32)
        normalize_uint8_numpy(chw, out=video[: len(chw)])
        mask = torch.zeros(m, dtype=torch.int64)
        mask[: len(chw)] = 1
        return torch.from_numpy(video)[None], mask[None]

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
        emb = self._forward_clips([self._pack(f) for f in clips], self.model.encode_video)
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

    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        """One video's evaluation frames -> float32 [D] (see ``encode_videos``)."""
        return self.encode_videos([frames])[0]

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """One video's moment frames -> float32 [T, D] (see ``encode_moments``)."""
        return self.encode_moments([frames])[0]
