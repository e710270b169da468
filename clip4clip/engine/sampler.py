"""A resumable, epoch-seeded sampler: the order of epoch e depends only on (seed, e), so a run
resumed mid-epoch sees exactly the batches an uninterrupted run would."""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled (or sequential) indices for one epoch, optionally skipping the first ``start``
    samples (consumed before an interruption) and sharded over ranks.

    ``shuffle_block=k`` shuffles blocks of k consecutive indices instead of single indices, so
    items stored next to each other (e.g. the synthetic set's minimal-pair groups: a clip, its
    time reversal and the perpendicular pair) stay in the same batch when batch_size % k == 0.
    Such batches always hold negatives that differ only in motion direction.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, shuffle_block: int = 1):
        if shuffle_block < 1:
            raise ValueError(f"shuffle_block must be >= 1, got {shuffle_block}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.shuffle_block = shuffle_block
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _blocks(self) -> List[List[int]]:
        k = self.shuffle_block
        blocks = [list(range(i, min(i + k, self.length))) for i in range(0, self.length, k)]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=g).tolist()]
        return blocks

    def _per_rank(self) -> int:
        n = self.length
        if self.world_size > 1:
            n = n // self.world_size if self.drop_last else -(-n // self.world_size)
        return n

    def _order(self) -> list:
        flat = [i for b in self._blocks() for i in b]
        if self.world_size == 1:
            return flat
        # DistributedSampler's rule: pad (or trim) to a multiple of the world size, then deal
        # indices round-robin, so every rank takes the same number of steps and the ranks'
        # i-th samples together are the single-process order's i-th group of world_size.
        # (Blocks are therefore spread over ranks; they stay together only in the global batch.)
        total = self._per_rank() * self.world_size
        flat = (flat * (-(-total // max(len(flat), 1))))[:total]
        return flat[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return max(self._per_rank() - self.start, 0)
