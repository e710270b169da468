"""best.pt, last.pt and metrics.json always agree: kills inside the checkpoint writes (simulated
at each boundary, and real SIGKILLs at random moments) end like an uninterrupted run; a full
disk keeps the previous checkpoint; stale temporary files are removed."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip4clip.engine import saving as ckpt_mod
from clip4clip.engine import trainer as trainer_mod
from clip4clip.engine.saving import BEST_PENDING, CheckpointWriteError, load_checkpoint
from clip4clip.engine.train_job import run_training
from framework_utils import REPO, compose_cfg, tiny_train_overrides

# Without a validation split every epoch is "the best so far": each epoch end writes the pair.
NO_VAL = ["dataset.val_split=null", "trainer.tensorboard=false", "trainer.epochs=3"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pair") / "synthetic"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("reference") / "run"
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL)))
    return {"out": out, "metrics": metrics}


def _comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between two runs (timings, folder)."""
    m = json.loads(json.dumps(metrics, default=float))
    m.pop("output_dir", None)
    for record in m["history"]:
        record.pop("epoch_time_s", None)
    return m


def _assert_same_run(out, reference):
    ref = reference["out"] / "checkpoints"
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(out / "checkpoints" / name), load_checkpoint(ref / name)
        assert a["state"]["epoch"] == b["state"]["epoch"], name
        for k, v in b["model"].items():
            assert torch.equal(a["model"][k], v), (name, k)
    assert _comparable(json.loads((out / "metrics.json").read_text())) == _comparable(reference["metrics"])
    assert not (out / "checkpoints" / BEST_PENDING).exists()
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("where", ["before_last", "before_rename"])
def test_kill_inside_the_epoch_end_writes_resumes_to_the_uninterrupted_result(tmp_path, data_root, reference,
                                                                              monkeypatch, where):
    out = tmp_path / "run"
    original_save, original_promote = trainer_mod.atomic_save, trainer_mod.promote_best
    ends = {"n": 0}

    def dying_save(obj, path):
        # Epoch 2's end: best.next.pt is written, then the kill comes before last.pt.
        if where == "before_last" and path.name == "last.pt" and obj["state"]["epoch"] == 2:
            raise KeyboardInterrupt("killed after best.next.pt")
        return original_save(obj, path)

    def dying_promote(ckpt_dir):
        ends["n"] += 1
        if where == "before_rename" and ends["n"] == 2:
            raise KeyboardInterrupt("killed after last.pt, before the rename")
        return original_promote(ckpt_dir)

    monkeypatch.setattr(trainer_mod, "atomic_save", dying_save)
    monkeypatch.setattr(trainer_mod, "promote_best", dying_promote)
    with pytest.raises(KeyboardInterrupt):
        run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL)))
    monkeypatch.undo()
    ckpts = out / "checkpoints"
    assert (ckpts / BEST_PENDING).exists()
    # The old order's failure: last.pt naming a best epoch that best.pt does not hold.
    last = load_checkpoint(ckpts / "last.pt")
    assert last["state"]["best_epoch"] == (1 if where == "before_last" else 2)
    assert load_checkpoint(ckpts / "best.pt")["state"]["epoch"] == 1

    run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL + [f"trainer.resume={out}"])))
    _assert_same_run(out, reference)


def test_resume_refuses_a_best_checkpoint_from_another_moment(tmp_path, data_root, reference):
    out = tmp_path / "run"
    import shutil
    shutil.copytree(reference["out"], out)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    best["state"]["epoch"] = 1  # as if best.pt had been left behind by an older epoch
    torch.save(best, out / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match="holds epoch 1 but"):
        run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL + [f"trainer.resume={out}"])))


def test_resume_into_a_new_folder_takes_the_best_checkpoint_along(tmp_path, data_root, reference):
    out = tmp_path / "new"
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        out, data_root, NO_VAL + [f"trainer.resume={reference['out']}"])))
    assert metrics["test"] == reference["metrics"]["test"]
    assert load_checkpoint(out / "checkpoints" / "best.pt")["state"]["epoch"] == 3


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, data_root, monkeypatch):
    out = tmp_path / "run"
    real_open = ckpt_mod._open_for_write
    calls = {"n": 0}

    def full_after_first_epoch(path):
        calls["n"] += 1
        return open("/dev/full", "wb") if calls["n"] > 2 else real_open(path)  # epoch 1: best + last

    monkeypatch.setattr(ckpt_mod, "_open_for_write", full_after_first_epoch)
    with pytest.raises(CheckpointWriteError, match="disk full") as info:
        run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL)))
    assert "\n" not in str(info.value) and "best.next.pt" in str(info.value)
    ckpts = out / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["state"]["epoch"] == 1
    assert load_checkpoint(ckpts / "best.pt")["state"]["epoch"] == 1
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path, data_root):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = ckpts / f".last.pt.tmp-{dead}-deadbeef"
    stale.write_bytes(b"x" * 1000)
    run_training(compose_cfg("train", tiny_train_overrides(out, data_root, NO_VAL + ["trainer.epochs=1"])))
    assert not stale.exists()


def test_random_sigkills_end_with_the_uninterrupted_checkpoints_and_metrics(tmp_path, data_root, reference):
    """Real SIGKILLs at random moments of a run that checkpoints every step; after each kill the
    run is resumed from its folder (or started again if nothing was saved yet)."""
    out = tmp_path / "run"
    base = [a for a in tiny_train_overrides(out, data_root, NO_VAL + ["trainer.checkpoint_every_steps=1"])
            if not a.startswith("paths.")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def command():
        resume = [f"trainer.resume={out}"] if (out / "checkpoints" / "last.pt").exists() else []
        return [sys.executable, "train.py", *base, *resume, f"hydra.run.dir={out}"]

    ckpts = out / "checkpoints"

    def kill_at_a_write(proc, target: int, inside: bool) -> bool:
        """SIGKILL ``proc`` when it starts its ``target``-th checkpoint write (a new temporary
        file appears: the kill lands inside the write) or, ``inside`` False, a random moment
        up to 0.2 s after it. False if the run ended first. Progress, not wall time, decides:
        the machine may be loaded."""
        seen, started = set(), 0
        while proc.poll() is None:
            try:
                names = os.listdir(ckpts)
            except FileNotFoundError:
                names = []
            fresh = [n for n in names if ".tmp-" in n and n not in seen]
            seen.update(fresh)
            started += len(fresh)
            if started >= target:
                if not inside:
                    time.sleep(rng.uniform(0.0, 0.2))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    return True
                return False
            time.sleep(0.001)
        return False

    rng = random.Random(1234)
    kills = 0
    for attempt in range(8):
        proc = subprocess.Popen(command(), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Each run writes ~15 checkpoints (a last.pt per step, best.next.pt + last.pt per epoch).
        kills += kill_at_a_write(proc, rng.randint(1, 5), inside=rng.random() < 0.5) if attempt < 6 else 0
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        if proc.returncode == 0:
            break
    assert kills >= 1
    if not (out / "metrics.json").exists() or proc.returncode != 0:
        final = subprocess.run(command(), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
    _assert_same_run(out, reference)
