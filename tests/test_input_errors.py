"""Inputs a user can get wrong are refused with one line naming the file, field or value
(issue 26): resume checkpoints, command-line numbers and output folders, an over-large
caption pickle, damaged .npy and FAISS files, frame-cache manifests that point elsewhere."""
import errno
import fcntl
import json
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.core.npy import NpyFormatError, read_npy_header
from clip4clip.core.safe_pickle import Budget, load_plain_pickle, loads_plain_pickle
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.resume import check_resume_checkpoint
from clip4clip.engine.saving import FORMAT, rng_state
from clip4clip.engine.train_job import run_training
from clip4clip.engine.trainer import TrainState
from clip4clip.search.__main__ import _check_head_frames, main as search_main
from data import FrameStore
from data.frames.store import cache_params, new_manifest, save_manifest, write_video_frames
from data.readers.msvd import CAPTIONS_BUDGET, load_msvd_captions
from data.video.decode import VideoReadError
from data.video.keyframes import KeyframeParams
from extract_frames import run_extraction
from framework_utils import REPO, compose_cfg, tiny_train_overrides


# ---------------------------------------------------------------------------------- resume
def _last_pt(**changes) -> dict:
    """A checkpoint with every field ``Trainer.restore`` reads, as ``Trainer.checkpoint`` writes."""
    ckpt = {"format": FORMAT, "model": {}, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {},
            "scaler": {}, "rng": rng_state(), "state": asdict(TrainState()), "config": {}}
    ckpt.update(changes)
    return ckpt


def _resume(tmp_path, ckpt_file):
    cfg = compose_cfg("train", tiny_train_overrides(tmp_path / "new", tmp_path / "no-data",
                                                    [f"trainer.resume={ckpt_file}"]))
    return run_training(cfg)


def test_resuming_from_best_pt_says_to_resume_from_last_pt(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"format": FORMAT, "contents": "eval", "model": {}, "state": {"epoch": 1}, "config": {}},
               ckpts / "best.pt")
    torch.save(_last_pt(), ckpts / "last.pt")
    with pytest.raises(ValueError) as e:
        _resume(tmp_path, ckpts / "best.pt")
    assert str(e.value) == (f"{ckpts / 'best.pt'} has no optimizer state: it is a best.pt (weights only); "
                            f"resume from {ckpts / 'last.pt'}")


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("rng"), "has no 'rng' state"),
    (lambda c: c["rng"].pop("torch"), "has no RNG state rng.torch"),
    (lambda c: c["rng"].update(torch=c["rng"]["torch"][:100]), "rng.torch is a uint8 tensor of shape (100,); expected "
                                                               "a uint8 tensor of"),
    (lambda c: c["rng"].update(torch=c["rng"]["torch"].float()), "rng.torch is a float32 tensor"),
    (lambda c: c["rng"].update(python=(3, (1, 2), None)), "rng.python is a tuple of 3; expected random.getstate()"),
    (lambda c: c["rng"]["numpy"]["state"].update(key=torch.zeros(5, dtype=torch.int64)), "rng.numpy is"),
    (lambda c: c["rng"].update(cuda=[torch.zeros(3)]), "rng.cuda is a list of 1"),
    (lambda c: c.update(scheduler=[1]), "'scheduler' is list; expected a dict"),
    (lambda c: c.update(optimizer={"state": {}}), "'optimizer' is not an optimiser state dict"),
    (lambda c: c["state"].update(epochs=3), "'state' holds unknown fields ['epochs']"),
    (lambda c: c["state"].update(step=-1), "state.step is -1; expected a whole number >= 0"),
])
def test_damaged_resume_states_are_named_before_use(tmp_path, change, message):
    ckpt = _last_pt()
    change(ckpt)
    with pytest.raises(ValueError, match="^" + str(tmp_path / "last.pt").replace("\\", "\\\\")) as e:
        check_resume_checkpoint(ckpt, tmp_path / "last.pt")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_rng_state_is_refused_before_anything_is_built(tmp_path):
    ckpt = _last_pt()
    ckpt["rng"]["torch"] = ckpt["rng"]["torch"][:-8]  # torch.set_rng_state: RuntimeError, much later
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"last.pt: rng.torch is a uint8 tensor of shape"):
        _resume(tmp_path, tmp_path / "last.pt")
    check_resume_checkpoint(_last_pt(), tmp_path / "last.pt")  # a sound one passes


