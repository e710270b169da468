"""The training loop: one epoch at a time, evaluation each epoch, checkpoints and resume.

Objects come in fully built (model, optimiser, loaders...), so the loop knows nothing about
configuration files; ``train_job.py`` builds them from the Hydra config. Under torchrun every rank runs
this loop on its shard of each global batch; only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from ..core.errors import NonFiniteLossError  # noqa: F401  (raised here; tests import it from the trainer)
from ..metrics import format_table
from ..model import MAX_LOGIT_SCALE
from .saving import BEST_PENDING, FORMAT, atomic_save, promote_best, rng_state, set_rng_state
from .evaluation_sharded import evaluate_distributed
from .distributed import DistInfo, all_ranks_true, gather_objects
from .evaluation import similarity_matrix
from .ema import WeightEMA
from .optim import held_groups
from .step import ContrastiveStep, batch_to_device
from .tensorboard import Logger, frame_strip, retrieval_grid


@dataclass
class TrainState:
    epoch: int = 0              # epochs fully completed
    step: int = 0               # optimiser steps taken in total
    step_in_epoch: int = 0      # batches consumed inside the current (unfinished) epoch
    best_score: float = -math.inf
    best_epoch: int = -1
    history: List[dict] = field(default_factory=list)
    # The current epoch's data report so far (kept in mid-epoch checkpoints, so a resumed epoch
    # reports the same as an uninterrupted one): skipped unreadable videos (id -> reason), and
    # captions seen / cut to max_words / empty.
    epoch_skipped: Dict[str, str] = field(default_factory=dict)
    epoch_captions: Dict[str, int] = field(default_factory=lambda: {"seen": 0, "cut": 0, "empty": 0})
    warned_captions: bool = False
    # Losses of the current epoch's steps so far: a resumed epoch reports the mean over all of
    # its steps, as an uninterrupted one (not only over those after the resume).
    epoch_losses: List[float] = field(default_factory=list)


def monitor_value(metrics: dict, monitor: str) -> float:
    """'t2v/R1' -> metrics['t2v']['R1']; 'rsum' -> sum of R1/R5/R10 both directions."""
    if monitor == "rsum":
        return sum(metrics[d][k] for d in ("t2v", "v2t") for k in ("R1", "R5", "R10"))
    direction, key = monitor.split("/")
    return float(metrics[direction][key])


@dataclass
class TrainParts:
    """The built objects a run trains with. ``model`` may be wrapped in DistributedDataParallel;
    ``loss_fn`` is this rank's ClipLoss (None: the single-process loss)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    train_loader: object
    sampler: object
    loss_fn: object = None


@dataclass
class TrainOptions:
    """How the loop runs (the ``trainer`` / ``optim`` config values it needs).
    ``loss_chunk_size`` > 0 runs the gradient cache (``gradcache.py``): the same step with the
    activation memory of that many samples."""

    epochs: int
    precision: str = "fp32"
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint_every_steps: int = 0
    monitor: str = "t2v/R1"
    eval_every: int = 1
    vis_queries: int = 4
    loss_chunk_size: int = 0
    progress: bool = True
    ema_decay: float = 0.0

    @classmethod
    def from_config(cls, config: dict, precision: str, progress: bool) -> "TrainOptions":
        tr, opt = config["trainer"], config["optim"]
        return cls(epochs=int(tr["epochs"]), precision=precision, grad_clip=float(opt.get("grad_clip") or 0.0),
                   log_every=int(tr["log_every"]), checkpoint_every_steps=int(tr.get("checkpoint_every_steps") or 0),
                   monitor=tr["monitor"], eval_every=int(tr.get("eval_every") or 1),
                   vis_queries=int(tr["vis_queries"]), loss_chunk_size=int(tr.get("loss_chunk_size") or 0),
                   progress=progress, ema_decay=float(tr.get("ema_decay") or 0.0))


