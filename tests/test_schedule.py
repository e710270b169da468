"""The learning-rate schedule against CLIP4Clip's (issue 24, item 1): ``optim.schedule_rule=official``
(the default) gives every optimiser step the multiplier CLIP4Clip's BertAdam gives it.

The reference below is written from the official source (ArrowLuo/CLIP4Clip
``modules/optimization.py``: ``warmup_cosine`` and ``BertAdam.step``; ``main_task_retrieval.py``
passes ``schedule='warmup_cosine'``, ``warmup=args.warmup_proportion`` and
``t_total=num_train_optimization_steps``), not from ours: each parameter's ``state['step']``
starts at 0, the update's lr is computed from it, and only then is it incremented."""
from __future__ import annotations

import math

import pytest
import torch
from framework_utils import compose_cfg

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.engine.optim import (
    SCHEDULE_RULES,
    build_optimizer,
    build_scheduler,
    schedule_fn,
)
from clip4clip.model import CLIP4Clip


def bert_warmup_cosine(x: float, warmup: float = 0.002) -> float:
    """CLIP4Clip's ``warmup_cosine(x, warmup)``."""
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


class BertAdamLR:
    """The lr BertAdam applies to one parameter at each of its ``step()`` calls."""

    def __init__(self, lr: float, warmup: float, t_total: int):
        self.lr, self.warmup, self.t_total = lr, warmup, t_total
        self.state: dict = {}

    def step(self) -> float:
        if len(self.state) == 0:
            self.state["step"] = 0
        progress = self.state["step"] / self.t_total
        lr_scheduled = self.lr * bert_warmup_cosine(progress, self.warmup)
        self.state["step"] += 1
        return lr_scheduled