def test_train_command_line_reports_best_pt_in_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"format": FORMAT, "contents": "eval", "model": {}, "state": {}, "config": {}},
               tmp_path / "checkpoints" / "best.pt")
    p = subprocess.run([sys.executable, "train.py", "+experiment=demo", f"trainer.resume={tmp_path / 'checkpoints' / 'best.pt'}",
                        f"paths.output_dir={tmp_path / 'out'}", f"dataset.root={tmp_path / 'none'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'checkpoints' / 'best.pt'} has no "
                                                         "optimizer state: it is a best.pt")


def test_evaluate_without_checkpoint_says_what_it_takes(tmp_path):
    with pytest.raises(ValueError) as e:
        run_evaluation(compose_cfg("evaluate", [f"paths.output_dir={tmp_path}"]))
    msg = str(e.value)
    assert msg.startswith("checkpoint is required: python evaluate.py checkpoint=PATH")
    for kind in ("run folder", "best.pt or last.pt", "clip4clip.export", "pytorch_model.bin.N", "ViT-B/32"):
        assert kind in msg


# ---------------------------------------------------------------------- command-line values
def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        search_main(argv)
    assert e.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    return err


@pytest.mark.parametrize("extra, message", [
    (["--fps", "nan"], "--fps nan: expected a finite number > 0"),
    (["--fps", "inf"], "--fps inf: expected a finite number > 0"),
    (["--fps", "-1"], "--fps -1.0: expected a finite number > 0"),
    (["--moment-fps", "nan"], "--moment-fps nan: expected a finite number > 0"),
    (["--max-frames", "100000"], "--max-frames 100000: expected a number of frames 1..128"),
    (["--max-frames", "0"], "--max-frames 0: expected a number of frames 1..128"),
    (["--moment-frames", "1000000"], "--moment-frames 1000000: expected a number of frames 1..1024"),
    (["--threads", "-1"], "--threads -1: expected a number of threads >= 1 (0: torch's default)"),
])
def test_nonsense_index_values_are_refused(tmp_path, capsys, extra, message):
    err = _cli_error(["index", "--videos", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"),
                      "--out", str(tmp_path / "o"), *extra], capsys)
    assert message in err


@pytest.mark.parametrize("argv, message", [
    (["serve", "--index", "x", "--port", "70000"], "--port 70000: expected a TCP port 1..65535 (0: any free port)"),
    (["serve", "--index", "x", "--port", "-1"], "--port -1: expected a TCP port"),
    (["serve", "--index", "x", "--threads", "0"], "--threads 0: expected a number of worker threads >= 1"),
    (["serve", "--index", "x", "--torch-threads", "-2"], "--torch-threads -2: expected a number of threads"),
    (["search", "--index", "x", "q", "--threads", "-1"], "--threads -1: expected"),
    (["search", "--index", "x", "q", "-k", "0"], "-k 0: expected a number of results >= 1"),
])
def test_nonsense_serve_and_search_values_are_refused(capsys, argv, message):
    assert message in _cli_error(argv, capsys)


def test_max_frames_is_bounded_by_the_heads_position_table():
    enc = SimpleNamespace(model=SimpleNamespace(head=SimpleNamespace(max_frames=12, name="seqTransf")))
    with pytest.raises(ValueError, match=r"--max-frames 13: the seqTransf head of ck.pt takes at most 12 frames"):
        _check_head_frames(enc, SimpleNamespace(max_frames=13, checkpoint="ck.pt"))
    _check_head_frames(enc, SimpleNamespace(max_frames=12, checkpoint="ck.pt"))
    enc.model.head.max_frames = None  # meanP: no table (the stated maximum applies)
    _check_head_frames(enc, SimpleNamespace(max_frames=100, checkpoint="ck.pt"))


def test_extract_frames_refuses_nan_and_inf_fps(tmp_path):
    for value in ("nan", "inf", "-inf"):
        cfg = compose_cfg("extract_frames", [f"videos={tmp_path}", f"fps={value}", "progress=false"])
        with pytest.raises(ValueError, match=r"^fps=-?(nan|inf); expected a positive number"):
            run_extraction(cfg)


def _index_argv(trained, out: Path):
    return ["index", "--videos", str(su.real_videos()), "--checkpoint", str(trained["checkpoint"]), "--out", str(out),
            "--no-progress", "--proxies", "off"]


def test_an_out_folder_that_is_not_an_index_or_not_a_folder(tmp_path, run, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = _cli_error(_index_argv(run, tmp_path / "busy"), capsys)
    assert "is not empty and not a search index (holds ['notes.txt'])" in err
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in _cli_error(_index_argv(run, tmp_path / "file"), capsys)


def test_a_read_only_or_full_out_folder_is_one_line(tmp_path, run, capsys, monkeypatch):
    out = tmp_path / "ro" / "index"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", read_only)
    err = _cli_error(_index_argv(run, out), capsys)
    assert f"error: --out {out}: cannot write {out.resolve()}: Read-only file system" in err
    monkeypatch.setattr(Path, "mkdir", real_mkdir)

    import clip4clip.search.store as store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store, "new_build_dir", full)
    assert f"--out {tmp_path / 'full'}: cannot write {tmp_path / 'full'}: disk full" in _cli_error(
        _index_argv(run, tmp_path / "full"), capsys)


def test_a_second_indexer_on_the_same_out_is_one_line(tmp_path, run, capsys):
    out = tmp_path / "index"
    out.mkdir()
    with open(out / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running indexer holds it
        err = _cli_error(_index_argv(run, out), capsys)
    assert f"another indexer is writing {out.resolve()}" in err


# ------------------------------------------------------------------------------ MSVD pickle
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large pytest
# process would report the parent's peak; VmHWM is this process's own address space's.
_MEASURE = """
import sys
from pathlib import Path
from data.readers.msvd import load_msvd_captions
try:
    load_msvd_captions(Path(sys.argv[1]))
    print("loaded")
except ValueError as e:
    print("error:", e)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(int(hwm) // 1024)
"""


def test_shared_references_in_the_caption_pickle_stop_before_gigabytes(tmp_path):
    """120 KB: one caption of 300 references to a 100-character token, referenced 60000 times;
    joined into caption strings, that was 1.8 G characters (1.75 GiB peak RSS)."""
    tokens = ["x" * 100] * 300
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"vid0": [tokens] * 60000}, protocol=4))
    assert path.stat().st_size < 130_000
    p = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    lines = p.stdout.strip().splitlines()
    assert lines[0] == (f"error: {path}: too large to unpickle safely: holds more than "
                        f"{CAPTIONS_BUDGET.max_chars} characters, each shared reference counted"), p.stderr[-2000:]
    assert int(lines[1]) < 600, f"peak RSS {lines[1]} MiB"  # the interpreter with torch imported: ~240 MiB


