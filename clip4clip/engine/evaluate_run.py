"""``python evaluate.py checkpoint=...``: score a model on a dataset split.

``checkpoint`` may be one of our training checkpoints (its config is used, with command-line
overrides on top), an official CLIP4Clip ``pytorch_model.bin.N``, a released CLIP name
(``ViT-B/32``: zero-shot, meanP) or a CLIP weights file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Tuple

import torch

from ..builder import build_tokenizer, load_model_from_checkpoint
from ..clip import PRETRAINED, clip_from_state_dict, load_clip, read_state_dict
from ..metrics import format_table
from ..model import CLIP4Clip
from .checkpoint import is_framework_checkpoint, seed_everything
from .datasets import build_split, dataset_root
from .evaluation import evaluate
from .precision import resolve_device, resolve_precision
from .run import _save_config, check_output_dir, resolve_workers, to_container
from .trainer import write_json

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


def _load_any(ckpt_arg: str) -> Tuple[str, Any]:
    """-> (kind, payload): 'ours' (checkpoint dict), 'official' (state dict), 'clip' (CLIP)."""
    if ckpt_arg in PRETRAINED:
        return "clip", load_clip(ckpt_arg)
    path = Path(ckpt_arg).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={ckpt_arg}: no such file, and not a released CLIP name "
                                f"{list(PRETRAINED)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        obj = None  # TorchScript archives and foreign formats: try them as CLIP weights below
    if is_framework_checkpoint(obj):
        return "ours", obj
    if isinstance(obj, dict) and any(str(k).startswith("clip.") for k in obj):
        return "official", obj
    sd = read_state_dict(path)
    if "visual.proj" in sd:
        return "clip", clip_from_state_dict(sd)
    raise ValueError(f"checkpoint={path} is none of: a checkpoint of this framework, an official "
                     f"CLIP4Clip checkpoint (keys 'clip.*'), CLIP weights (keys 'visual.*')")


def run_evaluation(cfg, overrides: Iterable[str] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    composed = to_container(cfg)
    out = check_output_dir(composed["paths"]["output_dir"])
    kind, payload = _load_any(str(composed["checkpoint"]))
    config = composed
    if kind == "ours":
        base = dict(payload["config"])
        base.update({k: composed[k] for k in _RUN_KEYS if k in composed})
        config = merge_overrides(base, composed, [o for o in overrides
                                                  if o.split("=", 1)[0].lstrip("+~") not in _RUN_KEYS])
        model = load_model_from_checkpoint(payload)
        tok_state = payload.get("tokenizer") or {"kind": "clip"}
        tokenizer = build_tokenizer(config["model"], state=tok_state if tok_state["kind"] != "clip" else None)
    elif kind == "official":
        model = CLIP4Clip.from_official_checkpoint(payload)
        tokenizer = build_tokenizer({**config["model"], "tokenizer": "clip"})
    else:
        model = CLIP4Clip.from_clip(payload, "meanP")
        tokenizer = build_tokenizer({**config["model"], "tokenizer": "clip"})

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
    print(f"{kind} checkpoint {composed['checkpoint']} on {dcfg['name']} {split} "
          f"({len(enc.texts)} captions, {len(enc.video_ids)} videos):\n{format_table(metrics)}", flush=True)
    result = {"metrics": metrics, "checkpoint": str(composed["checkpoint"]), "checkpoint_kind": kind,
              "dataset": dcfg["name"], "split": split, "num_texts": len(enc.texts),
              "num_videos": len(enc.video_ids)}
    _save_config(config, out)
    write_json(result, out / "metrics.json")
    return result, {"model": model, "tokenizer": tokenizer, "encoded": enc, "output_dir": out}
