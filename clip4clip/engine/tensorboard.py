"""TensorBoard logging helpers: scalars, frame-weight histograms and retrieval strips."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from ..metrics import flatten

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]


class Logger:
    """A SummaryWriter that may be absent (non-zero ranks, or tensorboard disabled)."""

    def __init__(self, log_dir: Optional[str]):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def metrics(self, metrics: dict, step: int, prefix: str) -> None:
        self.scalars(flatten(metrics, prefix=prefix), step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer and values is not None and values.numel():
            self.writer.add_histogram(tag, values, step)

    def image(self, tag: str, image_chw: np.ndarray, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image_chw, step, dataformats="CHW")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def frame_strip(video: torch.Tensor, mask: torch.Tensor, max_frames: int = 6) -> np.ndarray:
    """A normalised clip [T,3,H,W] -> uint8-range float image [3, H, k*W] of its valid frames."""
    frames = video[mask.bool()][:max_frames].float().cpu().numpy()
    frames = np.clip(frames * STD + MEAN, 0, 1)
    return np.concatenate(list(frames), axis=2) if len(frames) else np.zeros((3, 8, 8), np.float32)


def retrieval_grid(strips: List[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack clip strips (top-1 first) vertically with a white gap: [3, H', W']."""
    width = max(s.shape[2] for s in strips)
    rows = []
    for s in strips:
        row = np.ones((3, s.shape[1] + pad, width), np.float32)
        row[:, : s.shape[1], : s.shape[2]] = s
        rows.append(row)
    return np.concatenate(rows, axis=1)