def test_a_sparse_memo_index_is_refused_before_it_allocates(tmp_path):
    # A 9-byte pickle whose memo index 2**26 made the C unpickler allocate 1 GiB.
    data = b"\x80\x04N" + b"r" + struct.pack("<I", 2 ** 26) + b"."
    with pytest.raises(ValueError, match=r"x.pkl: too large to unpickle safely: memo index 67108864 out of order"):
        loads_plain_pickle(data, str(tmp_path / "x.pkl"))


def test_caption_pickle_size_and_building_cost_are_bounded(tmp_path):
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"v": [["a", "b"]] * 50}))
    with pytest.raises(ValueError, match=rf"raw-captions.pkl: {path.stat().st_size} bytes, over the 100-byte limit"):
        load_plain_pickle(path, budget=Budget(max_bytes=100))
    # 20 MB of EMPTY_SET opcodes would build 20 million sets (4 GB); the scan stops at the bound.
    with pytest.raises(ValueError, match=r"building it would take more than 10000000 values"):
        loads_plain_pickle(b"\x80\x04(" + b"\x8f" * 20_000_000 + b"l.", "x.pkl")
    nested = pickle.dumps({"v": [[["t"] * 10] * 10] * 10})
    with pytest.raises(ValueError, match=r"holds more than 500 values, each shared reference counted"):
        loads_plain_pickle(nested, "x.pkl", budget=Budget(max_values=500))
    assert load_msvd_captions(_plain_captions(tmp_path)) == {"v1": ["a man cooks"], "v2": ["a dog"]}


