"""Mixed precision: bf16 autocast by default on CUDA, fp16 with a grad scaler as an option,
float32 on CPU. Master weights stay float32 in every mode."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS + ("auto",):
        raise ValueError(f"trainer.precision={precision!r}; expected one of {('auto',) + PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str):
    """A GradScaler for fp16 (its small range needs loss scaling), else a disabled one."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={device} but CUDA is not available; use trainer.device=cpu or auto")
    return dev
