"""A generated corpus of malformed input files, and the command lines that must refuse each one.

Every probe is (name, entry point, argv): the file is handed to a real entry point (evaluate.py
``checkpoint=``, train.py ``model.clip.pretrained=`` / ``trainer.resume=`` /
``model.init_checkpoint=``, ``search index --checkpoint``, ``search search --index``,
``search merge``, ``export``), and the test (tests/test_malformed_corpus.py) requires exit
status 2, one ``error:`` line naming the file, no traceback, no hang and no allocation past the
driver's bound.

Families:

* ``generic``: files no loader can read: empty, random bytes, a truncated torch zip, a plain
  pickle, a pickle asking for ``os.system``, a FIFO, a folder without weights, a zero-stride
  tensor (``expand``-ed to a billion elements: 4 GB once converted).
* ``safetensors``: header length past the file, header not JSON or not an object, unknown
  dtype, offsets past the data, shapes that do not match their byte ranges, huge shapes.
* ``hf`` / ``openclip`` / ``ours`` / ``export``: a valid tiny file of each kind whose JSON (or
  ``model_args``) has one field replaced by each of ``BAD_VALUES`` (zero, negative, huge,
  string, list, null, bool, fraction), plus unparsable and truncated JSON and the named cases of
  issue 26 (``hidden_act`` a list, ``weight_map`` a list or leading outside, 10^6 layers, 10^9
  widths, a 0-d positional embedding, a missing key).
* ``index``: search index versions with a random, truncated or page-corrupted ``meta.sqlite``,
  garbage ``.npy`` headers, and random ``.faiss`` files.

Field fuzzing goes through one entry point per file kind (every kind's loader is the one
dispatcher, ``clip4clip.weights.dispatch``); the named cases go through every entry point that
accepts the kind.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from safetensors.torch import save_file

#: One field at a time is replaced by each of these.
BAD_VALUES = {"zero": 0, "negative": -3, "huge": 10 ** 9, "string": "12", "list": [12], "null": None,
              "bool": True, "fraction": 2.5}


@dataclass
class Probe:
    """One command line that must be refused. ``names``: a string that the error line must
    contain (the file's or folder's name)."""

    name: str
    entry: str
    argv: List[str]
    names: str
    cwd: str = ""
    env: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "entry": self.entry, "argv": self.argv, "cwd": self.cwd, "env": self.env}


# ---------------------------------------------------------------------------- valid tiny files
def tiny_clip_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """OpenAI-layout state dict of a tiny CLIP (width 32, one layer per tower)."""
    from clip4clip.clip import CLIP, CLIPConfig
    torch.manual_seed(seed)
    cfg = CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2,
                     transformer_layers=1)
    return CLIP(cfg).state_dict()


def write_hf_folder(folder: Path) -> Path:
    """A tiny Hugging Face CLIP folder (config.json + model.safetensors), via transformers."""
    import transformers
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16, hidden_act="quick_gelu")
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(folder))
    return folder


def write_openclip_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tiny_clip_state(1), str(folder / "open_clip_model.safetensors"))
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                      "layers": 1}}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------------------- raw bad files
class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _zero_stride(path: Path) -> None:
    sd = tiny_clip_state()
    sd["visual.proj"] = torch.zeros(1).expand(10 ** 9)
    torch.save(sd, path)


def _truncated_zip(path: Path) -> None:
    torch.save(tiny_clip_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


GENERIC: Dict[str, Callable[[Path], None]] = {
    "empty": lambda p: p.write_bytes(b""),
    "random": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "truncated_zip": _truncated_zip,
    "plain_pickle": lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=2)),
    "pickle_global": lambda p: p.write_bytes(pickle.dumps(_System())),
    "zero_stride": _zero_stride,
    "list_not_dict": lambda p: torch.save([torch.zeros(2)], p),
    "tensor_not_dict": lambda p: torch.save(torch.zeros(2), p),
}


def _safetensors(path: Path, header: Any, data: bytes = b"", raw_len: int = None) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if raw_len is None else raw_len
    path.write_bytes(struct.pack("<Q", n) + body + data)


SAFETENSORS: Dict[str, Callable[[Path], None]] = {
    "header_past_file": lambda p: _safetensors(p, {}, raw_len=1 << 60),
    "header_not_json": lambda p: _safetensors(p, b"{not json"),
    "header_a_list": lambda p: _safetensors(p, [1, 2]),
    "unknown_dtype": lambda p: _safetensors(p, {"visual.proj": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}},
                                            b"\0" * 8),
    "offsets_past_data": lambda p: _safetensors(p, {"visual.proj": {"dtype": "F32", "shape": [4],
                                                                    "data_offsets": [0, 1 << 40]}}, b"\0" * 16),
    "shape_vs_bytes": lambda p: _safetensors(p, {"visual.proj": {"dtype": "F32", "shape": [100000, 100000],
                                                                 "data_offsets": [0, 16]}}, b"\0" * 16),
    "negative_shape": lambda p: _safetensors(p, {"visual.proj": {"dtype": "F32", "shape": [-4],
                                                                 "data_offsets": [0, 16]}}, b"\0" * 16),
}


# ---------------------------------------------------------------------------- JSON fuzzing
def _numeric_paths(obj: Any, prefix=()) -> List[tuple]:
    """Paths (key tuples) of every int field in a nested JSON object."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, int):
                out.append(prefix + (k,))
            elif isinstance(v, dict):
                out += _numeric_paths(v, prefix + (k,))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    obj = copy.deepcopy(obj)
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return obj