def _plain_captions(tmp_path) -> Path:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"v1": [["a", "man", "cooks"]], "v2": [["a", "dog"]]}))
    return path


# --------------------------------------------------------------------------------- .npy files
def _npy_bytes(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    text = header.encode("latin1")
    length = struct.pack("<H", len(text)) if version == (1, 0) else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text + data


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"PK\x03\x04 not numpy", "no \\x93NUMPY magic"),
    (b"\x93NUMPY\x09\x00\x10\x00", "unknown format version 9.0"),
    (b"\x93NUMPY\x01\x00\xff\x00{}", "header length 255 runs past the end"),
    (_npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), '''"), "not a dict literal"),
    (_npy_bytes("[1, 2]"), "the header holds list"),
    (_npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", b"x" * 8), "is not a plain dtype"),
    (_npy_bytes("{'descr': 'f4,i4', 'fortran_order': False, 'shape': (1,)}", b"x" * 8), "is not a plain dtype"),
    (_npy_bytes("{'descr': '|u1', 'fortran_order': 0, 'shape': (1,)}", b"x"), "fortran_order is 0"),
    (_npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (-1,)}", b"x"), "shape is (-1,)"),
    (_npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3)}", b"x" * 5),
     "the header says |u1 (2, 3) (6 bytes of data) but the file holds 5 bytes"),
])
def test_npy_headers_are_checked_before_numpy_reads_them(tmp_path, content, reason):
    path = tmp_path / "a.npy"
    path.write_bytes(content)
    with pytest.raises(NpyFormatError) as e:
        read_npy_header(path)
    assert str(e.value).startswith(f"{path}: not a valid .npy file (") and reason in str(e.value)


def test_npy_header_of_real_files(tmp_path):
    for arr in (np.zeros((2, 4, 4, 3), np.uint8), np.ones((3, 5), np.float16), np.asfortranarray(np.eye(3))):
        np.save(tmp_path / "a.npy", arr)
        h = read_npy_header(tmp_path / "a.npy")
        assert (h.dtype, h.shape, h.fortran_order) == (arr.dtype, arr.shape, arr.flags.f_contiguous and arr.ndim > 1)
        assert h.offset + h.nbytes == (tmp_path / "a.npy").stat().st_size


def _cache(tmp_path) -> Path:
    """A frame cache of two videos of 2 frames at 8 px."""
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = new_manifest(cache_params(KeyframeParams(max_frames=2), 8))
    for vid in ("a", "b"):
        fields = write_video_frames(cache, vid, np.zeros((2, 8, 8, 3), np.uint8), ("npy",))
        manifest["videos"][vid] = {**fields, "indices": [0, 1]}
    save_manifest(cache, manifest)
    return cache


def test_a_garbage_npy_header_in_the_frame_cache_is_a_video_read_error(tmp_path):
    cache = _cache(tmp_path)
    # This header made numpy's parser raise tokenize.TokenError (a traceback).
    (cache / "npy" / "a.npy").write_bytes(_npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2, '''"))
    with pytest.raises(VideoReadError, match=r"npy/a.npy': not a valid .npy file \(the header is not a dict literal"):
        FrameStore(cache).load("a")
    np.save(cache / "npy" / "a.npy", np.zeros((3, 8, 8, 3), np.uint8))  # refused from its header
    with pytest.raises(VideoReadError, match=r"cache file holds uint8 \(3, 8, 8, 3\), expected uint8 \(2, 8, 8, 3\)"):
        FrameStore(cache).load("a")
    assert FrameStore(cache).load("b").shape == (2, 8, 8, 3)