def _applied_lrs(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lr of every group at each optimiser step (read by a pre-step hook), stepping the
    scheduler after the optimiser as the trainer does."""
    seen = []
    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
    finally:
        handle.remove()
    return seen


# (total steps, warmup proportion): a warmup of a fractional number of steps (0.7, 2.5, 33.3),
# none, a single step, a short run, and the proportion CLIP4Clip uses on a longer run.
GRID = [(100, 0.1), (7, 0.1), (25, 0.1), (10, 0.0), (1, 0.1), (3, 0.5), (333, 0.1), (1000, 0.1), (40, 0.25)]


@pytest.mark.parametrize("total,warmup", GRID)
def test_official_schedule_is_bertadams_step_for_step(total, warmup):
    lrs = {"clip": 1e-7, "new": 1e-4}  # CLIP4Clip's two rates (lr * coef_lr for the CLIP weights)
    params = {k: torch.nn.Parameter(torch.zeros(2)) for k in lrs}
    opt = torch.optim.SGD([{"params": [params[k]], "lr": v} for k, v in lrs.items()], lr=1.0)
    sched = build_scheduler(opt, total_steps=total, warmup_proportion=warmup)
    got = _applied_lrs(opt, sched, total)
    ref = {k: BertAdamLR(v, warmup, total) for k, v in lrs.items()}
    want = [[ref[k].step() for k in lrs] for _ in range(total)]
    assert got == [pytest.approx(w, rel=1e-12, abs=1e-20) for w in want]
    assert got[0] == ([0.0, 0.0] if warmup > 0 else [1e-7, 1e-4])  # step 0 at lr 0 (none without warmup)


def test_official_and_continuous_differ_where_issue_24_says():
    official = [schedule_fn(100, 0.1)(i) for i in range(100)]
    continuous = [schedule_fn(100, 0.1, rule="continuous")(i) for i in range(100)]
    assert official[0] == 0.0 and continuous[0] == pytest.approx(0.1)  # step 0
    assert max(official) < 1.0 and continuous[9] == 1.0  # the official warmup never reaches 1
    assert official[10] == pytest.approx(0.9755, abs=1e-4) and official[10] > official[9]
    # The official cosine spans the whole run; ours the 90 steps after the warmup.
    assert official[50] == pytest.approx(0.5) and continuous[55] == pytest.approx(0.5)
    # A warmup that rounds to 0 steps: ours starts at the full lr, the official one at 0.
    assert schedule_fn(4, 0.1, rule="continuous")(0) == 1.0 and schedule_fn(4, 0.1)(0) == 0.0
    assert SCHEDULE_RULES == ("official", "continuous")
    with pytest.raises(ValueError, match=r"optim.schedule_rule='bert'; expected one of official, continuous"):
        schedule_fn(100, 0.1, rule="bert")


def test_min_lr_ratio_lifts_only_the_cosine_floor():
    fn = schedule_fn(100, 0.1, min_ratio=0.2)
    assert fn(5) == pytest.approx(0.5)  # the warmup is CLIP4Clip's
    assert fn(50) == pytest.approx(0.2 + 0.8 * 0.5) and fn(99) == pytest.approx(0.2 + 0.8 * bert_warmup_cosine(0.99, 0.1))


def _tiny_model():
    cfg = CLIPConfig(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=32, vision_patch_size=8,
                     context_length=8, vocab_size=20, transformer_width=32, transformer_heads=2, transformer_layers=1)
    return CLIP4Clip.from_clip(CLIP(cfg), "meanP", init_head_from_clip=False)


@pytest.mark.parametrize("rule", SCHEDULE_RULES)
def test_the_first_update_of_the_official_schedule_changes_nothing(rule):
    # BertAdam's step 0 runs at lr 0: weights (decay included) are as they started.
    torch.manual_seed(0)
    model = _tiny_model()
    opt = build_optimizer(model, lr=1e-3, coef_lr=1.0, weight_decay=0.2, pretrained=set())
    sched = build_scheduler(opt, total_steps=50, warmup_proportion=0.1, rule=rule)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1, 20, (4, 8))
    loss = model(ids, torch.ones_like(ids), torch.randn(4, 3, 3, 16, 16), torch.ones(4, 3, dtype=torch.long))["loss"]
    loss.backward()
    opt.step()
    sched.step()
    unchanged = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert unchanged == (rule == "official")


def test_held_text_tower_rejoins_the_official_schedule():
    model = _tiny_model()
    opt = build_optimizer(model, lr=1.0, coef_lr=1.0, weight_decay=0.0, pretrained=set(), hold_text_steps=4)
    sched = build_scheduler(opt, total_steps=20, warmup_proportion=0.25, release_ramp_steps=2)
    text = [i for i, g in enumerate(opt.param_groups) if g.get("hold_steps")]
    other = [i for i, g in enumerate(opt.param_groups) if not g.get("hold_steps")]
    ref = BertAdamLR(1.0, 0.25, 20)
    for step, lrs in enumerate(_applied_lrs(opt, sched, 20)):
        want = ref.step()
        assert all(lrs[i] == pytest.approx(want) for i in other), step
        ramp = 0.0 if step < 4 else min((step - 4 + 1) / 2, 1.0)
        assert all(lrs[i] == pytest.approx(want * ramp) for i in text), step


def test_the_training_job_uses_the_configured_rule(tmp_path):
    from clip4clip.engine.train_job import _optimisation, run_training
    cfg = compose_cfg("train", ["model=tiny", f"paths.output_dir={tmp_path}"])
    assert cfg.optim.schedule_rule == "official"
    opt_cfg = dict(cfg.optim)
    for rule in SCHEDULE_RULES:
        _, sched = _optimisation(_tiny_model(), {**opt_cfg, "schedule_rule": rule}, 30, torch.device("cpu"))
        want = schedule_fn(30, float(opt_cfg["warmup_proportion"]), rule=rule)
        assert [sched.lr_lambdas[0](i) for i in range(30)] == [want(i) for i in range(30)]
    assert sched.lr_lambdas[0](0) > 0  # continuous: not the official lr 0
    bad = compose_cfg("train", ["model=tiny", f"paths.output_dir={tmp_path}", "optim.schedule_rule=linear"])
    with pytest.raises(ValueError, match="optim.schedule_rule='linear'"):
        run_training(bad)


def test_the_trainer_runs_step_i_at_the_official_multiplier(tmp_path):
    # The trainer steps the scheduler after the optimiser: the update of step i is made at fn(i)
    # (BertAdam's lr from state['step'] before the increment), read when the optimiser steps.
    from clip4clip.engine.trainer import Trainer, TrainOptions, TrainParts
    torch.manual_seed(0)
    model = _tiny_model()
    opt = build_optimizer(model, lr=1e-3, coef_lr=1.0, weight_decay=0.2, pretrained=set())
    sched = build_scheduler(opt, total_steps=12, warmup_proportion=0.25)
    trainer = Trainer(TrainParts(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), None, None),
                      TrainOptions(epochs=1), device=torch.device("cpu"), out_dir=tmp_path, config={}, extra_state={})
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
    batch = {"input_ids": torch.randint(1, 20, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "video": torch.randn(4, 3, 3, 16, 16), "video_mask": torch.ones(4, 3, dtype=torch.long)}
    ref = BertAdamLR(1e-3, 0.25, 12)
    for _ in range(6):
        trainer.train_step(batch)
        trainer.state.step += 1
    assert seen == pytest.approx([ref.step() for _ in range(6)]) and seen[0] == 0.0
