"""Build a training or evaluation run from a composed config and execute it.

``run_training(cfg)`` and ``run_evaluation(cfg)`` return ``(metrics, objects)`` so tests and
sweeps can call them directly; ``train.py`` / ``evaluate.py`` only add Hydra's ``main``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch
from torch.utils.data import DataLoader

from ..builder import (build_model, build_tokenizer, init_state, init_tokenizer_state, model_args,
                       tokenizer_state)
from ..metrics import format_table
from .checkpoint import is_framework_checkpoint, load_checkpoint, resolve_resume_path, seed_everything
from .collate import TokenizeCollate
from .datasets import build_split, dataset_root, val_split_name
from .evaluation import evaluate
from .optim import build_optimizer, build_scheduler, pretrained_names
from .precision import grad_scaler, resolve_device, resolve_precision
from .sampler import EpochSampler
from .tensorboard import Logger
from .trainer import Trainer, write_json


def to_container(cfg: Any) -> dict:
    from omegaconf import OmegaConf
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def check_output_dir(path: Any) -> Path:
    """Fail before any work when the run folder cannot be written."""
    out = Path(str(path)).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable ({e.strerror or e}); "
                              f"set paths.output_dir or hydra.run.dir to a writable folder") from e
    return out


def _positive(cfg: Mapping, section: str, *keys: str) -> None:
    for k in keys:
        v = cfg[section][k]
        if not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"{section}.{k}={v!r}; expected a positive number")


def resolve_workers(value) -> int:
    """``auto``: one loader process per CPU core, at most 8 (enough to feed one GPU)."""
    if value in (None, "auto"):
        return min(8, os.cpu_count() or 1)
    n = int(value)
    if n < 0:
        raise ValueError(f"trainer.num_workers={value}; expected auto or an integer >= 0")
    return n


def _loader(dataset, batch_size, collate, num_workers, device, sampler=None):
    num_workers = resolve_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      drop_last=False)


def _save_config(config: dict, out: Path) -> None:
    from omegaconf import OmegaConf
    from .checkpoint import atomic_write_text
    atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(config)), out / "config.yaml")


def run_training(cfg) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    config = to_container(cfg)
    tr, opt, mcfg, dcfg = config["trainer"], config["optim"], config["model"], config["dataset"]
    _positive(config, "trainer", "epochs", "batch_size", "eval_batch_size")
    _positive(config, "optim", "lr")
    out = check_output_dir(config["paths"]["output_dir"])
    resume_ckpt = None
    if tr.get("resume"):
        resume_ckpt = load_checkpoint(resolve_resume_path(tr["resume"]))
    if tr.get("threads"):
        torch.set_num_threads(int(tr["threads"]))
    seed_everything(int(config["seed"]))
    device = resolve_device(tr["device"])
    precision = resolve_precision(tr["precision"], device)
    progress = bool(tr.get("progress", True))

    root = dataset_root(dcfg, progress=progress)
    image_size = int(mcfg["image_size"])
    seed = int(config["seed"])
    train_ds = build_split(dcfg, root, "train", image_size, seed, progress)
    val_name = val_split_name(dcfg)
    val_ds = build_split(dcfg, root, val_name, image_size, seed, progress) if val_name else None

    tok_state = resume_ckpt.get("tokenizer") if resume_ckpt else init_tokenizer_state(mcfg)
    if tok_state and tok_state.get("kind") == "clip":
        tok_state = None
    tokenizer = build_tokenizer(mcfg, train_texts=[c for caps in train_ds.captions.values() for c in caps],
                                state=tok_state)
    acfg = config.get("adapter") or {"name": "none"}
    model = build_model(mcfg, vocab_size=tokenizer.vocab_size, adapter_cfg=acfg, init_state=init_state(mcfg))
    if model.clip.visual.input_resolution != image_size:
        raise ValueError(f"model.image_size={image_size} but the CLIP model takes "
                         f"{model.clip.visual.input_resolution}px images; set model.image_size accordingly")
    args = model_args(model, mcfg, acfg)
    if resume_ckpt is not None and resume_ckpt.get("model_args") != args:
        raise ValueError(f"trainer.resume={tr['resume']} holds a different model "
                         f"({resume_ckpt.get('model_args')}) from this config ({args})")
    model.to(device)

    collate = TokenizeCollate(tokenizer, int(mcfg["max_words"]))
    sampler = EpochSampler(len(train_ds), seed=seed, shuffle=True,
                           shuffle_block=int(tr.get("shuffle_block", 1)))
    workers = tr["num_workers"]
    train_loader = _loader(train_ds, int(tr["batch_size"]), collate, workers, device, sampler=sampler)
    eval_options = {"tokenizer": tokenizer, "max_words": int(mcfg["max_words"]),
                    "batch_size": int(tr["eval_batch_size"]), "num_workers": resolve_workers(workers)}

    optimizer = build_optimizer(model, lr=float(opt["lr"]), coef_lr=float(opt["coef_lr"]),
                                pretrained=pretrained_names(model),
                                weight_decay=float(opt["weight_decay"]), betas=opt["betas"],
                                eps=float(opt["eps"]), fused=device.type == "cuda")
    total_steps = int(tr["epochs"]) * len(train_loader)
    scheduler = build_scheduler(optimizer, total_steps, float(opt["warmup_proportion"]),
                                float(opt.get("min_lr_ratio", 0.0)))
    scaler = grad_scaler(device, precision)

    _save_config(config, out)
    logger = Logger(str(out / "tensorboard") if tr.get("tensorboard", True) else None)
    from adapters import format_parameter_summary, parameter_summary
    summary = parameter_summary(model)
    print(f"model: {args['head']} head on CLIP {args['clip']['vision_width']}w/{args['clip']['vision_layers']}L, "
          f"adapter {acfg.get('name', 'none')}; {format_parameter_summary(summary)} "
          f"(exactly {summary['trainable']} of {summary['total']})", flush=True)
    logger.text("run/parameters", f"total {summary['total']}, trainable {summary['trainable']} "
                f"({summary['percent']:.2f}%)", 0)
    extra = {"model_args": args, "tokenizer": tokenizer_state(tokenizer),
             "weights": "trainable" if acfg.get("save_trainable_only") else "full"}
    trainer = Trainer(model, optimizer, scheduler, scaler, train_loader, sampler, device, precision,
                      epochs=int(tr["epochs"]), out_dir=out, config=config, extra_state=extra,
                      val_dataset=val_ds, eval_options=eval_options, grad_clip=float(opt.get("grad_clip") or 0.0),
                      log_every=int(tr["log_every"]), checkpoint_every_steps=int(tr.get("checkpoint_every_steps") or 0),
                      monitor=tr.get("monitor", "t2v/R1"), logger=logger, progress=progress,
                      eval_every=int(tr.get("eval_every", 1)), vis_queries=int(tr.get("vis_queries", 4)))
    if resume_ckpt is not None:
        trainer.restore(resume_ckpt)
        print(f"resumed from {tr['resume']} at epoch {trainer.state.epoch}, step {trainer.state.step}", flush=True)
    state = trainer.fit()

    # Final test of the selected checkpoint.
    best_path = out / "checkpoints" / "best.pt"
    trainer.load_weights(load_checkpoint(best_path))
    test_ds = build_split(dcfg, root, "test", image_size, seed, progress)
    test_metrics, _ = evaluate(model, test_ds, device=device, precision=precision, progress=progress,
                               desc="test", **eval_options)
    print(f"\ntest ({len(test_ds)} captions, checkpoint from epoch {state['best_epoch']}):\n"
          f"{format_table(test_metrics)}", flush=True)
    logger.metrics(test_metrics, state["step"], prefix="test")
    logger.close()
    metrics = {"test": test_metrics, "best_epoch": state["best_epoch"],
               "val": next((h["val"] for h in state["history"] if h["epoch"] == state["best_epoch"] and "val" in h), None),
               "history": state["history"], "output_dir": str(out)}
    write_json(metrics, out / "metrics.json")
    return metrics, {"model": model, "tokenizer": tokenizer, "trainer": trainer, "output_dir": out}