@pytest.mark.parametrize("entry", ["../outside.npy", "/etc/hostname", "npy/../../outside.npy", "", "npy//a.npy"])
def test_manifest_entries_must_name_files_inside_the_cache(tmp_path, entry):
    cache = _cache(tmp_path)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["videos"]["a"]["array"] = entry
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as e:
        FrameStore(cache)
    assert str(e.value).startswith(f"{cache / 'manifest.json'}: entry 'a' 'array' names {entry!r}; expected a "
                                   "relative path inside the cache folder")


def test_a_symbolic_link_out_of_the_cache_is_refused(tmp_path):
    cache = _cache(tmp_path)
    np.save(tmp_path / "elsewhere.npy", np.ones((2, 8, 8, 3), np.uint8))
    (cache / "npy" / "a.npy").unlink()
    os.symlink(tmp_path / "elsewhere.npy", cache / "npy" / "a.npy")
    store = FrameStore(cache)
    for read in (store.load, store.check_files):
        with pytest.raises(ValueError, match=rf"manifest.json: entry 'a' names 'npy/a.npy', which leads outside the "
                                             rf"cache folder \(to {tmp_path / 'elsewhere.npy'}\)"):
            read("a")
    os.symlink(cache / "npy" / "b.npy", cache / "npy" / "c.npy")  # a link inside the cache is fine
    assert store._file("b", "npy/c.npy") == cache / "npy" / "c.npy"


# -------------------------------------------------------------------------------- FAISS files
def _faiss_file(tmp_path, kind="flat", n=300, d=16) -> Path:
    from clip4clip.search.ann import build_faiss_index, save_faiss_index
    emb = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    save_faiss_index(build_faiss_index(emb, kind=kind), tmp_path / f"{kind}.faiss")
    return tmp_path / f"{kind}.faiss"


def test_a_random_or_truncated_faiss_file_is_named(tmp_path):
    pytest.importorskip("faiss")
    from clip4clip.search.ann import load_faiss_index
    good = _faiss_file(tmp_path)
    assert load_faiss_index(good, dim=16, count=300).ntotal == 300
    data = good.read_bytes()
    cases = {"random.faiss": (os.urandom(4096), "not a FAISS index of ours (starts with"),
             "short.faiss": (data[:20], "not a FAISS index of ours (too short"),
             "half.faiss": (data[: len(data) // 2], "FAISS header says 300 vectors of 16 dimensions but the file is"),
             "tail.faiss": (data[:-10], "FAISS header says 300 vectors of 16 dimensions but the file is"),
             # an HNSW graph is larger than its vectors: faiss itself finds the end missing
             "graph.faiss": (_faiss_file(tmp_path, "hnsw").read_bytes()[:-10], "truncated or damaged FAISS index "
                                                                               "(faiss: ")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as e:
            load_faiss_index(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: ") and message in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)


def test_a_faiss_file_of_another_width_or_count_is_refused(tmp_path):
    pytest.importorskip("faiss")
    from clip4clip.search.ann import load_faiss_index
    good = _faiss_file(tmp_path)
    with pytest.raises(ValueError, match=r"flat.faiss: FAISS dimension is 16 but the index has 32"):
        load_faiss_index(good, dim=32)
    with pytest.raises(ValueError, match=r"flat.faiss: FAISS vector count is 300 but the index has 299"):
        load_faiss_index(good, dim=16, count=299)
