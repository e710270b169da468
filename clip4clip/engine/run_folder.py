"""The run folder's files: checked writable before any work, then config.yaml and
metrics.json written atomically (a kill leaves the old file or the new one)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_text


def check_output_dir(path: Any, subdirs: tuple = ()) -> Path:
    """Fail before any work when the run folder (or one of ``subdirs`` in it, e.g. the
    checkpoints folder) cannot be written: a path that is a file, no permission, read-only."""
    out = Path(str(path)).expanduser()
    for folder in (out, *(out / d for d in subdirs)):
        if folder.exists() and not folder.is_dir():
            raise PermissionError(f"{folder} is a file, not a folder: the run writes "
                                  f"{'its checkpoints' if folder != out else 'its outputs'} there; "
                                  "move the file or set paths.output_dir / hydra.run.dir elsewhere")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as e:
            raise PermissionError(f"output folder {folder} is not writable ({e.strerror or e}); "
                                  f"set paths.output_dir or hydra.run.dir to a writable folder") from e
    return out


def save_config(config: dict, out: Path) -> None:
    """The resolved config as ``<out>/config.yaml``."""
    from omegaconf import OmegaConf
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))


def write_json(obj: Any, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
