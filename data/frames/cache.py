"""A pre-decoded, shared-memory store of sampled uint8 frames for a whole split.

Why not a lazy per-process dict filled on first decode: DataLoader worker processes each hold
their own copy of the dataset, so such a cache fills once *per worker* (every worker decodes
every video, and memory is multiplied by the number of workers), and nothing it learns reaches
the main process. Instead the split is decoded once, up front, in the main process (threads:
OpenCV and PIL release the GIL), into ONE flat uint8 torch tensor moved to shared memory.
Workers started by fork inherit it and workers started by spawn/forkserver receive it through
torch's shared-memory pickling, so there is one copy whatever the number of workers.

Only worth it when the split fits in a memory budget (the tiny synthetic dataset: 3000 clips x
8 frames x 64x64x3 = 295 MB); for real MSR-VTT extract frames to disk instead.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..video.decode import VideoReadError

__all__ = ["FrameCache"]


class FrameCache:
    """Maps video_id -> uint8 frames [T, H, W, 3], all stored in one shared tensor."""

    def __init__(self, data: torch.Tensor, index: dict[str, tuple[int, tuple[int, int, int, int]]],
                 broken: dict[str, str] | None = None):
        self._data = data  # flat uint8, shared memory
        self._index = index  # video_id -> (offset, shape)
        #: video_id -> "path: reason" for videos whose loading raised VideoReadError.
        self.broken: dict[str, str] = dict(broken or {})

    @classmethod
    def build(
        cls,
        video_ids: Sequence[str],
        load: Callable[[str], np.ndarray],
        budget_bytes: int,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> "FrameCache":
        """Decode every video with ``load(video_id) -> uint8 [T, H, W, 3]`` and store the results.

        A ``VideoReadError`` from ``load`` does not stop the build: the video is recorded in
        ``broken`` and left out. Raises MemoryError as soon as the (estimated, then actual) total
        exceeds ``budget_bytes``.
        """
        video_ids = list(dict.fromkeys(video_ids))
        broken: dict[str, str] = {}

        def safe_load(vid: str) -> np.ndarray | None:
            try:
                return load(vid)
            except VideoReadError as e:
                broken[vid] = f"{e.path}: {e.reason}"
                return None

        arrays, k = _first_readable(video_ids, safe_load, budget_bytes)
        if not arrays:
            return cls(torch.zeros(0, dtype=torch.uint8), {}, broken)
        _load_rest(video_ids, k, safe_load, arrays, budget_bytes, num_threads, progress)
        data, index = _pack(arrays)
        return cls(data, index, broken)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self._data.numel()

    def get(self, video_id: str) -> np.ndarray:
        """uint8 [T, H, W, 3] frames of ``video_id`` (a read-only view into the shared store)."""
        offset, shape = self._index[video_id]
        flat = self.__dict__.get("_flat")
        if flat is None:  # one numpy view of the store per process: slicing it is cheaper than the tensor
            flat = self._flat = self._data.numpy()
            flat.flags.writeable = False
        return flat[offset : offset + math.prod(shape)].reshape(shape)

    def __getstate__(self) -> dict:
        # The numpy view must not travel to worker processes (it would be pickled as a copy):
        # the shared tensor does, through torch's shared-memory pickling, and the view is remade.
        state = dict(self.__dict__)
        state.pop("_flat", None)
        return state


def _first_readable(video_ids: list[str], safe_load, budget_bytes: int) -> tuple[dict[str, np.ndarray], int]:
    """Load videos in order until one reads: its size times the number of videos is the
    estimate checked against the budget before anything else is decoded. -> ({id: frames}, next index)."""
    arrays: dict[str, np.ndarray] = {}
    k = 0
    while k < len(video_ids) and not arrays:
        first = safe_load(video_ids[k])
        k += 1
        if first is None:
            continue
        estimate = first.nbytes * len(video_ids)
        if estimate > budget_bytes:
            raise MemoryError(
                f"frame cache for {len(video_ids)} videos needs about {estimate / 2**20:.0f} MiB "
                f"({first.nbytes / 2**20:.2f} MiB for {video_ids[k - 1]!r} x {len(video_ids)}), over the budget of "
                f"{budget_bytes / 2**20:.0f} MiB; raise cache_budget_bytes or use cache_frames=False"
            )
        arrays[video_ids[k - 1]] = first
    return arrays, k


def _load_rest(video_ids: list[str], k: int, safe_load, arrays: dict[str, np.ndarray], budget_bytes: int,
               num_threads: int | None, progress: bool) -> None:
    """Decode ``video_ids[k:]`` on threads into ``arrays``, stopping as soon as the actual total
    exceeds the budget."""
    total = sum(a.nbytes for a in arrays.values())
    threads = num_threads or min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(video_ids), initial=k, desc="decoding frames into cache", unit="video", disable=not progress)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for vid, frames in zip(video_ids[k:], pool.map(safe_load, video_ids[k:])):
                bar.update(1)
                if frames is None:
                    continue
                arrays[vid] = frames
                total += frames.nbytes
                if total > budget_bytes:
                    raise MemoryError(
                        f"frame cache exceeded its budget of {budget_bytes / 2**20:.0f} MiB after "
                        f"{len(arrays)} of {len(video_ids)} videos; raise cache_budget_bytes or use cache_frames=False"
                    )
    finally:
        bar.close()


def _pack(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict]:
    """Every array in one shared-memory uint8 buffer (DataLoader workers read it without a copy).
    -> (buffer, {id: (offset, shape)})."""
    data = torch.empty(sum(a.nbytes for a in arrays.values()), dtype=torch.uint8)
    index, offset = {}, 0
    for vid, a in arrays.items():
        data[offset : offset + a.nbytes] = torch.from_numpy(np.ascontiguousarray(a).reshape(-1))
        index[vid] = (offset, tuple(a.shape))
        offset += a.nbytes
    data.share_memory_()
    return data, index