def fuzzed_json(obj: Dict[str, Any], fields: List[tuple] = None) -> Dict[str, Any]:
    """name -> object with one int field replaced by one of BAD_VALUES."""
    out = {}
    for path in fields if fields is not None else _numeric_paths(obj):
        for vname, value in BAD_VALUES.items():
            if value is None and str(path[-1]).endswith("_heads"):
                continue  # null head counts are valid in model_args: OpenAI's width // 64
            out[f"{'.'.join(map(str, path))}-{vname}"] = _set(obj, path, value)
    return out


# ---------------------------------------------------------------------------- probes
class Corpus:
    """Builds the files under ``root`` and lists the probes. ``run``: a tiny finished training
    run ({'out': run folder, 'data': its synthetic dataset root}); ``index``: a search index
    built from it; ``videos``: a folder with a few clips."""

    def __init__(self, root: Path, run: Dict[str, Path], index: Path, videos: Path):
        self.root, self.run, self.index, self.videos = Path(root), run, Path(index), Path(videos)
        self.root.mkdir(parents=True, exist_ok=True)
        self.probes: List[Probe] = []
        self._n = 0

    # Entry points that accept a weights file -------------------------------------------
    def _hydra(self, tag: str) -> List[str]:
        self._n += 1
        return [f"hydra.run.dir={self.root / 'hydra' / f'{tag}-{self._n}'}", "hydra.output_subdir=null"]

    def _train(self, key: str, path: Path, tag: str) -> List[str]:
        from framework_utils import tiny_train_overrides
        out = self.root / "runs" / f"{tag}-{self._n}"
        return [*tiny_train_overrides(out, self.run["data"], ["trainer.epochs=1", "trainer.tensorboard=false"]),
                f"{key}={path}", *self._hydra(tag)]

    def checkpoint_entries(self, name: str, path: Path, entries=("evaluate", "resume", "init", "search", "export")):
        """Probes handing ``path`` where a checkpoint of ours (or an official one) is accepted."""
        for e in entries:
            if e == "evaluate":
                argv = [f"checkpoint={path}", f"paths.output_dir={self.root / 'eval' / str(self._n)}",
                        *self._hydra("ev")]
                self._add(f"{name}@evaluate", "evaluate", argv, path)
            elif e in ("resume", "init"):
                key = "trainer.resume" if e == "resume" else "model.init_checkpoint"
                self._add(f"{name}@{e}", "train", self._train(key, path, e), path)
            elif e == "search":
                self._add(f"{name}@search-index", "search",
                          ["index", "--checkpoint", str(path), "--videos", str(self.videos), "--out",
                           str(self.root / "idx" / str(self._next())), "--no-progress"], path)
            elif e == "export":
                self._add(f"{name}@export", "export", [str(path), str(self.root / "exp" / str(self._next()))], path)

    def pretrained_entries(self, name: str, path: Path, entries=("train", "search")):
        """Probes handing ``path`` where CLIP weights are accepted (``model.clip.pretrained=``)."""
        for e in entries:
            if e == "train":
                self._add(f"{name}@pretrained", "train", self._train("model.clip.pretrained", path, "pre"), path)
            else:  # search index accepts CLIP weights as a zero-shot model
                self._add(f"{name}@search-index", "search",
                          ["index", "--checkpoint", str(path), "--videos", str(self.videos), "--out",
                           str(self.root / "idx" / str(self._next())), "--no-progress"], path)

    def _next(self) -> int:
        self._n += 1
        return self._n

    def _add(self, name: str, entry: str, argv: List[str], path: Path, names: str = None, **env: str) -> None:
        self.probes.append(Probe(name, entry, [str(a) for a in argv], names or Path(path).name, env=env))

    def _file(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # Families ---------------------------------------------------------------------------
    def generic(self) -> None:
        for kind, make in GENERIC.items():
            path = self._file("generic", f"{kind}.pt")
            make(path)
            self.checkpoint_entries(f"generic/{kind}", path)
            self.pretrained_entries(f"generic/{kind}", path, ("train",))
        fifo = self._file("generic", "fifo.pt")
        os.mkfifo(fifo)
        self.checkpoint_entries("generic/fifo", fifo, ("evaluate", "search"))
        self.pretrained_entries("generic/fifo", fifo, ("train",))
        empty = self._file("generic", "no_weights", "x")
        empty.write_text("")
        self.checkpoint_entries("generic/folder_without_weights", empty.parent, ("evaluate", "search"))

    def safetensors(self) -> None:
        for kind, make in SAFETENSORS.items():
            path = self._file("safetensors", f"{kind}.safetensors")
            make(path)
            self.pretrained_entries(f"safetensors/{kind}", path, ("search",))
            self.checkpoint_entries(f"safetensors/{kind}", path, ("evaluate",))

    def hf(self) -> None:
        base = write_hf_folder(self._file("hf", "valid"))
        cfg = json.loads((base / "config.json").read_text())
        fields = [("text_config", k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                               "num_attention_heads", "max_position_embeddings", "vocab_size")]
        fields += [("vision_config", k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                  "num_attention_heads", "image_size", "patch_size")]
        fields += [("projection_dim",)]
        cases = fuzzed_json(cfg, fields)
        cases["hidden_act_list"] = _set(cfg, ("text_config", "hidden_act"), ["gelu"])
        cases["layers_1e6"] = _set(cfg, ("vision_config", "num_hidden_layers"), 10 ** 6)
        cases["top_level_list"] = [cfg]
        for i, (kind, obj) in enumerate(cases.items()):
            folder = self._file("hf", f"hfcase{i:03d}")
            shutil.copytree(base, folder)
            (folder / "config.json").write_text(json.dumps(obj))
            self.pretrained_entries(f"hf/config.{kind}", folder, ("search",))
        for kind, text in (("not_json", "{\"text_config\": {,"), ("truncated", (base / "config.json").read_text()[:40])):
            folder = self._file("hf", kind)
            shutil.copytree(base, folder)
            (folder / "config.json").write_text(text)
            self.pretrained_entries(f"hf/config.{kind}", folder)
        fifo = self._file("hf", "fifo_config")
        shutil.copytree(base, fifo)
        (fifo / "config.json").unlink()
        os.mkfifo(fifo / "config.json")  # opening it would block forever waiting for a writer
        self.pretrained_entries("hf/config.fifo", fifo)
        sharded = {"weight_map_list": ["model.safetensors"], "weight_map_outside": {"logit_scale": "../valid/model.safetensors"},
                   "weight_map_absolute": {"logit_scale": str(base / "model.safetensors")}}
        for kind, wmap in sharded.items():
            folder = self._file("hf", kind)
            shutil.copytree(base, folder)
            (folder / "model.safetensors").unlink()
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
            self.pretrained_entries(f"hf/{kind}", folder)

    def openclip(self) -> None:
        base = write_openclip_folder(self._file("openclip", "valid"))
        cfg = json.loads((base / "open_clip_config.json").read_text())
        cases = fuzzed_json(cfg)
        cases["head_width_zero"] = _set(cfg, ("model_cfg", "vision_cfg", "head_width"), 0)
        for i, (kind, obj) in enumerate(cases.items()):
            folder = self._file("openclip", f"occase{i:03d}")
            shutil.copytree(base, folder)
            (folder / "open_clip_config.json").write_text(json.dumps(obj))
            self.pretrained_entries(f"openclip/{kind}", folder, ("search",))

    def ours(self) -> None:
        best = self.run["out"] / "checkpoints" / "best.pt"
        ck = torch.load(best, weights_only=True)
        for kind, args in fuzzed_json(ck["model_args"]).items():
            path = self._file("ours", f"{kind}.pt")
            torch.save({**ck, "model_args": args}, path)
            self.checkpoint_entries(f"ours/model_args.{kind}", path, ("evaluate",))
        named = {
            "no_model_args": {k: v for k, v in ck.items() if k != "model_args"},
            "no_model": {k: v for k, v in ck.items() if k != "model"},
            "model_a_list": {**ck, "model": [1, 2]},
            "missing_key": {**ck, "model": {k: v for k, v in ck["model"].items() if "text_projection" not in k}},
            "pos_embedding_0d": {**ck, "model": {k: (torch.tensor(1.0) if k.endswith("positional_embedding") else v)
                                                 for k, v in ck["model"].items()}},
            "layers_1e6": {**ck, "model_args": _set(ck["model_args"], ("clip", "vision_layers"), 10 ** 6)},
            "width_1e9": {**ck, "model_args": _set(ck["model_args"], ("clip", "vision_width"), 10 ** 9)},
            "heads_zero": {**ck, "model_args": _set(ck["model_args"], ("clip", "transformer_heads"), 0)},
        }
        for kind, obj in named.items():
            path = self._file("ours", f"{kind}.pt")
            torch.save(obj, path)
            # Without model_args a file is a plain state dict: a valid model.init_checkpoint
            # when its keys and shapes fit the configured model (which these do).
            entries = ("evaluate", "search", "export") if kind == "no_model_args" else ("evaluate", "resume", "init",
                                                                                       "search", "export")
            self.checkpoint_entries(f"ours/{kind}", path, entries)
        # Resuming from best.pt (weights only, by design) must say to resume from last.pt.
        self._add("ours/best_pt_as_resume@resume", "train", self._train("trainer.resume", best, "resume"), best)

    def export(self) -> None:
        from clip4clip.weights.export import export_checkpoint
        base = self._file("export", "valid")
        export_checkpoint(self.run["out"] / "checkpoints" / "best.pt", base)
        cfg = json.loads((base / "config.json").read_text())
        # The model description is what loading reads; the rest of config.json (the training
        # config, kept for the record) does not change what is loaded.
        cases = {k: v for k, v in fuzzed_json(cfg, [("model_args",) + p for p in _numeric_paths(cfg["model_args"])]).items()}
        cases["model_args_missing"] = {k: v for k, v in cfg.items() if k != "model_args"}
        cases["format_wrong"] = {**cfg, "format": "something-else/9"}
        cases["weights_outside"] = {**cfg, "weights": "../valid/model.safetensors"}
        cases["weights_absolute"] = {**cfg, "weights": str(base / "model.safetensors")}
        for i, (kind, obj) in enumerate(cases.items()):
            folder = self._file("export", f"excase{i:03d}")
            shutil.copytree(base, folder)
            (folder / "config.json").write_text(json.dumps(obj))
            self.checkpoint_entries(f"export/config.{kind}", folder, ("evaluate",))
        folder = self._file("export", "truncated")
        shutil.copytree(base, folder)
        (folder / "config.json").write_text((base / "config.json").read_text()[:30])
        self.checkpoint_entries("export/config.truncated", folder, ("evaluate", "search"))

    def search_index(self) -> None:
        from clip4clip.search import store
        version = store.require_version(self.index)
        ckpt = str(self.run["out"] / "checkpoints" / "best.pt")
        meta = (version / "meta.sqlite").read_bytes()
        breakers = {
            "meta_random": ("meta.sqlite", np.random.default_rng(2).bytes(len(meta))),
            "meta_truncated": ("meta.sqlite", meta[: len(meta) // 2]),
            "meta_pages_corrupt": ("meta.sqlite", meta[:100] + np.random.default_rng(3).bytes(len(meta) - 100)),
            "npy_garbage_header": ("video_emb.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': ((((\n"),
            "npy_truncated": ("video_emb.npy", (version / "video_emb.npy").read_bytes()[:200]),
            "npy_huge_shape": ("frame_emb.npy", _npy_header("<f2", (10 ** 9, 10 ** 6))),
        }
        for kind, (name, data) in breakers.items():
            folder = self._file("index", kind)
            shutil.copytree(self.index, folder)
            target = store.require_version(folder) / name
            target.write_bytes(data)
            self._add(f"index/{kind}@search", "search", ["search", "--index", str(folder), "--checkpoint", ckpt,
                                                         "a red circle"], folder)
            self._add(f"index/{kind}@merge", "search", ["merge", "--out", str(self.root / "merged" / kind),
                                                        str(folder)], folder)
            # serve opens (and checks) the index before it listens: a broken one never gets served
            self._add(f"index/{kind}@serve", "search", ["serve", "--index", str(folder), "--checkpoint", ckpt,
                                                        "--port", "0"], folder)
        folder = self._file("index", "faiss_random")
        shutil.copytree(self.index, folder)
        (store.require_version(folder) / "videos.faiss").write_bytes(np.random.default_rng(4).bytes(2048))
        self._add("index/faiss_random@search", "search", ["search", "--index", str(folder), "--checkpoint", ckpt,
                                                          "--backend", "faiss", "a red circle"], folder)

    def datasets(self) -> None:
        """MSVD's raw-captions.pkl (the one pickle a dataset has), through evaluate.py."""
        from toy_datasets import write_msvd_folder
        base = write_msvd_folder(self._file("msvd", "valid"), splits=(2, 1, 2), captions=2)
        ids = [line.strip() for line in (base / "test_list.txt").read_text().split()]
        tokens = ["word"] * 2000
        captions = [tokens] * 100000  # one shared list: ~600 KB pickled, 1e8 strings once joined
        pickles = {
            "shared_reference_bomb": pickle.dumps({v: captions for v in ids}, protocol=2),
            "global": pickle.dumps({ids[0]: _System()}),
            "truncated": (base / "raw-captions.pkl").read_bytes()[:20],
            "a_list": pickle.dumps([1, 2, 3]),
            "ints_for_captions": pickle.dumps({v: 5 for v in ids}),
            "random": np.random.default_rng(5).bytes(512),
        }
        ckpt = self.run["out"] / "checkpoints" / "best.pt"
        for kind, data in pickles.items():
            folder = self._file("msvd", kind)
            shutil.copytree(base, folder)
            (folder / "raw-captions.pkl").write_bytes(data)
            argv = [f"checkpoint={ckpt}", "dataset=msvd", f"dataset.root={folder}",
                    f"paths.output_dir={self.root / 'eval' / str(self._next())}", *self._hydra("msvd")]
            self._add(f"msvd/{kind}@evaluate", "evaluate", argv, folder / "raw-captions.pkl", names=f"{kind}/raw-captions.pkl")

    def hf_revision(self) -> None:
        """``hf:org/name@<rev>`` and the cache's refs/<rev> must stay inside the repo's cache."""
        hub = self._file("hub", "x").parent
        repo = hub / "models--org--tiny"
        snap = repo / "snapshots" / ("0" * 40)
        write_hf_folder(snap)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "refs" / "evil").write_text("../../../outside")
        write_hf_folder(hub / "outside")
        env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        for kind, rev in (("dotdot", "../../outside"), ("absolute", str(hub / "outside")), ("refs_leads_out", "evil"),
                          ("nul", "ma\x00in")):
            spec = f"hf:org/tiny@{rev}"
            self._add(f"hf_revision/{kind}@search-index", "search",
                      ["index", "--checkpoint", spec, "--videos", str(self.videos), "--out",
                       str(self.root / "idx" / str(self._next())), "--no-progress"], hub, names="org/tiny", **env)

    def build(self) -> List[Probe]:
        for family in (self.generic, self.safetensors, self.hf, self.openclip, self.ours, self.export,
                       self.search_index, self.datasets, self.hf_revision):
            family()
        return self.probes


def _npy_header(descr: str, shape: tuple) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64


def sqlite_ok(path: Path) -> bool:
    """Whether ``path`` opens as an SQLite database (used to check that a corruption took)."""
    try:
        db = sqlite3.connect(path)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        db.close()
        return True
    except sqlite3.DatabaseError:
        return False
