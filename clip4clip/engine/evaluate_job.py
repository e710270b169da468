"""``python evaluate.py checkpoint=...``: score a model on a dataset split.

``checkpoint`` may be one of our training checkpoints or a run folder (its best checkpoint;
its config is used, with command-line
overrides on top), an official CLIP4Clip ``pytorch_model.bin.N``, a released CLIP name
(``ViT-B/32``: zero-shot, meanP) or a CLIP weights file.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Tuple

from ..builder import to_plain
from ..weights import model_and_tokenizer, read_checkpoint
from ..metrics import format_table
from .saving import seed_everything
from data.splits import build_split, dataset_root
from .evaluation import Postprocess, Querybank, draw_querybank, evaluate_with_postprocessing
from .config_values import flag, resolve_workers
from ..core.cpu_memory import keep_freed_memory
from .precision import resolve_device, resolve_precision
from .run_folder import check_output_dir, save_config, write_json

# Sections of the evaluation config that describe the run itself, not the model or data
# (``eval``: post-processing is chosen per evaluation, not taken from the checkpoint).
_RUN_KEYS = ("checkpoint", "split", "trainer", "paths", "seed", "task_name", "eval")


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


def training_querybank(dcfg: Mapping, root, post: Postprocess, image_size: int, seed: int) -> Querybank:
    """The QB-Norm / IS querybank: ``eval.querybank.size`` captions of the dataset's TRAINING
    split (never the split being evaluated). Only the captions are needed, so the training
    split is read without its frame cache and without checking its videos; captions of training
    videos that are missing are left out (``available`` says how many there were to draw from)."""
    from data import EmptySplitError
    from data.splits import list_split
    try:
        train = list_split(dcfg, root, "train", image_size, seed)
    except EmptySplitError:
        raise ValueError(f"eval.postprocess={','.join(post.methods)} draws its querybank from the training "
                         f"split's captions, but none of {dcfg['name']}'s training videos is under {root}, "
                         "so no training caption could be read") from None
    return draw_querybank(train.captions, post.querybank_size, post.querybank_seed)


#: What ``checkpoint=`` accepts, for the message when it is not given.
CHECKPOINT_KINDS = ("a training run folder (its best checkpoint), a best.pt or last.pt, a folder written by "
                    "python -m clip4clip.export, an official CLIP4Clip pytorch_model.bin.N, a released CLIP name "
                    "(ViT-B/32) or a CLIP weights file")


def checkpoint_argument(composed: Mapping) -> str:
    """``checkpoint``, which has no default: Hydra leaves its '???' (a missing value) in the
    config, which would otherwise be looked up as a file named '???'."""
    value = composed.get("checkpoint")
    if value is None or str(value).strip() in ("", "???"):
        raise ValueError(f"checkpoint is required: python evaluate.py checkpoint=PATH, where PATH is {CHECKPOINT_KINDS}")
    return str(value)


def run_evaluation(cfg, overrides: Iterable[str] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    composed = to_plain(cfg)
    checkpoint_argument(composed)
    post = Postprocess.from_config(composed.get("eval"))  # a bad value is refused before anything is read
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
    seed_everything(int(config["seed"]))
    device = resolve_device(tr["device"])
    if flag(tr["keep_freed_memory"], "trainer.keep_freed_memory") and device.type == "cpu":
        keep_freed_memory()  # freed batches are reused, not faulted in again (same numbers)
    precision = resolve_precision(tr["precision"], device)
    progress = bool(tr["progress"])
    model.to(device)
    dcfg = config["dataset"]
    root = dataset_root(dcfg, progress=progress)
    split = config["split"]
    image_size = model.clip.visual.input_resolution
    ds = build_split(dcfg, root, split, image_size, int(config["seed"]), progress)
    model.check_frames(ds.max_frames)
    querybank = training_querybank(dcfg, root, post, image_size, int(config["seed"])) \
        if post.needs_querybank else None
    metrics, processed, enc = evaluate_with_postprocessing(
        model, ds, tokenizer, int(config["model"]["max_words"]), int(tr["eval_batch_size"]), device, precision,
        resolve_workers(tr["num_workers"]), progress, desc=split, post=post, querybank=querybank)
    # Only reachable with dataset.allow_missing=true; otherwise the split refused to build.
    missing = list(getattr(ds, "missing_videos", []) or [])
    caveat = (f"\nWARNING: {len(missing)} video(s) of the split were missing or unreadable and are "
              f"left out with their captions (dataset.allow_missing=true): these metrics are not "
              f"comparable to the full split." if missing else "")
    print(f"{kind} checkpoint {composed['checkpoint']} on {dcfg['name']} {split} "
          f"({len(enc.texts)} captions, {len(enc.video_ids)} videos):\n{format_table(metrics)}{caveat}", flush=True)
    if processed:
        print(processed.format(), flush=True)
    # Post-processed metrics sit beside the plain ones ("metrics" is always the plain ranking).
    result = {"metrics": metrics, "postprocessed": processed.metrics, "postprocess_settings": processed.settings,
              "checkpoint": str(composed["checkpoint"]), "checkpoint_kind": kind,
              "dataset": dcfg["name"], "split": split, "num_texts": len(enc.texts),
              "num_videos": len(enc.video_ids), "missing_videos": missing}
    save_config(config, out)
    write_json(result, out / "metrics.json")
    return result, {"model": model, "tokenizer": tokenizer, "encoded": enc, "output_dir": out}
