"""The bottleneck adapter AIM inserts into each ViT block, and stochastic depth for its branches."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Adapter(nn.Module):
    """Bottleneck MLP: Linear(dim -> int(dim * ratio)) -> act -> Linear(-> dim).

    ``fc2`` (weight and bias) starts at zero, so ``f(x) = 0`` at initialisation: with
    ``skip`` the adapter is the identity, without it contributes nothing, and a model with
    adapters injected starts exactly where the pretrained model was.

    Args:
        dim: input/output width D.
        ratio: bottleneck width as a fraction of D (AIM: 0.25, i.e. 192 for D=768).
        act: activation constructor (AIM uses exact GELU, not CLIP's QuickGELU).
        skip: return ``x + f(x)`` (True) or ``f(x)`` (False).
    """

    def __init__(self, dim: int, ratio: float = 0.25, act: Callable[[], nn.Module] = nn.GELU,
                 skip: bool = True):
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter bottleneck int(dim * ratio) = int({dim} * {ratio}) = {hidden}; "
                             "it must be at least 1")
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # AIM's init: small truncated normal in, exact zeros out. nn.init works on the meta
        # device too (it is a no-op there), so models can be sized without allocating.
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., D] -> [..., D]."""
        out = self.fc2(self.act(self.fc1(x)))
        return x + out if self.skip else out

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples
    (dim 0) and rescale the rest by 1 / (1 - p). Identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, ...] -> [N, ...]."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


__all__ = ["Adapter", "DropPath"]
