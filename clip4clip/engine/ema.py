"""An exponential moving average of the model's weights (``trainer.ema_decay``).

Validation, ``best.pt`` and the final test use the averaged weights; the optimiser keeps
stepping the raw ones, and ``last.pt`` holds both so a resumed run continues the same average.
Why: a small model trained from scratch at a high learning rate (the demo) ends where the last
batches pushed it; the average over the last few hundred steps is a flatter, less seed-dependent
point, at the cost of one in-place lerp per step.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch
from torch import nn


class WeightEMA:
    """ema = d * ema + (1 - d) * weight after every optimiser step, over every floating-point
    parameter of ``model`` (frozen ones too: they do not move, so their average is themselves).

    ``decay`` in (0, 1). The effective decay of update n is min(decay, (1 + n) / (10 + n)), so
    the average follows the weights closely while they change fast early on instead of holding
    on to the random initialisation for ~1 / (1 - decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"trainer.ema_decay={decay}; expected a number in (0, 1), e.g. 0.99, or 0 for off")
        self.decay = float(decay)
        self.updates = 0
        # The live parameters, held once: loading a checkpoint copies into these same tensors.
        named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self._live = [p for _, p in named]
        self.weights: Dict[str, torch.Tensor] = {n: p.detach().clone() for n, p in named}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.weights.values()), self._live, 1.0 - d)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights inside the block, the raw ones restored after it."""
        raw = [p.detach().clone() for p in self._live]
        for p, avg in zip(self._live, self.weights.values()):
            p.copy_(avg)
        try:
            yield
        finally:
            for p, r in zip(self._live, raw):
                p.copy_(r)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": torch.tensor(self.updates), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.weights) - set(state["weights"]))
        if missing:
            raise ValueError(f"the checkpoint's weight average lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        self.updates = int(state["updates"])
        for n, avg in self.weights.items():
            avg.copy_(state["weights"][n])


__all__ = ["WeightEMA"]
