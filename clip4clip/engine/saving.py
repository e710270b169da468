"""Writing training checkpoints: atomic saves, RNG state, and keeping best.pt and last.pt a
consistent pair across kills. Reading any checkpoint is ``clip4clip.weights.checkpoints``."""
from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..core.atomic import atomic_write
from ..core.errors import CheckpointWriteError
# Reading checkpoints is the weights package's; re-exported for the training engine.
from ..weights.checkpoints import FORMAT, checkpoint_file, is_framework_checkpoint, load_checkpoint  # noqa: F401

#: The next best.pt while an epoch's pair is being written (see ``Trainer.save_epoch_end``).
BEST_PENDING = "best.next.pt"


def _open_for_write(path: Path):
    return open(path, "wb")


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save`` to a temp file, fsync, rename over ``path``: a kill at any moment leaves
    the old checkpoint or the new one, never a truncated one. A failed write (disk full) raises
    ``CheckpointWriteError`` naming the file and the OS reason, and leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        # Through a Python file object, so a full disk surfaces as OSError(ENOSPC) rather than
        # as an opaque "inline_container.cc" RuntimeError from torch's own writer.
        with _open_for_write(tmp) as f:
            torch.save(obj, f)

    try:
        return atomic_write(path, write, fsync=True)
    except OSError as e:
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointWriteError(e.errno, f"cannot write checkpoint {path}: {reason} ({e}); the checkpoints "
                                            f"written before in {path.parent} are kept") from e


def promote_best(ckpt_dir: Union[str, os.PathLike]) -> None:
    """``best.next.pt`` becomes ``best.pt`` (one rename: atomic)."""
    os.replace(Path(ckpt_dir) / BEST_PENDING, Path(ckpt_dir) / "best.pt")


def read_epoch(path: Path) -> int:
    """The number of completed epochs a checkpoint of ours was taken at."""
    return int(load_checkpoint(path)["state"]["epoch"])


def reconcile_best(ckpt_dir: Union[str, os.PathLike], state: Dict[str, Any],
                   into: Optional[Union[str, os.PathLike]] = None) -> Optional[str]:
    """Make ``best.pt`` agree with ``last.pt``'s ``state`` before a resumed run goes on.

    In ``ckpt_dir`` (the folder of the checkpoint resumed from): finishes or discards a
    ``best.next.pt`` left by a kill inside ``Trainer.save_epoch_end``, then checks that
    ``best.pt`` holds the best epoch ``state`` names. ``into``: a different checkpoints folder
    (resuming into a new run folder) receives a copy of the right best checkpoint and the
    source folder is left as it is. Returns a note of what was done (or None); raises
    ValueError when no best checkpoint that agrees with ``state`` exists."""
    src = Path(ckpt_dir)
    dst = Path(into) if into is not None else src
    in_place = dst.resolve() == src.resolve()
    best, pending = src / "best.pt", src / BEST_PENDING
    best_epoch, epoch = int(state.get("best_epoch", -1)), int(state.get("epoch", 0))
    note = None
    chosen, held = best, None
    if pending.exists():
        pending_epoch = read_epoch(pending)
        if pending_epoch == best_epoch:  # killed after last.pt was written: finish the rename
            chosen, held = pending, pending_epoch
            note = f"best.pt completed from {pending.name} (epoch {pending_epoch})"
        else:  # killed before last.pt: that epoch is trained again and written again
            note = f"{pending.name} of epoch {pending_epoch} discarded (last.pt is at epoch {epoch})"
            if in_place:
                pending.unlink()
    if best_epoch > 0:
        if not chosen.is_file():
            raise ValueError(f"{best} is missing but the checkpoint resumed from says the best epoch is "
                             f"{best_epoch}; put that run's best.pt beside it or start a new run")
        held = read_epoch(chosen) if held is None else held  # each file is read once
        if held != best_epoch:
            raise ValueError(f"{chosen} holds epoch {held} but the checkpoint resumed from says the best "
                             f"epoch is {best_epoch}: the two files are from different moments of the run")
        if in_place and chosen is pending:
            os.replace(pending, best)
        elif not in_place:
            dst.mkdir(parents=True, exist_ok=True)
            atomic_write(dst / "best.pt", lambda tmp: shutil.copyfile(chosen, tmp), fsync=True)
    return note


def rng_state() -> Dict[str, Any]:
    """Every generator's state as tensors and plain containers, so a checkpoint can be read back
    with ``torch.load(weights_only=True)`` (numpy's state would otherwise be a pickled array)."""
    np_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(),
             "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                             "pos": int(np_state["state"]["pos"])}},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np.asarray(np_state["state"]["key"], dtype=np.int64).astype(np.uint32)
        np_state = {**np_state, "state": {"key": key, "pos": int(np_state["state"]["pos"])}}
    np.random.set_state(np_state)  # a dict, or the legacy tuple of older checkpoints
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume_path(resume: Union[str, os.PathLike]) -> Path:
    """``trainer.resume`` may name a checkpoint file or a run folder (its checkpoints/last.pt)."""
    return checkpoint_file(resume, names=("last.pt",), what="trainer.resume")


def seed_everything(seed: int, deterministic: Optional[bool] = None) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
