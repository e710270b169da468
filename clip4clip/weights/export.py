"""Export a trained model for sharing: ``model.safetensors`` + ``config.json``, no pickle.

    python -m clip4clip.export outputs/run1 exported/run1        # a run folder (its best.pt) or a .pt

``model.safetensors`` holds the full CLIP4Clip state dict (adapter-only checkpoints are
completed with their base CLIP first); ``config.json`` holds what rebuilds the model
(``model_args``), the tokenizer state (the word vocabulary of from-scratch models, or
``{"kind": "clip"}``) and the run's resolved config. Reading it back needs neither pickle nor
the original run (``exported.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from safetensors.torch import save_file

from ..core.atomic import atomic_write, atomic_write_text
from ..core.errors import user_errors
from .checkpoints import checkpoint_file, load_checkpoint, load_model_from_checkpoint
from .exported import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, load_exported

__all__ = ["export_checkpoint", "main"]



def _json_default(obj: Any):
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"a {type(obj).__name__} in the checkpoint's config cannot be written as JSON")


def _unshared(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if v.numel() and ptr in seen:
            v = v.clone()
        elif v.numel():
            seen.add(ptr)
        out[k] = v
    return out


def export_checkpoint(source: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                      force: bool = False, verify: bool = True) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` from one of our
    checkpoints (file or run folder). ``force``: replace an existing export. ``verify``: read the
    export back and check every tensor is bit-identical. Returns ``out_dir``."""
    path = checkpoint_file(source)
    ckpt = load_checkpoint(path)
    if "model_args" not in ckpt:
        raise ValueError(f"{path}: the checkpoint has no model_args, so the model cannot be rebuilt from an export")
    out = Path(out_dir).expanduser()
    if (out / WEIGHTS_FILE).exists() and not force:
        raise FileExistsError(f"{out / WEIGHTS_FILE} exists; pass --force to replace it")
    model = load_model_from_checkpoint(ckpt, str(path))  # adapter-only checkpoints get their base CLIP
    state = _unshared(model.state_dict())
    meta = {
        "format": EXPORT_FORMAT,
        "weights": WEIGHTS_FILE,
        "source": str(path.resolve()),
        "model_args": ckpt["model_args"],
        "tokenizer": ckpt.get("tokenizer") or {"kind": "clip"},
        "config": ckpt.get("config") or {},
        "state": {k: v for k, v in (ckpt.get("state") or {}).items()
                  if k in ("epoch", "step", "best_epoch", "best_score")},
    }
    text = json.dumps(meta, indent=2, default=_json_default, allow_nan=True) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    # Weights first, config last: a folder with a config.json always has the weights it describes.
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt",
                                                                                       "clip4clip": EXPORT_FORMAT}),
                 fsync=True)
    atomic_write_text(out / CONFIG_FILE, text)
    if verify:
        back, _, _ = load_exported(out)
        for k, v in back.state_dict().items():
            if not torch.equal(v, state[k]):
                raise ValueError(f"{out}: the export does not read back identically ({k} differs)")
    return out


def _size(path: Path) -> str:
    mb = path.stat().st_size / 2 ** 20
    return f"{mb:.1f} MiB" if mb >= 0.1 else f"{math.ceil(path.stat().st_size / 1024)} KiB"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip4clip.export",
                                description="Export one of our checkpoints as model.safetensors + config.json "
                                            "(no pickle), loadable wherever a checkpoint is accepted.")
    p.add_argument("checkpoint", help="our checkpoint (.pt) or a training run folder (its checkpoints/best.pt)")
    p.add_argument("out_dir", help="folder to write model.safetensors and config.json into (created)")
    p.add_argument("--force", action="store_true", help="replace an existing export in out_dir")
    p.add_argument("--no-verify", action="store_true", help="skip reading the export back to check it")
    args = p.parse_args(argv)
    with user_errors():
        try:
            out = export_checkpoint(args.checkpoint, args.out_dir, force=args.force, verify=not args.no_verify)
        except FileExistsError as e:
            raise ValueError(str(e)) from e
    print(f"exported {checkpoint_file(args.checkpoint)} -> {out / WEIGHTS_FILE} ({_size(out / WEIGHTS_FILE)}) "
          f"and {out / CONFIG_FILE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
