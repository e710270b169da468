"""Checks of single config values, shared by the training and evaluation jobs: one message form
(``key=value; expected ...``) for every count and positive number a run reads."""
from __future__ import annotations

import math
import os
from typing import Any, Optional


def whole_number(value: Any, name: str, minimum: int = 1, optional: bool = False) -> Optional[int]:
    """``value`` as an int, refusing 2.5, '4', True and numbers below ``minimum`` (a count that
    silently became int(2.5) = 2 would train one thing and record another). ``optional``: None
    passes through."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < minimum:
        raise ValueError(f"{name}={value!r}; expected a whole number >= {minimum}{' or null' if optional else ''}")
    return int(value)


def positive_number(value: Any, name: str, optional: bool = False) -> Optional[float]:
    """``value`` as a finite float > 0 (booleans and strings refused); ``optional``: None passes."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}; expected a positive number{' or null' if optional else ''}")
    return float(value)


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool, refusing strings and numbers (``"false"`` would otherwise be true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}; expected true or false")
    return value


def resolve_workers(value, processes_per_node: int = 1) -> int:
    """``auto``: this process's share of the CPU cores (cores / processes on the node), at
    most 8 -- enough to feed one GPU from cached or pre-extracted frames."""
    if value in (None, "auto"):
        return max(1, min(8, (os.cpu_count() or 1) // max(processes_per_node, 1)))
    return whole_number(value, "trainer.num_workers (auto or a count)", 0)
