"""No file a user hands us runs code: crafted pickles on every entry point that reads weights,
TorchScript archives taken apart without torch.jit, and one-line errors for broken files."""
import builtins
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from clip4clip.weights import CheckpointReadError, read_torch_file
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.weights import load_clip
from clip4clip.weights.torchscript import read_torchscript_state_dict
from clip4clip.engine.saving import FORMAT
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.train_job import run_training
from framework_utils import REPO, compose_cfg, tiny_train_overrides


class _Payload:
    """Unpickling this calls open(marker, 'w'): creates the marker file, i.e. runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _torchscript_with_payload(path, marker):
    """A real TorchScript archive whose data.pkl is replaced by the payload."""
    torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(path) + ".orig")
    with zipfile.ZipFile(str(path) + ".orig") as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps({"visual.proj": _Payload(marker)}, protocol=2)
            dst.writestr(info.filename, data)


def _crafted_files(folder):
    """name -> (file, marker) for each way a checkpoint can carry code."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in ("pickle", "torch_zip", "official_keys", "ours", "torchscript"):
        path, marker = folder / f"{kind}.pt", folder / f"{kind}.MARKER"
        if kind == "pickle":
            path.write_bytes(pickle.dumps(_Payload(marker)))
        elif kind == "torch_zip":
            torch.save(_Payload(marker), path)
        elif kind == "official_keys":
            torch.save({"clip.visual.proj": torch.zeros(2), "clip.x": _Payload(marker)}, path)
        elif kind == "ours":
            torch.save({"format": FORMAT, "model": {}, "rng": _Payload(marker)}, path)
        else:
            _torchscript_with_payload(path, marker)
        files[kind] = (path, marker)
    return files


def test_the_payload_really_runs_code_under_plain_unpickling(tmp_path):
    path, marker = _crafted_files(tmp_path)["pickle"]
    with open(path, "rb") as f:
        pickle.load(f)  # what torch.load(weights_only=False) would do
    assert marker.exists()


