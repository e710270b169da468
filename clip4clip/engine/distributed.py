"""Multi-process training: process-group set-up from torchrun's environment, the feature gather
of the global-batch loss, and the few collectives the training loop needs.

The only module of the package that calls ``torch.distributed`` for training (evaluation's
gather lives beside it in ``evaluation_sharded.py``). Nothing happens at import time; a run started
without torchrun (no ``WORLD_SIZE``) never touches a process group.

Why the loss is exact (``clip4clip.loss.ClipLoss``). Rank r holds b_r samples of the global
batch of B and computes ``Loss_r`` = the cross-entropies of its own rows and columns, times
N / (2B), so that the single-process loss is ``L = (1/N) sum_r Loss_r``. ``Loss_r`` uses every
rank's features e_s through the gather. ``all_gather_with_grad``'s backward sums the gradient of
each gathered block over the ranks and hands the block's sum to its owner, so rank r's features
receive ``sum_s dLoss_s/de_r`` -- everything L depends on them through. DDP then *averages* the
parameter gradients: (1/N) sum_r sum_s dLoss_s/de_r de_r/dtheta = dL/dtheta. The logit scale is
not gathered; each rank's ``dLoss_r/dscale`` averaged is dL/dscale as well.
(A gather without that backward -- other ranks' features as constants, only the local tensor
carrying gradient -- drops the terms dLoss_s/de_r for s != r and is not exact.)
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

_CREATED = False  # whether init_distributed made the process group (and shutdown may end it)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands. The defaults describe a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (absent = 1 process)."""
    def get(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return default if value in (None, "") else int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

    world = get("WORLD_SIZE", 1)
    info = DistInfo(rank=get("RANK", 0), world_size=world, local_rank=get("LOCAL_RANK", 0),
                    local_world_size=get("LOCAL_WORLD_SIZE", world))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info


def init_distributed(device: torch.device, backend: str = "auto") -> Tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (a no-op for a single process).

    Returns (info, device): on CUDA each process drives ``cuda:LOCAL_RANK``. ``backend``:
    auto (NCCL on CUDA, gloo on CPU), nccl or gloo. Call from entry points only."""
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={info.local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"trainer.dist_backend={backend!r}; expected auto, nccl or gloo")
    if not dist.is_initialized():
        global _CREATED
        dist.init_process_group(backend=backend)
        _CREATED = True
    if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
        raise ValueError(f"the process group ({dist.get_rank()}/{dist.get_world_size()}) does not match "
                         f"RANK/WORLD_SIZE ({info.rank}/{info.world_size})")
    return info, device


def shutdown() -> None:
    """Leave the process group if ``init_distributed`` created it (one a caller made is theirs)."""
    global _CREATED
    if _CREATED and dist.is_initialized():
        # Wait for every rank first: a rank that tears down its gloo connections while a peer
        # is still mid-collective makes the peer abort ("terminate called without an active
        # exception").
        dist.barrier()
        dist.destroy_process_group()
    _CREATED = False


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def main_process_first(info: DistInfo):
    """Rank 0 runs the block first (downloads, dataset generation), the others after it."""
    if info.enabled and not info.is_main:
        barrier()
    yield
    if info.enabled and info.is_main:
        barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small things like paths, metrics)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> Optional[List[Any]]:
    """Every rank's ``obj`` as a list on rank ``dst`` (None on the others)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over the ranks (a detached copy)."""
    x = x.detach().clone()
    if _active():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is True on every rank (so all take, or all skip, a step)."""
    if not _active():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (e.g. the best checkpoint that
    only rank 0 read from disk)."""
    if not _active():
        return
    for t in module.state_dict().values():
        dist.broadcast(t, src=src)


class _GatherWithGrad(torch.autograd.Function):
    """[b_r, D] on each rank -> [sum b, D] in rank order. Backward: sum the incoming gradient
    over ranks and return this rank's rows (see the module docstring for why)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: List[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        # Our own block is x itself (bit-identical to what the others received).
        parts[rank] = x
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(x: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's x [b_r, D] (b_r may differ), as a list in rank order, differentiable: the
    gradient of block r reaches rank r's x summed over all ranks. Matches
    ``clip4clip.loss.Gather``."""
    if not _active():
        return [x]
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    return list(_GatherWithGrad.apply(x, sizes, dist.get_rank()).split(sizes))


def wrap_ddp(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (returned unchanged for one process).

    broadcast_buffers=False: the model has no running statistics, and skipping the per-forward
    buffer broadcast lets ranks run different numbers of forwards per step (chunked loss)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False, gradient_as_bucket_view=True)


__all__ = ["DistInfo", "env_info", "init_distributed", "shutdown", "barrier", "main_process_first",
           "broadcast_object", "gather_objects", "all_reduce_mean", "all_ranks_true",
           "broadcast_parameters", "all_gather_with_grad", "wrap_ddp"]
