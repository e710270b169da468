"""Unit tests of the engine's parts: atomic checkpoints, sampler, optimiser groups, schedule."""
import math

import pytest
import torch

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.engine.saving import atomic_save, resolve_resume_path
from clip4clip.engine.optim import build_optimizer, build_scheduler, param_groups, pretrained_names, text_tower_names
from clip4clip.engine.sampler import EpochSampler
from clip4clip.model import CLIP4Clip


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_save({"step": 2, "bad": Boom()}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_resume_path_accepts_run_folder_and_names_what_is_missing(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="last.pt"):
        resolve_resume_path(tmp_path)
    atomic_save({}, tmp_path / "checkpoints" / "last.pt")
    assert resolve_resume_path(tmp_path).name == "last.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_resume_path(tmp_path / "nope.pt")


def test_sampler_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    s = EpochSampler(20, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(full) == list(range(20))
    s.set_epoch(0)
    assert list(s) != full
    s.set_epoch(1, start=8)
    assert list(s) == full[8:] and len(s) == 12


def test_sampler_blocks_stay_together():
    s = EpochSampler(16, seed=0, shuffle_block=4)
    s.set_epoch(2)
    order = list(s)
    for i in range(0, 16, 4):
        block = order[i:i + 4]
        assert block[0] % 4 == 0 and block == list(range(block[0], block[0] + 4))
    assert order != list(range(16))


def test_sampler_shards_ranks_disjointly_with_equal_lengths():
    shards = []
    for rank in range(2):
        s = EpochSampler(10, seed=1, rank=rank, world_size=2, shuffle_block=2)
        s.set_epoch(0)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(shards[0]) | set(shards[1]) == set(range(10))
    assert not set(shards[0]) & set(shards[1])


def _model(head="seqTransf"):
    cfg = CLIPConfig(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=32, vision_patch_size=8,
                     context_length=8, vocab_size=20, transformer_width=32, transformer_heads=2, transformer_layers=1)
    kw = {"num_blocks": 1} if head == "seqTransf" else {}
    return CLIP4Clip.from_clip(CLIP(cfg), head, init_head_from_clip=False, **kw)


def test_param_groups_split_clip_and_new_modules_and_skip_decay_on_norms_and_embeddings():
    model = _model()
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)}
    assert groups["clip"]["lr"] == pytest.approx(1e-7) and groups["new"]["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]}
    assert "clip.logit_scale" in no_decay and "clip.token_embedding.weight" in no_decay
    assert "head.frame_position_embeddings.weight" in no_decay and "clip.ln_final.weight" in no_decay
    decay = {names[id(p)] for g in groups.values() if g["weight_decay"] > 0 for p in g["params"]}
    assert "clip.visual.conv1.weight" in decay and "head.transformer.resblocks.0.mlp.c_fc.weight" in decay
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_injected_adapters_are_new_modules_not_clip_weights():
    import adapters
    model = _model("meanP")
    adapters.inject_aim(model.clip.visual, num_frames=4)
    adapters.configure_trainable(model)
    pre = pretrained_names(model)
    assert not any("adapter" in n for n in pre)
    groups = param_groups(model, lr=3e-4, coef_lr=1e-3, weight_decay=0.05)
    assert {g["name"] for g in groups} <= {"new", "new_no_decay"}  # frozen CLIP is left out


def test_held_text_tower_stays_fixed_then_joins_the_schedule():
    model = _model("seqTransf")
    text = text_tower_names(model)
    assert "clip.token_embedding.weight" in text and "clip.ln_final.weight" in text
    assert not any(n.startswith(("clip.visual.", "head.")) for n in text) and "clip.logit_scale" not in text
    opt = build_optimizer(model, lr=1e-2, coef_lr=1.0, weight_decay=0.1, pretrained=set(), hold_text_steps=3)
    held = {id(p) for g in opt.param_groups if g.get("hold_steps") for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in text}
    sched = build_scheduler(opt, total_steps=10, warmup_proportion=0.2)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plain_sched = build_scheduler(plain, total_steps=10, warmup_proportion=0.2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1, 20, (4, 8))
    video = torch.randn(4, 3, 3, 16, 16)
    for step in range(5):
        factor = plain.param_groups[0]["lr"]
        for g in opt.param_groups:
            expected = 0.0 if g.get("hold_steps") and step < 3 else 1e-2 * factor
            assert g["lr"] == pytest.approx(expected), (step, g["name"])
        if step == 3:  # still held for the first 3 steps: text unchanged, image tower moved
            for n, p in model.named_parameters():
                moved = not torch.equal(p, before[n])
                if n in text:
                    assert not moved, n
            assert not torch.equal(model.clip.visual.conv1.weight, before["clip.visual.conv1.weight"])
        loss = model(ids, torch.ones_like(ids), video, torch.ones(4, 3, dtype=torch.long))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        plain.step()
        plain_sched.step()
    assert not torch.equal(model.clip.token_embedding.weight, before["clip.token_embedding.weight"])

class _Wrapped(torch.nn.Module):
    """Stands in for DistributedDataParallel: the core model sits in ``.module``."""

    def __init__(self, core):
        super().__init__()
        self.module = core

    def forward(self, *args):
        return self.module(*args)


@pytest.mark.parametrize("wrapped", [False, True], ids=["single", "ddp-like"])
def test_held_text_tower_gets_no_gradient_and_fresh_adam_state_at_release(tmp_path, wrapped):
    from clip4clip.engine.trainer import TrainOptions, TrainParts, Trainer
    torch.manual_seed(0)
    model = _model("seqTransf")
    text = text_tower_names(model)
    opt = build_optimizer(model, lr=1e-2, coef_lr=1.0, weight_decay=0.1, pretrained=set(), hold_text_steps=2)
    sched = build_scheduler(opt, total_steps=10, warmup_proportion=0.0, release_ramp_steps=4)
    run_model = _Wrapped(model) if wrapped else model
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(TrainParts(run_model, opt, sched, scaler, None, None), TrainOptions(epochs=1),
                      device=torch.device("cpu"), out_dir=tmp_path, config={}, extra_state={})
    params = dict(model.named_parameters())
    batch = {"input_ids": torch.randint(1, 20, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "video": torch.randn(4, 3, 3, 16, 16), "video_mask": torch.ones(4, 3, dtype=torch.long)}
    before = {n: p.detach().clone() for n, p in params.items()}
    for step in range(2):  # held: no gradient, no optimiser state, weights unchanged
        trainer.train_step(batch)
        trainer.state.step += 1
        for n in text:
            assert params[n].grad is None and params[n] not in opt.state, (step, n)
            assert torch.equal(params[n], before[n]), n
            # Under DDP the set of parameters requiring grad must stay as it was wrapped.
            assert params[n].requires_grad == wrapped, n
    assert not torch.equal(params["clip.visual.conv1.weight"], before["clip.visual.conv1.weight"])
    trainer.train_step(batch)  # released: the text tower learns, its AdamW state starts at step 1
    emb = params["clip.token_embedding.weight"]
    assert emb.requires_grad and emb.grad is not None and not torch.equal(emb, before["clip.token_embedding.weight"])
    assert float(opt.state[emb]["step"]) == 1.0


def test_released_text_tower_ramps_up_to_the_common_schedule():
    from clip4clip.engine.optim import held_groups
    model = _model("seqTransf")
    opt = build_optimizer(model, lr=1.0, coef_lr=1.0, weight_decay=0.0, pretrained=set(), hold_text_steps=3)
    sched = build_scheduler(opt, total_steps=20, warmup_proportion=0.0, release_ramp_steps=4)
    text = next(g for g in opt.param_groups if g.get("hold_steps"))
    other = next(g for g in opt.param_groups if not g.get("hold_steps"))
    seen = []
    for step in range(9):
        assert (text in held_groups(opt, step)) == (step < 3)
        seen.append(text["lr"] / other["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1])


def _schedule_lrs(total_steps, warmup_proportion, **kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=total_steps, warmup_proportion=warmup_proportion, **kwargs)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_schedule():
    # The default is CLIP4Clip's BertAdam schedule (issue 24): step i at x = i / 100, x / 0.1 in
    # the warmup (step 0 at lr 0, step 9 at 0.9, never 1), then 0.5 (1 + cos(pi x)) over the
    # whole run. Before issue 24 this test pinned ours: 0.1 at step 0, 1.0 at step 9 and the
    # cosine over the 90 steps after the warmup (now schedule_rule=continuous, below).
    lrs = _schedule_lrs(100, 0.1)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[9] == pytest.approx(0.9)
    assert lrs[10] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.10)))
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.55)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_continuous_schedule_keeps_the_old_values():
    lrs = _schedule_lrs(100, 0.1, rule="continuous")
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_weight_ema_follows_early_then_averages_and_restores_raw_weights():
    from clip4clip.engine.ema import WeightEMA
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    values = [1.0, 2.0, 3.0]
    expected = 0.0
    for n, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update()
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, then 0.18..., capped at the decay
        expected = d * expected + (1 - d) * v
    assert float(ema.weights["weight"][0, 0]) == pytest.approx(expected)
    with ema.applied():
        assert float(model.weight.detach()[0, 0]) == pytest.approx(expected)
    assert float(model.weight.detach()[0, 0]) == 3.0  # the raw weights are back after the block
    state = ema.state_dict()
    other = WeightEMA(torch.nn.Linear(2, 1), decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 3 and torch.equal(other.weights["weight"], ema.weights["weight"])
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        WeightEMA(model, decay=1.0)
