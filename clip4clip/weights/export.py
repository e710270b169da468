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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from safetensors.torch import save_file

from ..core.errors import user_errors
from .checkpoints import checkpoint_file, load_checkpoint, load_model_from_checkpoint
from .exported import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, load_exported
from .files import check_state_fits, state_shapes
from .rebuild import check_model_args, meta_model

__all__ = ["export_checkpoint", "main"]



def _config_text(meta: Dict[str, Any], where: Path) -> str:
    """``meta`` as config.json's text; a value JSON cannot hold (a tensor left in the run's
    config, a container that contains itself) is a ValueError naming the checkpoint."""
    def default(obj: Any):
        if isinstance(obj, tuple):
            return list(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise ValueError(f"a {type(obj).__name__} cannot be written as JSON")

    try:
        return json.dumps(meta, indent=2, default=default, allow_nan=True) + "\n"
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where}: its config, model_args or tokenizer cannot be written to {CONFIG_FILE}: {e}") from e


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


def _export_contents(path: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict, config.json text) of the export of checkpoint ``path``, after every check
    loading the export will make: the checkpoint's fields, its model_args against every key and
    shape (``load_model_from_checkpoint``), and the model_args again against the full state
    that is written (an adapter-only checkpoint's state is completed with its base CLIP)."""
    ckpt = load_checkpoint(path)
    model = load_model_from_checkpoint(ckpt, str(path))  # checks every field, key and shape first
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
    check_model_args(meta["model_args"], state, str(path))
    check_state_fits(state_shapes(meta_model(meta["model_args"], str(path))), state,
                     f"{path} (the exported state against its model_args)")
    return state, _config_text(meta, path)


def _write_staged(stage: Path, state: Dict[str, torch.Tensor], text: str, verify: bool) -> None:
    """Both files into ``stage``, the weights flushed to disk; with ``verify`` read back there."""
    save_file(state, str(stage / WEIGHTS_FILE), metadata={"format": "pt", "clip4clip": EXPORT_FORMAT})
    fd = os.open(stage / WEIGHTS_FILE, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    (stage / CONFIG_FILE).write_text(text, encoding="utf-8")
    if verify:
        back, _, _ = load_exported(stage)
        for k, v in back.state_dict().items():
            if not torch.equal(v, state[k]):
                raise ValueError(f"{stage}: the export does not read back identically ({k} differs)")


def export_checkpoint(source: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                      force: bool = False, verify: bool = True) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` from one of our
    checkpoints (file or run folder). ``force``: replace an existing export. ``verify``: read the
    export back and check every tensor is bit-identical. Returns ``out_dir``.

    Nothing is written for a checkpoint that loading would refuse: it is checked in full first
    (``_export_contents``). The files are then written into a hidden folder inside ``out_dir``,
    verified there and moved into place (weights first, config last: a folder with a
    config.json always has the weights it describes); a failure leaves ``out_dir`` as it was."""
    path = checkpoint_file(source)
    out = Path(out_dir).expanduser()
    if (out / WEIGHTS_FILE).exists() and not force:
        raise FileExistsError(f"{out / WEIGHTS_FILE} exists; pass --force to replace it")
    state, text = _export_contents(path)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-tmp-", dir=out))
    try:
        _write_staged(stage, state, text, verify)
        os.replace(stage / WEIGHTS_FILE, out / WEIGHTS_FILE)
        os.replace(stage / CONFIG_FILE, out / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
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
