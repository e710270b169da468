"""Build a training or evaluation run from a composed config and execute it.

``run_training(cfg)`` and ``run_evaluation(cfg)`` return ``(metrics, objects)`` so tests and
sweeps can call them directly; ``train.py`` / ``evaluate.py`` only add Hydra's ``main``.

Under ``torchrun --nproc_per_node=N train.py ...`` run_training joins the process group (and
leaves it at the end); ``trainer.batch_size`` stays the GLOBAL batch, split over the processes,
so a config means the same training on any number of GPUs.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from clip4clip.core.atomic import remove_stale_tmp

from ..builder import build_tokenizer, model_args, to_plain, tokenizer_state
from ..weights import build_model, read_init_checkpoint
from ..loss import ClipLoss
from ..metrics import format_table
from .saving import load_checkpoint, reconcile_best, resolve_resume_path, seed_everything
from .tokenize_collate import TokenizeCollate
from .config_values import flag, positive_number, resolve_workers, whole_number
from data.splits import build_split, dataset_root, val_split_name
from .evaluation_sharded import evaluate_distributed_with_postprocessing
from .evaluation import Postprocess, draw_querybank
from .distributed import (DistInfo, all_gather_with_grad, barrier, broadcast_object, broadcast_parameters,
                          init_distributed, main_process_first, shutdown, wrap_ddp)
from ..core.cpu_memory import keep_freed_memory
from .optim import build_optimizer, build_scheduler, check_schedule_rule, pretrained_names
from .precision import grad_scaler, resolve_device, resolve_precision
from .sampler import EpochSampler
from .tensorboard import Logger
from .resume import check_resume_checkpoint
from .run_folder import check_output_dir, save_config, write_json
from .trainer import Trainer, TrainOptions, TrainParts


# Counts that must be whole numbers: (section, key, minimum, may be null).
_COUNTS = (("trainer", "epochs", 1, False), ("trainer", "batch_size", 1, False),
           ("trainer", "eval_batch_size", 1, False), ("trainer", "log_every", 1, False),
           ("trainer", "eval_every", 1, True), ("trainer", "checkpoint_every_steps", 0, True),
           ("trainer", "loss_chunk_size", 0, True), ("trainer", "shuffle_block", 1, True),
           ("trainer", "vis_queries", 0, True), ("trainer", "threads", 1, True),
           ("optim", "hold_text_steps", 0, True), ("optim", "hold_text_ramp_steps", 0, True), ("model", "max_words", 3, False),
           ("dataset", "max_frames", 1, True))


def check_counts(config: Mapping) -> None:
    for section, key, minimum, optional in _COUNTS:
        if key in (config.get(section) or {}):
            whole_number(config[section][key], f"{section}.{key}", minimum, optional)
    workers = (config.get("trainer") or {}).get("num_workers")
    if workers not in (None, "auto"):
        whole_number(workers, "trainer.num_workers", 0)


def _loader(dataset, batch_size, collate, num_workers, device, sampler=None):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      drop_last=False)


def resolve_normalize_on_device(value, device: torch.device) -> bool:
    """``trainer.normalize_on_device``: auto (on CUDA), true or false."""
    if value in (None, "auto"):
        return device.type == "cuda"
    if isinstance(value, bool):
        return value
    raise ValueError(f"trainer.normalize_on_device={value!r}; expected auto, true or false")


def _base_recoverable(model_cfg: Mapping) -> bool:
    """Can evaluation rebuild the frozen base from the config alone? Yes for a released CLIP or
    ``model.init_checkpoint``; no for a randomly initialised CLIP, so such adapter runs save
    every weight (an adapter-only file would be reloaded onto a different random base)."""
    clip = model_cfg.get("clip") or {}
    return bool(clip.get("pretrained") or model_cfg.get("init_checkpoint"))


def data_summary(history) -> dict:
    """Run totals of the per-epoch data reports: every skipped video (id -> reason) and the
    caption counts."""
    skipped, caps = {}, {"seen": 0, "cut": 0, "empty": 0}
    for record in history:
        skipped.update(record.get("skipped_videos") or {})
        for k in caps:
            caps[k] += int((record.get("captions") or {}).get(k, 0))
    return {"skipped_videos": {"count": len(skipped), "videos": skipped}, "captions": caps}


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise ValueError(f"trainer.batch_size={batch_size} is the global batch and must divide evenly "
                         f"over the {info.world_size} processes")
    return batch_size // info.world_size


def run_training(cfg) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    config = to_plain(cfg)
    tr = config["trainer"]
    check_counts(config)
    positive_number(config["optim"]["lr"], "optim.lr")
    check_schedule_rule(config["optim"]["schedule_rule"])
    flag(tr["keep_freed_memory"], "trainer.keep_freed_memory")
    device = resolve_device(tr["device"])
    info, device = init_distributed(device, tr["dist_backend"])
    try:
        return _train(config, info, device)
    finally:
        shutdown()


def _train(config: dict, info: DistInfo, device: torch.device) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """One training run: prepare the folder and process, build data, model and optimiser, fit,
    then test the selected checkpoint."""
    tr, mcfg = config["trainer"], config["model"]
    out, resume_ckpt, precision, progress, dcfg = _prepare_run(config, info, device)
    train_ds, val_ds, test_ds = _datasets(dcfg, config, info, progress)
    model, tokenizer, args = _model(config, train_ds, resume_ckpt, info)
    model.to(device)

    collate = TokenizeCollate(tokenizer, int(mcfg["max_words"]))
    # Round-robin shards: the ranks' k-th batches together are the single process's k-th batch.
    sampler = EpochSampler(len(train_ds), seed=int(config["seed"]), shuffle=True, rank=info.rank,
                           world_size=info.world_size, shuffle_block=int(tr["shuffle_block"]))
    workers = resolve_workers(tr["num_workers"], info.local_world_size)
    train_loader = _loader(train_ds, per_rank_batch(int(tr["batch_size"]), info), collate, workers, device,
                           sampler=sampler)
    eval_options = {"tokenizer": tokenizer, "max_words": int(mcfg["max_words"]),
                    "batch_size": int(tr["eval_batch_size"]), "num_workers": workers}
    post = Postprocess.from_config(config.get("eval"))  # the final test's post-processing, checked now

    optimizer, scheduler = _optimisation(model, config["optim"], int(tr["epochs"]) * len(train_loader), device)
    scaler = grad_scaler(device, precision)
    compile_backend = tr.get("compile")
    if compile_backend:  # in place: parameter names (and so checkpoints) stay as they are
        model.compile(**({} if compile_backend is True else {"backend": str(compile_backend)}))
    # DDP wraps after compile; the optimiser above holds the same parameter tensors.
    train_model = wrap_ddp(model, device, info)
    loss_fn = ClipLoss(info.rank, info.world_size, all_gather_with_grad if info.enabled else None)

    if info.is_main:
        save_config(config, out)
    logger = Logger(str(out / "tensorboard") if tr["tensorboard"] and info.is_main else None)
    acfg = config.get("adapter") or {"name": "none"}
    _report_parameters(model, args, acfg, info, logger, train_loader.batch_size)
    extra = {"model_args": args, "tokenizer": tokenizer_state(tokenizer),
             "weights": "trainable" if acfg.get("save_trainable_only") and _base_recoverable(mcfg) else "full"}
    trainer = Trainer(TrainParts(train_model, optimizer, scheduler, scaler, train_loader, sampler, loss_fn),
                      TrainOptions.from_config(config, precision, progress), device=device, out_dir=out,
                      config=config, extra_state=extra, val_dataset=val_ds, eval_options=eval_options,
                      logger=logger, dist=info)
    if resume_ckpt is not None:
        _resume(trainer, resume_ckpt, tr["resume"], out, info)
    state = trainer.fit()
    metrics = _final_test(trainer, model, state, train_ds, test_ds, post, eval_options, info, device,
                          precision, progress, logger, out)
    logger.close()
    return metrics, {"model": model, "tokenizer": tokenizer, "trainer": trainer, "output_dir": out}


def _prepare_run(config: dict, info: DistInfo, device: torch.device):
    """The run folder (rank 0's, shared), the checkpoint to resume, process settings and seed.
    -> (out, resume checkpoint or None, precision, progress, dataset config)."""
    tr, dcfg = config["trainer"], config["dataset"]
    # Only rank 0 writes; the others use its folder (Hydra gives each process its own timestamp).
    out = Path(broadcast_object(str(check_output_dir(config["paths"]["output_dir"], ("checkpoints",)))
                                if info.is_main else None))
    if info.is_main:  # debris of writes killed in an earlier run of this folder
        for folder in (out, out / "checkpoints"):
            remove_stale_tmp(folder)
    resume_ckpt = _resume_checkpoint(tr["resume"]) if tr.get("resume") else None
    if tr.get("threads"):
        torch.set_num_threads(int(tr["threads"]))
    if tr["keep_freed_memory"] and device.type == "cpu":  # a bool: checked in run_training
        keep_freed_memory()  # ~10% of a CPU step was page faults on memory freed by the last one
    seed_everything(int(config["seed"]))
    precision = resolve_precision(tr["precision"], device)
    progress = bool(tr["progress"]) and info.is_main
    if resolve_normalize_on_device(tr["normalize_on_device"], device):
        dcfg = {**dcfg, "normalize": False}  # uint8 frames: 4x less to copy; normalised on the device
    return out, resume_ckpt, precision, progress, dcfg


def _resume_checkpoint(resume) -> dict:
    """The checkpoint ``trainer.resume`` names, checked before anything is built from it."""
    path = resolve_resume_path(resume)
    ckpt = load_checkpoint(path)
    check_resume_checkpoint(ckpt, path)
    return ckpt


def _datasets(dcfg: dict, config: dict, info: DistInfo, progress: bool):
    """(train, val or None, test): all built, and their videos checked, before training starts."""
    with main_process_first(info):  # rank 0 generates / downloads, the others then read
        root = dataset_root(dcfg, progress=progress)
    image_size, seed = int(config["model"]["image_size"]), int(config["seed"])
    train_ds = build_split(dcfg, root, "train", image_size, seed, progress)
    val_name = val_split_name(dcfg)
    val_ds = build_split(dcfg, root, val_name, image_size, seed, progress) if val_name else None
    # Built (and its videos checked) now, not after the whole training run.
    test_ds = build_split(dcfg, root, "test", image_size, seed, progress)
    return train_ds, val_ds, test_ds


def _model(config: dict, train_ds, resume_ckpt: Optional[dict], info: DistInfo):
    """Tokenizer and model (with their first weights), checked against the data and against the
    checkpoint being resumed. -> (model, tokenizer, model_args)."""
    mcfg, tr = config["model"], config["trainer"]
    init = read_init_checkpoint(mcfg)  # model.init_checkpoint, read once
    tok_state = resume_ckpt.get("tokenizer") if resume_ckpt else (init or {}).get("tokenizer")
    if tok_state and tok_state.get("kind") == "clip":
        tok_state = None
    tokenizer = build_tokenizer(mcfg, train_texts=[c for caps in train_ds.captions.values() for c in caps],
                                state=tok_state)
    acfg = config.get("adapter") or {"name": "none"}
    with main_process_first(info):
        model = build_model(mcfg, vocab_size=tokenizer.vocab_size, adapter_cfg=acfg, init_state=init)
    image_size = int(mcfg["image_size"])
    if model.clip.visual.input_resolution != image_size:
        raise ValueError(f"model.image_size={image_size} but the CLIP model takes "
                         f"{model.clip.visual.input_resolution}px images; set model.image_size accordingly")
    model.check_frames(train_ds.max_frames)
    args = model_args(model, mcfg, acfg)
    if resume_ckpt is not None and resume_ckpt.get("model_args") != args:
        raise ValueError(f"trainer.resume={tr['resume']} holds a different model "
                         f"({resume_ckpt.get('model_args')}) from this config ({args})")
    return model, tokenizer, args


def _optimisation(model, opt: dict, total_steps: int, device: torch.device):
    """CLIP4Clip's AdamW (pretrained weights at lr * coef_lr) and its warmup-cosine schedule
    (``optim.schedule_rule``: CLIP4Clip's own, step for step, or ours)."""
    optimizer = build_optimizer(model, lr=float(opt["lr"]), coef_lr=float(opt["coef_lr"]),
                                pretrained=pretrained_names(model),
                                weight_decay=float(opt["weight_decay"]), betas=opt["betas"],
                                eps=float(opt["eps"]), fused=device.type in ("cuda", "cpu"),
                                hold_text_steps=int(opt["hold_text_steps"] or 0))
    scheduler = build_scheduler(optimizer, total_steps, float(opt["warmup_proportion"]),
                                float(opt["min_lr_ratio"]),
                                release_ramp_steps=int(opt["hold_text_ramp_steps"] or 0),
                                rule=opt["schedule_rule"])
    return optimizer, scheduler


def _report_parameters(model, args: dict, acfg: dict, info: DistInfo, logger: Logger, batch_size: int) -> None:
    """What trains: printed once and written to TensorBoard."""
    from adapters import format_parameter_summary, parameter_summary
    summary = parameter_summary(model)
    if info.is_main:
        print(f"model: {args['head']} head on CLIP {args['clip']['vision_width']}w/{args['clip']['vision_layers']}L, "
              f"adapter {acfg.get('name', 'none')}; {format_parameter_summary(summary)} "
              f"(exactly {summary['trainable']} of {summary['total']})"
              + (f"; {info.world_size} processes x batch {batch_size}" if info.enabled else ""), flush=True)
    logger.text("run/parameters", f"total {summary['total']}, trainable {summary['trainable']} "
                f"({summary['percent']:.2f}%)", 0)


def _resume(trainer: Trainer, resume_ckpt: dict, resume: str, out: Path, info: DistInfo) -> None:
    trainer.restore(resume_ckpt)
    if info.is_main:
        # best.pt must be the epoch last.pt names (a kill between the two writes is repaired).
        note = reconcile_best(resolve_resume_path(resume).parent, asdict(trainer.state), into=out / "checkpoints")
        print(f"resumed from {resume} at epoch {trainer.state.epoch}, step {trainer.state.step}"
              + (f"; {note}" if note else ""), flush=True)


def _final_test(trainer: Trainer, model, state: dict, train_ds, test_ds, post, eval_options: dict, info: DistInfo,
                device: torch.device, precision, progress: bool, logger: Logger, out: Path) -> Dict[str, Any]:
    """Test the selected checkpoint (rank 0 reads it, every rank gets its weights), plain and
    post-processed side by side; metrics.json written by rank 0."""
    barrier()
    if info.is_main:
        best = load_checkpoint(out / "checkpoints" / "best.pt")
        if int(best["state"]["epoch"]) != int(state["best_epoch"]):
            raise ValueError(f"{out / 'checkpoints' / 'best.pt'} holds epoch {best['state']['epoch']}, "
                             f"not the best epoch {state['best_epoch']}; refusing to test the wrong weights")
        trainer.load_weights(best)
    broadcast_parameters(model)
    # QB-Norm / IS querybank: training captions (rank 0 scores it), never the test captions.
    querybank = draw_querybank(train_ds.captions, post.querybank_size, post.querybank_seed) \
        if post.needs_querybank and info.is_main else None
    test_metrics, test_post, _ = evaluate_distributed_with_postprocessing(
        model, test_ds, info, device=device, precision=precision, progress=progress, desc="test",
        post=post, querybank=querybank, **eval_options)
    # Post-processed test metrics sit beside the plain ones: "test" is always the plain ranking.
    metrics = {"test": test_metrics, "test_postprocessed": test_post.metrics,
               "postprocess_settings": test_post.settings, "best_epoch": state["best_epoch"],
               "val": next((h["val"] for h in state["history"] if h["epoch"] == state["best_epoch"] and "val" in h), None),
               "history": state["history"], "output_dir": str(out), **data_summary(state["history"])}
    if info.is_main:
        print(f"\ntest ({len(test_ds)} captions, checkpoint from epoch {state['best_epoch']}):\n"
              f"{format_table(test_metrics)}", flush=True)
        if test_post:
            print(test_post.format(), flush=True)
        logger.metrics(test_metrics, state["step"], prefix="test")
        for name, m in test_post.metrics.items():
            logger.metrics(m, state["step"], prefix=f"test_postprocessed/{name}")
        write_json(metrics, out / "metrics.json")
    return metrics
