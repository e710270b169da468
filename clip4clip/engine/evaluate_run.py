"""``python evaluate.py checkpoint=...``: score a model on a dataset split.

``checkpoint`` may be one of our training checkpoints or a run folder (its best checkpoint;
its config is used, with command-line
overrides on top), an official CLIP4Clip ``pytorch_model.bin.N``, a released CLIP name
(``ViT-B/32``: zero-shot, meanP) or a CLIP weights file.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Tuple

from ..builder import to_plain
from ..checkpoints import model_and_tokenizer, read_checkpoint
from ..metrics import format_table
from .checkpoint import seed_everything
from data.splits import build_split, dataset_root
from .evaluation import evaluate
from .precision import resolve_device, resolve_precision
from .run import resolve_workers
from .run_folder import check_output_dir, save_config, write_json

# Sections of the evaluation config that describe the run itself, not the model or data.
_RUN_KEYS = ("checkpoint", "split", "trainer", "paths", "seed", "task_name")


def merge_overrides(base: dict, composed: dict, overrides: Iterable[str]) -> dict:
    """Apply the command-line overrides (``a.b=c``, ``group=choice``, ``head@model.head=x``)
    onto a checkpoint's stored config, taking each value from the freshly composed config."""
    from omegaconf import OmegaConf
    merged = OmegaConf.create(base)
    comp = OmegaConf.create(composed)
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        key = key.split("@", 1)[1] if "@" in key else key
        if key.startswith("hydra"):
            continue
        OmegaConf.update(merged, key, OmegaConf.select(comp, key), force_add=True)
    return OmegaConf.to_container(merged, resolve=True)


def run_evaluation(cfg, overrides: Iterable[str] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    composed = to_plain(cfg)
    out = check_output_dir(composed["paths"]["output_dir"])
    kind, payload, source = read_checkpoint(str(composed["checkpoint"]))  # a file, run folder or CLIP name
    config = composed
    if kind == "ours":
        base = dict(payload["config"])
        base.update({k: composed[k] for k in _RUN_KEYS if k in composed})
        config = merge_overrides(base, composed, [o for o in overrides
                                                  if o.split("=", 1)[0].lstrip("+~") not in _RUN_KEYS])
    model, tokenizer = model_and_tokenizer(kind, payload, config["model"], source=source)

    tr = config["trainer"]
    seed_everything(int(config.get("seed", 0)))
    device = resolve_device(tr["device"])
    precision = resolve_precision(tr["precision"], device)
    progress = bool(tr.get("progress", True))
    model.to(device)
    dcfg = config["dataset"]
    root = dataset_root(dcfg, progress=progress)
    split = config.get("split", "test")
    image_size = model.clip.visual.input_resolution
    ds = build_split(dcfg, root, split, image_size, int(config.get("seed", 0)), progress)
    metrics, enc = evaluate(model, ds, tokenizer, int(config["model"]["max_words"]), int(tr["eval_batch_size"]),
                            device, precision, resolve_workers(tr["num_workers"]), progress, desc=split)
    # Only reachable with dataset.allow_missing=true; otherwise the split refused to build.
    missing = list(getattr(ds, "missing_videos", []) or [])
    caveat = (f"\nWARNING: {len(missing)} video(s) of the split were missing or unreadable and are "
              f"left out with their captions (dataset.allow_missing=true): these metrics are not "
              f"comparable to the full split." if missing else "")
    print(f"{kind} checkpoint {composed['checkpoint']} on {dcfg['name']} {split} "
          f"({len(enc.texts)} captions, {len(enc.video_ids)} videos):\n{format_table(metrics)}{caveat}", flush=True)
    result = {"metrics": metrics, "checkpoint": str(composed["checkpoint"]), "checkpoint_kind": kind,
              "dataset": dcfg["name"], "split": split, "num_texts": len(enc.texts),
              "num_videos": len(enc.video_ids), "missing_videos": missing}
    save_config(config, out)
    write_json(result, out / "metrics.json")
    return result, {"model": model, "tokenizer": tokenizer, "encoded": enc, "output_dir": out}