def test_read_torch_file_refuses_every_crafted_file_without_running_it(tmp_path):
    for kind, (path, marker) in _crafted_files(tmp_path).items():
        with pytest.raises(CheckpointReadError) as info:
            read_torch_file(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (kind, message)
        assert not marker.exists(), kind
    # The refusal says why: the global it asked for, or that it is no torch.save file.
    with pytest.raises(CheckpointReadError, match=r"io\.open"):
        read_torch_file(tmp_path / "torch_zip.pt")
    with pytest.raises(CheckpointReadError, match="not a file written by torch.save"):
        read_torch_file(tmp_path / "pickle.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (its config is reused to point the entry points at crafted files)."""
    root = tmp_path_factory.mktemp("safety")
    out = root / "run"
    run_training(compose_cfg("train", tiny_train_overrides(out, root / "synthetic",
                                                           ["trainer.epochs=1", "trainer.tensorboard=false"])))
    return {"out": out, "data": root / "synthetic"}


def test_no_entry_point_runs_code_from_a_checkpoint(tmp_path, trained):
    files = _crafted_files(tmp_path / "crafted")
    for kind, (path, marker) in files.items():
        # evaluate.py checkpoint=
        with pytest.raises(ValueError, match=str(path)):
            run_evaluation(compose_cfg("evaluate", [f"checkpoint={path}", f"paths.output_dir={tmp_path / 'ev'}"]))
        # train.py trainer.resume= and model.init_checkpoint=
        for key in ("trainer.resume", "model.init_checkpoint"):
            cfg = compose_cfg("train", tiny_train_overrides(tmp_path / f"tr-{kind}", trained["data"],
                                                            [f"{key}={path}", "trainer.epochs=1"]))
            with pytest.raises(ValueError, match=str(path)):
                run_training(cfg)
        # python -m clip4clip.search index --checkpoint
        from clip4clip.search.encoder import Encoder
        with pytest.raises(ValueError, match=str(path)):
            Encoder.load(str(path))
        assert not marker.exists(), kind


def test_command_lines_print_one_line_and_exit_2_for_a_crafted_checkpoint(tmp_path, trained):
    path, marker = _crafted_files(tmp_path)["torch_zip"]
    env = {**os.environ, "CLIP4CLIP_TRACEBACK": ""}
    runs = {
        "evaluate": [sys.executable, "evaluate.py", f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'e'}"],
        "resume": [sys.executable, "train.py", *tiny_train_overrides(tmp_path / "r", trained["data"]),
                   f"trainer.resume={path}", f"hydra.run.dir={tmp_path / 'r'}"],
        "init": [sys.executable, "train.py", *tiny_train_overrides(tmp_path / "i", trained["data"]),
                 f"model.init_checkpoint={path}", f"hydra.run.dir={tmp_path / 'i'}"],
        "search": [sys.executable, "-m", "clip4clip.search", "index", "--checkpoint", str(path),
                   "--videos", str(tmp_path), "--out", str(tmp_path / "index")],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert len(lines) == 1 and str(path) in lines[0] and "io.open" in lines[0], (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, name
        assert not marker.exists(), name


def test_our_checkpoints_load_with_weights_only(trained):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(trained["out"] / "checkpoints" / name, weights_only=True)
        assert ckpt["format"] == FORMAT
    last = torch.load(trained["out"] / "checkpoints" / "last.pt", weights_only=True)
    assert set(last["rng"]) >= {"python", "numpy", "torch"} and "optimizer" in last


def test_best_checkpoint_holds_only_what_evaluation_needs(trained):
    ckpts = trained["out"] / "checkpoints"
    best = torch.load(ckpts / "best.pt", weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)
    assert {"model", "model_args", "tokenizer", "config"} <= set(best)
    # AdamW keeps two moments per weight: last.pt is about three times best.pt.
    assert (ckpts / "last.pt").stat().st_size > 2.5 * (ckpts / "best.pt").stat().st_size


def test_older_checkpoints_with_numpy_rng_state_still_load(tmp_path, trained):
    import numpy as np
    ckpt = torch.load(trained["out"] / "checkpoints" / "last.pt", weights_only=True)
    ckpt["rng"]["numpy"] = np.random.get_state()  # how checkpoints stored it before
    torch.save(ckpt, tmp_path / "old.pt")
    assert isinstance(read_torch_file(tmp_path / "old.pt")["rng"]["numpy"][1], np.ndarray)


# ---- TorchScript archives ----------------------------------------------------------------------


def _tiny_clip():
    return CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32,
                           vision_patch_size=8, context_length=8, vocab_size=50, transformer_width=32,
                           transformer_heads=2, transformer_layers=1))


class _Released(torch.nn.Module):
    """OpenAI's archives: CLIP's modules plus three int buffers, float16, and (text tower) a
    plain tensor attribute ``attn_mask`` that is not part of the state dict."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, p in clip.named_parameters(recurse=False):
            self.register_parameter(name, p)
        self.register_buffer("input_resolution", torch.tensor(16))
        self.attn_mask = torch.ones(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * x + self.attn_mask.sum()


@pytest.mark.parametrize("how", ["trace", "script_attr"])
def test_torchscript_reader_equals_torch_jit_state_dict(tmp_path, how):
    model = _Released(_tiny_clip()).half()
    path = tmp_path / "ts.pt"
    if how == "trace":
        torch.jit.trace(model, torch.ones(1, dtype=torch.float16)).save(str(path))
    else:  # scripting keeps attn_mask as an attribute, not a buffer
        class Holder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = torch.nn.Linear(2, 2).half()
                self.attn_mask = torch.zeros(4)

            def forward(self, x):
                return self.inner(x) + self.attn_mask.sum()
        torch.jit.script(Holder()).save(str(path))
    ref = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_state_dict(path)
    assert list(got) and sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_torchscript_clip_weights_load_without_torch_jit(tmp_path, monkeypatch):
    clip = _tiny_clip()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(_Released(clip).half(), torch.ones(1, dtype=torch.float16)).save(str(path))

    def refuse(*a, **k):
        raise AssertionError("torch.jit.load must not be used on a user's file")

    monkeypatch.setattr(torch.jit, "load", refuse)
    loaded = load_clip(path)
    ref = clip.half().float().state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_truncated_torchscript_archive_is_one_line(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(path))
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:  # drop one storage: names a missing record
        names = zf.namelist()
    with zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst, zipfile.ZipFile(path) as src:
        for n in names:
            if "/data/0" not in n:
                dst.writestr(n, src.read(n))
    with pytest.raises(CheckpointReadError) as info:
        read_torch_file(tmp_path / "cut.pt")
    assert str(tmp_path / "cut.pt") in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="half.pt"):
        read_torch_file(tmp_path / "half.pt")


# ---- broken checkpoints: one line naming the file and what was expected -----------------------


def test_broken_checkpoints_name_the_file_and_key(tmp_path, trained):
    best = trained["out"] / "checkpoints" / "best.pt"
    data = best.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 3], "random.pt": os.urandom(4096), "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    ckpt = torch.load(best, weights_only=True)
    key = "clip.visual.proj"
    ckpt["model"][key] = torch.zeros(3, 5)
    torch.save(ckpt, tmp_path / "shape.pt")
    lost = dict(ckpt)
    del lost["model_args"]
    torch.save(lost, tmp_path / "field.pt")
    for name in [*cases, "shape.pt", "field.pt"]:
        cfg = compose_cfg("evaluate", [f"checkpoint={tmp_path / name}", f"paths.output_dir={tmp_path / 'ev'}"])
        with pytest.raises(ValueError) as info:
            run_evaluation(cfg)
        message = str(info.value)
        assert str(tmp_path / name) in message and "\n" not in message, (name, message)
    with pytest.raises(ValueError, match=r"clip\.visual\.proj is \[3, 5\] in the file"):
        run_evaluation(compose_cfg("evaluate", [f"checkpoint={tmp_path / 'shape.pt'}",
                                                f"paths.output_dir={tmp_path / 'ev'}"]))
    with pytest.raises(ValueError, match="model_args"):
        run_evaluation(compose_cfg("evaluate", [f"checkpoint={tmp_path / 'field.pt'}",
                                                f"paths.output_dir={tmp_path / 'ev'}"]))
