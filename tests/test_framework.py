"""Framework: configs compose, a tiny run trains/evaluates/resumes, bad input fails early."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from clip4clip.weights import build_model
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.engine import trainer as trainer_mod
from clip4clip.engine.saving import load_checkpoint
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.train_job import run_training
from framework_utils import CONFIGS, REPO, compose_cfg, tiny_train_overrides

GROUP_DIRS = [p for p in CONFIGS.iterdir() if p.is_dir()]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


def _choices(group):
    folder = CONFIGS / ("model/head" if group == "head" else group)
    return sorted(p.stem for p in folder.glob("*.yaml"))


@pytest.mark.parametrize("experiment", _choices("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    head = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:3]
    command = next(line for line in head if line.startswith("# python"))
    assert f"+experiment={experiment}" in command
    # Experiments are run by the entry point their first lines name (training or evaluation).
    entry = "evaluate" if "evaluate.py" in command else "train"
    extra = [o for o in command.split()[3:] if "=" in o and not o.startswith("+experiment")]
    extra = [o.split("=")[0] + "=/tmp/x.pt" if "<" in o else o for o in extra]
    cfg = compose_cfg(entry, [f"+experiment={experiment}", f"paths.output_dir={tmp_path}", *extra])
    OmegaConf.resolve(cfg)
    assert cfg.model.head.name and cfg.dataset.name
    if entry == "train":
        assert cfg.optim.lr > 0


@pytest.mark.parametrize("group", ["dataset", "head", "optim", "trainer", "adapter", "model"])
def test_every_config_group_choice_composes(group, tmp_path):
    target = "model/head" if group == "head" else group
    for choice in _choices(group):
        cfg = compose_cfg("train", [f"{target}={choice}", f"paths.output_dir={tmp_path}"])
        OmegaConf.resolve(cfg)


@pytest.mark.parametrize("head", _choices("head"))
def test_every_head_builds_on_a_pretrained_file_and_on_random_weights(head, tmp_path):
    # The pretrained path: a tiny CLIP saved to a file stands in for ViT-B/32.
    clip = CLIP(CLIPConfig(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                           vision_patch_size=16, context_length=77, vocab_size=100,
                           transformer_width=64, transformer_layers=4))
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    # TS2-Net's token shift goes in vision blocks that exist (its 10, 11 are ViT-B/32's)
    fit = ["model.head.shift_blocks=[0]"] if head == "ts2net" else []
    cfg = compose_cfg("train", [f"model/head={head}", f"model.clip.pretrained={tmp_path / 'clip.pt'}",
                                f"paths.output_dir={tmp_path}", *fit])
    model = build_model(cfg.model)
    if head in ("seqTransf", "frameweight"):  # initialised from the text tower, as CLIP4Clip
        assert torch.equal(model.head.transformer.resblocks[0].attn.in_proj_weight,
                           clip.state_dict()["transformer.resblocks.0.attn.in_proj_weight"])
    video = torch.randn(2, 3, 3, 32, 32)
    if model.two_tower:
        assert model.encode_video(video, torch.ones(2, 3)).shape == (2, 64)
    else:  # pair heads have no video embedding: they score pairs (tests/test_pair_heads.py)
        frames = model.video_features(video, torch.ones(2, 3))
        ids = torch.tensor([[98, 5, 6, 99, 0], [98, 7, 99, 0, 0], [98, 99, 0, 0, 0], [98, 4, 4, 4, 99]])
        text = model.text_features(ids, (ids > 0).long())
        assert model.score(text, frames, torch.ones(2, 3), text_mask=(ids > 0).long()).shape == (4, 2)
    tiny = compose_cfg("train", ["model=tiny", f"model/head={head}", f"paths.output_dir={tmp_path}", *fit])
    assert build_model(tiny.model, vocab_size=50).clip.config.vocab_size == 50


def test_unknown_experiment_and_key_are_refused(tmp_path):
    with pytest.raises(ConfigCompositionException, match="nope"):
        compose_cfg("train", ["+experiment=nope"])
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_cfg("train", ["trainer.no_such_key=1"])


def test_train_evaluate_resume_end_to_end(tmp_path, synth_root):
    out = tmp_path / "run"
    metrics, objs = run_training(compose_cfg("train", tiny_train_overrides(out, synth_root)))
    for name in ("last.pt", "best.pt"):
        assert (out / "checkpoints" / name).is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["test"]) == {"t2v", "v2t"} and "MdR" in saved["test"]["t2v"]
    assert len(saved["history"]) == 2 and "val" in saved["history"][0]
    assert (out / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/grad_norm", "train/logit_scale", "train/clips_per_s",
                "lr/clip", "lr/new", "val/t2v/R1", "val/v2t/MnR", "test/t2v/R1"):
        assert tag in scalars, tag
    assert "retrieval/query0" in events.Tags()["images"]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["config"]["trainer"]["epochs"] == 2 and ckpt["state"]["epoch"] == 2
    assert ckpt["tokenizer"]["kind"] == "word"

    # evaluate.py on our checkpoint reproduces the test metrics of the best checkpoint,
    # whatever the evaluation batch size.
    for bs in (3, 16):
        ev_cfg = compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                                          f"paths.output_dir={tmp_path / f'eval{bs}'}",
                                          f"trainer.eval_batch_size={bs}", "trainer.progress=false"])
        result, _ = run_evaluation(ev_cfg, overrides=[f"trainer.eval_batch_size={bs}"])
        assert result["checkpoint_kind"] == "ours"
        for d in ("t2v", "v2t"):
            for k in ("R1", "R5", "R10", "MdR", "MnR"):
                assert result["metrics"][d][k] == pytest.approx(metrics["test"][d][k]), (bs, d, k)
        assert json.loads((tmp_path / f"eval{bs}" / "metrics.json").read_text())["num_texts"] == 16


def test_frameweight_run_logs_frame_weight_histogram(tmp_path, synth_root):
    out = tmp_path / "fw"
    run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, ["model/head=frameweight", "trainer.epochs=1"])))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "val/frame_weights" in events.Tags()["histograms"]


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_interrupted_then_resumed_run_ends_with_identical_weights(tmp_path, synth_root, monkeypatch, ema):
    extra = ["trainer.checkpoint_every_steps=1", "trainer.tensorboard=false"] + (["trainer.ema_decay=0.9"] if ema else [])
    full_out = tmp_path / "full"
    run_training(compose_cfg("train", tiny_train_overrides(full_out, synth_root, extra)))
    full = load_checkpoint(full_out / "checkpoints" / "last.pt")

    # Kill the second run in the middle of epoch 2 (step 5 of 6), then resume from its folder.
    part_out = tmp_path / "part"
    original = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def dying_step(self, batch):
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_training(compose_cfg("train", tiny_train_overrides(part_out, synth_root, extra)))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    mid = load_checkpoint(part_out / "checkpoints" / "last.pt")
    assert mid["state"]["step"] == 4 and mid["state"]["epoch"] == 1 and mid["state"]["step_in_epoch"] == 1

    run_training(compose_cfg("train", tiny_train_overrides(part_out, synth_root, extra + [f"trainer.resume={part_out}"])))
    resumed = load_checkpoint(part_out / "checkpoints" / "last.pt")
    assert resumed["state"]["step"] == full["state"]["step"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert resumed["optimizer"]["state"].keys() == full["optimizer"]["state"].keys()
    assert ("ema" in full) == ema
    if ema:  # the weight average continues where it stopped, not from the resumed weights
        assert int(resumed["ema"]["updates"]) == int(full["ema"]["updates"]) == full["state"]["step"]
        for k, v in full["ema"]["weights"].items():
            assert torch.equal(v, resumed["ema"]["weights"][k]), k


def test_weight_average_is_what_is_validated_kept_as_best_and_tested(tmp_path, synth_root):
    out = tmp_path / "ema"
    metrics, objs = run_training(compose_cfg("train", tiny_train_overrides(
        out, synth_root, ["trainer.ema_decay=0.9", "trainer.epochs=1", "trainer.tensorboard=false"])))
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["state"]["epoch"] == 1 and "ema" not in best
    differs = [k for k, v in last["model"].items() if not torch.equal(v, last["ema"]["weights"][k])]
    assert differs, "the average equals the raw weights: it was never averaged"
    for k, v in last["ema"]["weights"].items():
        assert torch.equal(best["model"][k], v), k
    # The final test ran on the averaged weights: evaluating best.pt again gives the same numbers.
    again, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                                                        f"paths.output_dir={tmp_path / 'eval'}", "trainer.progress=false"]))
    for k in ("R1", "R5", "R10", "MdR", "MnR"):
        assert again["metrics"]["t2v"][k] == pytest.approx(metrics["test"]["t2v"][k]), k


def test_weight_average_decay_is_checked_and_resume_across_ema_settings_is_refused(tmp_path, synth_root):
    with pytest.raises(ValueError, match="trainer.ema_decay=1.5"):
        run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "bad", synth_root, ["trainer.ema_decay=1.5"])))
    out = tmp_path / "plain"
    run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, ["trainer.epochs=1", "trainer.tensorboard=false"])))
    with pytest.raises(ValueError, match="no weight average"):
        run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, [
            "trainer.epochs=2", "trainer.tensorboard=false", "trainer.ema_decay=0.9", f"trainer.resume={out}"])))


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, synth_root, monkeypatch):
    out = tmp_path / "nan"
    original = trainer_mod.Trainer.train_step

    def poisoned(self, batch):
        if self.state.step == 4:
            with torch.no_grad():
                self.model.clip.visual.proj.fill_(float("nan"))
        return original(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", poisoned)
    with pytest.raises(trainer_mod.NonFiniteLossError, match="step 4") as info:
        run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, ["trainer.tensorboard=false"])))
    assert "last.pt" in str(info.value)
    good = load_checkpoint(out / "checkpoints" / "last.pt")
    assert good["state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_resume_with_another_model_is_refused(tmp_path, synth_root):
    out = tmp_path / "a"
    run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, ["trainer.epochs=1", "trainer.tensorboard=false"])))
    with pytest.raises(ValueError, match="different model"):
        run_training(compose_cfg("train", tiny_train_overrides(
            tmp_path / "b", synth_root, [f"trainer.resume={out}", "model/head=meanP"])))


def test_missing_dataset_and_unwritable_output_fail_before_work(tmp_path):
    cfg = compose_cfg("train", ["dataset=msrvtt9k", f"dataset.root={tmp_path / 'nowhere'}",
                                f"paths.output_dir={tmp_path / 'out'}", "model=tiny"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_training(cfg)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = compose_cfg("train", ["model=tiny", f"paths.output_dir={blocker / 'sub'}"])
    with pytest.raises(PermissionError, match="not writable"):
        run_training(cfg)
    cfg = compose_cfg("train", ["model=tiny", f"paths.output_dir={tmp_path}", "trainer.epochs=0"])
    with pytest.raises(ValueError, match="trainer.epochs"):
        run_training(cfg)
    cfg = compose_cfg("train", ["model=tiny", f"paths.output_dir={tmp_path}", "optim.hold_text_steps=-5"])
    with pytest.raises(ValueError, match="optim.hold_text_steps"):
        run_training(cfg)


def test_random_init_options_set_position_table_and_logit_scale():
    cfg = OmegaConf.to_container(compose_cfg("train", ["+experiment=demo"]).model, resolve=True)
    cfg["clip"].update(vision_pos_init_std=1.0, logit_scale_init=50)
    model = build_model(cfg, vocab_size=30)
    assert model.logit_scale.exp().item() == pytest.approx(50, rel=1e-5)
    assert 0.9 < model.clip.visual.positional_embedding.std().item() < 1.1
    cfg["clip"].update(vision_pos_init_std=None, logit_scale_init=None)
    model = build_model(cfg, vocab_size=30)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)
    assert model.clip.visual.positional_embedding.std().item() < 0.2
    cfg["clip"]["logit_scale_init"] = 1000
    with pytest.raises(ValueError, match="logit_scale_init"):
        build_model(cfg, vocab_size=30)


def test_evaluate_official_checkpoint_and_zero_shot_clip(tmp_path, synth_root, reference_dir, bpe_vocab_path):
    # The reference checkpoints are built on a 32px CLIP, so they run on the synthetic clips.
    from data import ensure_synthetic_dataset
    ensure_synthetic_dataset(synth_root, progress=False, num_train=48, num_val=16, num_test=16)
    common = ["dataset=synthetic", f"dataset.root={synth_root}", "dataset.generator.num_train=48",
              "dataset.generator.num_val=16", "dataset.generator.num_test=16", "dataset.max_frames=4",
              f"model.bpe_vocab={bpe_vocab_path}", "trainer.progress=false"]
    for ckpt, kind in ((reference_dir / "clip4clip_seqTransf_official_ckpt.bin", "official"),
                       (reference_dir / "clip_tiny_openai_state_dict.pt", "clip")):
        cfg = compose_cfg("evaluate", [f"checkpoint={ckpt}", f"paths.output_dir={tmp_path / kind}", *common])
        result, objs = run_evaluation(cfg)
        assert result["checkpoint_kind"] == kind and result["num_texts"] == 16
        assert 0 <= result["metrics"]["t2v"]["R1"] <= 100
    assert type(objs["model"].head).__name__ == "MeanPooling"
    bad = tmp_path / "bad.bin"
    torch.save({"foo": torch.zeros(1)}, bad)
    cfg = compose_cfg("evaluate", [f"checkpoint={bad}", f"paths.output_dir={tmp_path / 'bad'}", *common])
    with pytest.raises(ValueError, match="none of"):
        run_evaluation(cfg)


@pytest.mark.slow
def test_command_line_entry_points(tmp_path, synth_root):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    out = tmp_path / "cli"
    args = [a for a in tiny_train_overrides(out, synth_root, ["trainer.epochs=1"]) if not a.startswith("paths.")]
    proc = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "R@1" in proc.stdout and (out / "metrics.json").is_file()
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "config.yaml").is_file()

    proc = subprocess.run([sys.executable, "evaluate.py", f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                           f"hydra.run.dir={tmp_path / 'ev'}", "trainer.progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "t2v" in proc.stdout

    proc = subprocess.run([sys.executable, "train.py", "dataset=msrvtt9k", f"dataset.root={tmp_path / 'none'}",
                           "model=tiny", f"hydra.run.dir={tmp_path / 'x'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error:" in proc.stderr and "none" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_adapter_run_prints_exact_parameter_count_and_saves_small_checkpoints(tmp_path, synth_root, capsys):
    out = tmp_path / "aim"
    extra = ["model/head=meanP", "adapter=aim_temporal", "trainer.epochs=1", "trainer.tensorboard=false"]
    metrics, objs = run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, extra)))
    model = objs["model"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 1 layer x 1 adapter kind x (2*32*8 + 8 + 32) + 4 frames x 32 (temporal embedding)
    assert trainable == 1 * (2 * 32 * 8 + 8 + 32) + 4 * 32
    assert f"(exactly {trainable} of " in capsys.readouterr().out
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    # A random-init base cannot be rebuilt from the config: the whole model is saved.
    assert ckpt["weights"] == "full"
    # Adapters on a base evaluate.py can rebuild (model.init_checkpoint) save only themselves.
    base = tmp_path / "base"
    run_training(compose_cfg("train", tiny_train_overrides(base, synth_root, ["model/head=meanP", "trainer.epochs=1",
                                                                              "trainer.tensorboard=false"])))
    out = tmp_path / "aim2"
    extra = extra + [f"model.init_checkpoint={base / 'checkpoints' / 'best.pt'}"]
    metrics, objs = run_training(compose_cfg("train", tiny_train_overrides(out, synth_root, extra)))
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    assert ckpt["weights"] == "trainable" and len(ckpt["model"]) < 10
    # evaluate.py rebuilds the base from the config and loads the adapter weights onto it
    ev = compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}", f"paths.output_dir={tmp_path / 'ev'}",
                                  "trainer.progress=false"])
    result, _ = run_evaluation(ev)
    assert result["metrics"]["t2v"]["R1"] == pytest.approx(metrics["test"]["t2v"]["R1"])


def test_aim_experiment_names_missing_dataset_and_missing_weights(tmp_path, synth_root, monkeypatch):
    cfg = compose_cfg("train", ["+experiment=aim_msrvtt7k", f"dataset.root={tmp_path / 'msrvtt'}",
                                f"paths.output_dir={tmp_path / 'o1'}"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "msrvtt")):
        run_training(cfg)
    from clip4clip.weights import clip_weights as pretrained_mod
    monkeypatch.setattr(pretrained_mod, "_BASE_URL", "http://127.0.0.1:9")  # refused, as offline
    cfg = compose_cfg("train", ["+experiment=aim_msrvtt7k", "dataset=synthetic", f"dataset.root={synth_root}",
                                "dataset.generator.num_train=48", "dataset.generator.num_val=16",
                                "dataset.generator.num_test=16", "dataset.cache_frames=false",
                                f"model.clip.cache_dir={tmp_path / 'cache'}", "model.tokenizer=word",
                                f"paths.output_dir={tmp_path / 'o2'}", "trainer.progress=false"])
    with pytest.raises(Exception) as info:
        run_training(cfg)
    assert "ViT-B-32.pt" in str(info.value) and str(tmp_path / "cache") in str(info.value)


def test_evaluation_refuses_missing_videos_unless_allowed_and_then_reports_them(tmp_path, synth_root, reference_dir,
                                                                                 bpe_vocab_path):
    import csv
    import shutil

    from data import ensure_synthetic_dataset
    ensure_synthetic_dataset(synth_root, progress=False, num_train=48, num_val=16, num_test=16)
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    with open(root / "MSRVTT_JSFUSION_test.csv") as f:
        victim = next(csv.DictReader(f))["video_id"]
    (root / "videos" / f"{victim}.mp4").unlink()
    common = [f"checkpoint={reference_dir / 'clip4clip_meanP_official_ckpt.bin'}", "dataset=synthetic",
              f"dataset.root={root}", "dataset.generator.num_train=48", "dataset.generator.num_val=16",
              "dataset.generator.num_test=16", "dataset.max_frames=4", f"model.bpe_vocab={bpe_vocab_path}",
              "trainer.progress=false"]
    with pytest.raises(FileNotFoundError, match=victim):
        run_evaluation(compose_cfg("evaluate", [*common, f"paths.output_dir={tmp_path / 'a'}"]))
    with warnings.catch_warnings():  # the dataset warns about the missing video; checked below
        warnings.simplefilter("ignore")
        result, _ = run_evaluation(compose_cfg("evaluate", [*common, "dataset.allow_missing=true",
                                                            f"paths.output_dir={tmp_path / 'b'}"]))
    assert result["missing_videos"] == [victim] and result["num_texts"] == 15


def test_no_validation_while_the_text_tower_is_held_but_always_at_the_end(tmp_path, synth_root, capsys):
    # The tiny run has 6 steps in 2 epochs: a hold of 4 steps covers epoch 1 only.
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        tmp_path / "held", synth_root, ["optim.hold_text_steps=4", "trainer.tensorboard=false"])))
    assert ["val" in h for h in metrics["history"]] == [False, True]
    assert "validation starts once the text tower is released at step 4" in capsys.readouterr().out
    # Held for the whole run: the last epoch is still scored and kept as best.
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        tmp_path / "all", synth_root, ["optim.hold_text_steps=100", "trainer.tensorboard=false"])))
    assert ["val" in h for h in metrics["history"]] == [False, True] and metrics["best_epoch"] == 2
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        tmp_path / "free", synth_root, ["optim.hold_text_steps=0", "trainer.tensorboard=false"])))
    assert ["val" in h for h in metrics["history"]] == [True, True]