class Trainer:
    def __init__(self, parts: TrainParts, options: TrainOptions, *, device, out_dir: Path, config: dict,
                 extra_state: dict, val_dataset=None, eval_options: Optional[dict] = None,
                 logger: Optional[Logger] = None, dist: Optional[DistInfo] = None, is_main: bool = True):
        """``config``: the resolved run config (stored in checkpoints); ``extra_state``: what else
        checkpoints carry (model_args, tokenizer, weights kind); ``eval_options``: evaluate()
        arguments besides model/dataset (tokenizer, max_words, batch_size, num_workers)."""
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.scaler, self.train_loader, self.sampler = parts.scaler, parts.train_loader, parts.sampler
        self.val_dataset = val_dataset
        self.eval_options = dict(eval_options or {})
        self.device = device
        self.options = options
        self.precision, self.epochs, self.grad_clip = options.precision, options.epochs, options.grad_clip
        self.log_every, self.checkpoint_every_steps = options.log_every, options.checkpoint_every_steps
        self.monitor, self.progress = options.monitor, options.progress
        self.eval_every, self.vis_queries = options.eval_every, options.vis_queries
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.config = config
        self.extra_state = extra_state
        self.logger = logger or Logger(None)
        self.dist = dist or DistInfo()
        self.is_main = is_main and self.dist.is_main
        self.step_fn = ContrastiveStep(parts.model, parts.loss_fn, device, options.precision, parts.scaler,
                                       options.loss_chunk_size)
        self.skipped_videos = 0     # unreadable training videos dropped by the collate (this rank)
        self.state = TrainState()
        #: Average of the weights (``trainer.ema_decay``): what validation, best.pt and the test use.
        self.ema = WeightEMA(self.model_core(), options.ema_decay) if options.ema_decay else None
        self._frozen_groups: Optional[set] = None  # ids of the groups whose parameters are frozen now

    def averaged(self):
        """Inside: the model holds the weights that are validated and saved as best (the EMA when on)."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    # ------------------------------------------------------------------ checkpoints
    def model_weights(self) -> dict:
        """Full state dict, or only the trainable part for adapter runs (small files)."""
        core = self.model_core()
        if self.extra_state.get("weights") == "trainable":
            from ..weights.adapter_state import trainable_state_dict
            return trainable_state_dict(core)
        return core.state_dict()

    def load_weights(self, ckpt: dict) -> None:
        core = self.model_core()
        if ckpt.get("weights") == "trainable":
            from ..weights.adapter_state import load_trainable_state_dict
            load_trainable_state_dict(core, ckpt["model"])
        else:
            core.load_state_dict(ckpt["model"])

    def checkpoint(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model_weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "state": asdict(self.state),
            "config": self.config,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **self.extra_state,
        }

    def eval_checkpoint(self) -> dict:
        """What evaluation and search need (``best.pt``): weights, model args, tokenizer, config
        and the epoch it was taken at; no optimiser, scheduler or RNG state (a third the size
        of ``last.pt`` with AdamW)."""
        return {"format": FORMAT, "contents": "eval", "model": self.model_weights(),
                "state": {"epoch": self.state.epoch, "step": self.state.step,
                          "best_epoch": self.state.best_epoch, "best_score": self.state.best_score},
                "config": self.config, **self.extra_state}

    def save(self, name: str) -> Optional[Path]:
        if not self.is_main:
            return None
        return atomic_save(self.checkpoint(), self.ckpt_dir / f"{name}.pt")

    def save_epoch_end(self, improved: bool) -> None:
        """``last.pt`` and, if the epoch improved, ``best.pt``, written so that a kill at any
        moment leaves a pair that agrees: the new best goes to ``best.next.pt`` first, then
        ``last.pt`` (which names the best epoch), then it is renamed to ``best.pt``. A kill
        before ``last.pt`` leaves the old pair (the epoch is trained again); a kill after it
        leaves ``best.next.pt`` for ``reconcile_best`` to finish the rename on resume."""
        if not self.is_main:
            return
        pending = self.ckpt_dir / BEST_PENDING
        if improved:
            with self.averaged():  # written inside: the state dict holds views of the live weights
                atomic_save(self.eval_checkpoint(), pending)
        self.save("last")
        if improved:
            promote_best(self.ckpt_dir)

    def restore(self, ckpt: dict) -> None:
        self.load_weights(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.state = TrainState(**ckpt["state"])
        if self.ema is not None:
            if "ema" not in ckpt:
                raise ValueError("trainer.ema_decay is set but the checkpoint to resume has no weight average "
                                 "(it was trained without one); resume with trainer.ema_decay=0")
            self.ema.load_state_dict(ckpt["ema"])

    # ------------------------------------------------------------------ steps
    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop before the gradients are touched (``loss`` is the global loss, so every rank
        stops together)."""
        if not torch.isfinite(loss):
            last = self.ckpt_dir / "last.pt"
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {self.state.epoch} step {self.state.step} "
                f"(step {self.state.step_in_epoch} of the epoch); stopping. The last good checkpoint "
                f"is {last if last.exists() else 'not written yet'}. Lower optim.lr or check the data.")

    def _hold(self) -> list:
        """The parameters of groups still held at this step (``optim.hold_text_steps``).

        A held tower gets no gradient at all, not merely a learning rate of 0: its backward is
        skipped (the demo's held phase runs ~10% faster), its gradients do not take a share of
        the clipping norm away from the tower that is learning, and AdamW starts its moments
        fresh at the release instead of carrying statistics of weights that never moved. Under
        DDP the set of parameters that require grad must not change after wrapping, so there the
        gradients are computed and dropped after the backward: the update is the same."""
        groups = held_groups(self.optimizer, self.state.step)
        if self.model is self.model_core():  # not DDP-wrapped; flags change only at a release
            frozen = {id(g) for g in groups}
            if frozen != self._frozen_groups:
                for g in self.optimizer.param_groups:
                    if g.get("hold_steps"):
                        for p in g["params"]:
                            p.requires_grad_(id(g) not in frozen)
                self._frozen_groups = frozen
        return [p for g in groups for p in g["params"]]

    def train_step(self, batch: dict) -> Dict[str, float]:
        batch = batch_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        held = self._hold()
        # Forward + backward of the global-batch loss (DDP all-reduces the gradients in there).
        loss = self.step_fn(batch, check=self._check_finite)
        for p in held:
            p.grad = None  # only reached under DDP: elsewhere held parameters have no gradient
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.grad_clip if self.grad_clip and self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        with torch.no_grad():  # CLIP clamps the learned temperature so logits stay <= 100
            self.model_core().clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if self.ema is not None:
            self.ema.update()
        return {"loss": loss.item(), "grad_norm": float(grad_norm)}

    def model_core(self):
        """The CLIP4Clip module (unwrapped from DistributedDataParallel if wrapped)."""
        return getattr(self.model, "module", self.model)

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        start = self.state.step_in_epoch
        batch_size = self.train_loader.batch_size
        self.sampler.set_epoch(epoch, start=start * batch_size)
        dataset = self.train_loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        total = start + len(self.train_loader)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", initial=start,
                   total=total, disable=not (self.progress and self.is_main), leave=False)
        losses, t0, clips = self.state.epoch_losses, time.perf_counter(), 0
        for batch in bar:
            self.skipped_videos += int(batch.get("num_broken", 0))
            for video_id, reason in batch.get("broken", ()):
                self.state.epoch_skipped[str(video_id)] = str(reason)
            if "input_ids" in batch:
                caps = self.state.epoch_captions
                caps["seen"] += len(batch["input_ids"])
                caps["cut"] += int(batch.get("num_cut", 0))
                caps["empty"] += int(batch.get("num_empty", 0))
            # A batch whose videos were all unreadable has nothing to train on; under DDP every
            # rank must then skip the step, or the others would wait for its gradients.
            if not all_ranks_true(not batch.get("empty", False), self.device):
                self.state.step_in_epoch += 1  # consumed: a resumed run must not see it again
                continue
            stats = self.train_step(batch)
            self.state.step += 1
            self.state.step_in_epoch += 1
            losses.append(stats["loss"])
            clips += batch["video"].shape[0] * self.dist.world_size  # global (ranks take equal shares)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if self.state.step % self.log_every == 0:
                elapsed = time.perf_counter() - t0
                scalars = {"train/loss": stats["loss"], "train/grad_norm": stats["grad_norm"],
                           "train/logit_scale": self.model_core().clip.logit_scale.exp().item(),
                           "train/clips_per_s": clips / max(elapsed, 1e-9),
                           "train/skipped_videos": self.skipped_videos}
                for g in self.optimizer.param_groups:
                    scalars[f"lr/{g.get('name', 'group')}"] = g["lr"]
                self.logger.scalars(scalars, self.state.step)
                t0, clips = time.perf_counter(), 0
            if self.checkpoint_every_steps and self.state.step % self.checkpoint_every_steps == 0:
                self.save("last")
        mean = sum(losses) / max(len(losses), 1)
        self.state.epoch_losses = []
        return {"loss": mean}

    def _data_report(self, epoch: int) -> dict:
        """This epoch's skipped videos and caption counts over every rank, printed (skipped
        videos every epoch, caption problems once per run) and returned for the history."""
        skipped, caps = self.state.epoch_skipped, dict(self.state.epoch_captions)
        if self.dist.enabled:
            parts = gather_objects((skipped, caps))
            if parts is not None:
                skipped = {k: v for part, _ in parts for k, v in part.items()}
                caps = {k: sum(c[k] for _, c in parts) for k in caps}
        self.state.epoch_skipped = {}
        self.state.epoch_captions = {"seen": 0, "cut": 0, "empty": 0}
        if self.is_main and skipped:
            shown = "; ".join(f"{v} ({r})" for v, r in list(skipped.items())[:10])
            more = f"; ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            print(f"warning: epoch {epoch + 1}: {len(skipped)} unreadable training video(s) skipped: "
                  f"{shown}{more}", flush=True)
        if self.is_main and (caps["cut"] or caps["empty"]) and not self.state.warned_captions:
            max_words = int(self.config.get("model", {}).get("max_words", 0) or 0)
            print(f"warning: epoch {epoch + 1} trained on {caps['seen']} captions: {caps['cut']} were longer "
                  f"than model.max_words={max_words} allows and were cut to their first {max_words - 2} "
                  f"tokens; {caps['empty']} were empty (no tokens). Shown once per run; the counts of "
                  "every epoch are in metrics.json (history).", flush=True)
            self.state.warned_captions = True
        return {"skipped_videos": skipped, "captions": caps}

    def validate(self, epoch: int) -> Optional[dict]:
        if self.val_dataset is None:
            return None
        with self.averaged():
            # Every rank encodes its share; the metrics arrive on all ranks, the embeddings on rank 0.
            metrics, enc = evaluate_distributed(self.model_core(), self.val_dataset, self.dist, device=self.device,
                                                precision=self.precision, progress=self.progress and self.is_main,
                                                desc="validate", **self.eval_options)
            self.logger.metrics(metrics, self.state.step, prefix="val")
            if enc is None:
                return metrics
            if enc.frame_weights is not None:
                self.logger.histogram("val/frame_weights", enc.frame_weights[enc.frame_weights > 0], self.state.step)
            self._log_retrievals(enc, epoch)
        return metrics

    def _log_retrievals(self, enc, epoch: int) -> None:
        """For a few captions, an image of their top-5 clips so a person can see the retrievals."""
        if not (self.logger.writer and self.vis_queries):
            return
        dataset = self.val_dataset
        first_item_of = {}
        for i, vid in enumerate(getattr(dataset, "video_ids", [])):
            first_item_of.setdefault(vid, i)
        sim = similarity_matrix(enc, self.model_core(), self.precision, rows=slice(0, self.vis_queries))
        for q in range(sim.shape[0]):
            top = sim[q].topk(min(5, sim.shape[1])).indices.tolist()
            strips = []
            for row in top:
                vid = enc.video_ids[row]
                if vid not in first_item_of:
                    return  # dataset cannot map ids back to items: skip the picture
                item = dataset[first_item_of[vid]]
                video = item["video"]
                if video.dtype == torch.uint8:  # dataset built with normalize=False
                    from data.video.transforms import normalize_uint8
                    video = normalize_uint8(video)
                strips.append(frame_strip(video, torch.as_tensor(item["video_mask"])))
            gt = enc.video_ids[int(enc.text_video_index[q])]
            self.logger.image(f"retrieval/query{q}", retrieval_grid(strips), self.state.step)
            self.logger.text(f"retrieval/query{q}",
                             f"**{enc.texts[q]}** — ground truth {gt}; top-5: "
                             + ", ".join(enc.video_ids[r] for r in top), self.state.step)

    def fit(self) -> dict:
        """Train from ``self.state`` to ``self.epochs``; returns the state as a dict."""
        try:
            self._fit()
        finally:  # a run that ends inside the hold leaves no parameter frozen behind it
            for g in self.optimizer.param_groups:
                if g.get("hold_steps"):
                    for p in g["params"]:
                        p.requires_grad_(True)
            self._frozen_groups = None
        return asdict(self.state)

    def _fit(self) -> None:
        for epoch in range(self.state.epoch, self.epochs):
            t0 = time.perf_counter()
            train_stats = self.train_epoch(epoch)
            self.state.epoch = epoch + 1
            self.state.step_in_epoch = 0
            record = {"epoch": epoch + 1, "step": self.state.step, "train_loss": train_stats["loss"],
                      "epoch_time_s": time.perf_counter() - t0, **self._data_report(epoch)}
            metrics = None
            last = epoch + 1 == self.epochs
            # While a tower is held (random and fixed) the validation score picks no checkpoint
            # worth keeping; skipping it saves the demo ~10 s. The last epoch is always scored.
            held = bool(held_groups(self.optimizer, self.state.step))
            if last or ((epoch + 1) % self.eval_every == 0 and not held):
                metrics = self.validate(epoch)
            elif self.is_main:
                why = (f"; validation starts once the text tower is released at step "
                       f"{max(int(g.get('hold_steps', 0)) for g in self.optimizer.param_groups)}" if held else "")
                print(f"epoch {epoch + 1}/{self.epochs}  train loss {train_stats['loss']:.4f}  "
                      f"({record['epoch_time_s']:.1f}s){why}", flush=True)
            if metrics is not None:
                record["val"] = metrics
                score = monitor_value(metrics, self.monitor)
                if self.is_main:
                    print(f"\nepoch {epoch + 1}/{self.epochs}  train loss {train_stats['loss']:.4f}  "
                          f"({record['epoch_time_s']:.1f}s)\n{format_table(metrics)}", flush=True)
                improved = score > self.state.best_score
                if improved:
                    self.state.best_score, self.state.best_epoch = score, epoch + 1
            else:
                improved = self.val_dataset is None  # no validation: the latest is the best we know
                if improved:
                    self.state.best_epoch = epoch + 1
            self.state.history.append(record)
            self.save_epoch_end(improved)
            self.logger.scalars({"train/epoch_loss": train_stats["loss"]}, self.state.step)
            self.logger.flush()
