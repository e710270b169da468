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
        blocks = self._blocks()
        if self.world_size == 1:
            return [i for b in blocks for i in b]
        # Deal whole blocks to ranks round-robin, then pad/trim every rank to the same length
        # (DistributedSampler's rule) so all ranks take the same number of steps.
        mine = [i for j, b in enumerate(blocks) if j % self.world_size == self.rank for i in b]
        flat = [i for b in blocks for i in b]
        want = self._per_rank()
        while len(mine) < want:
            mine.extend(flat[: want - len(mine)])
        return mine[:want]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return max(self._per_rank() - self.start, 0)
