"""What a weight file declares is checked before it is used (issue 26, the weight-file parts):
sizes against the tensors before anything is built, schemas of every JSON config, tensors no
bigger than the bytes behind them, bounded reads of archive members and advisory files, revisions
confined to the Hugging Face cache, and exports that write nothing for a checkpoint loading
would refuse. Every file here is tiny and random; the huge cases run in forked children under an
address-space limit, and their peak memory is measured."""
import json
import os
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clip4clip.builder import model_from_args
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.clip.layers import Attention
from clip4clip.weights import load_clip, load_model, read_torch_file
from clip4clip.weights.checkpoints import FORMAT, load_model_from_checkpoint
from clip4clip.weights.dispatch import read_checkpoint, resolve_source
from clip4clip.weights.export import main as export_main
from clip4clip.weights.hf import _DIRECT, _TOWERS, _TRANSPOSED, check_tokenizer_files, resolve_hf
from clip4clip.weights.official import load_official_checkpoint
from clip4clip.weights.torchscript import MAX_CODE_MEMBER_BYTES, read_torchscript_state_dict

REPO = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
            context_length=8, vocab_size=64, transformer_width=32, transformer_heads=2, transformer_layers=1,
            vision_heads=2)
HF_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
               max_position_embeddings=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
HF_VISION = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_channels=3,
                 image_size=32, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)
OPEN_CLIP = {"embed_dim": 16, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


# --------------------------------------------------------------------------- tiny files of each kind

def tiny_state(seed=0):
    torch.manual_seed(seed)
    return {k: v + 0.01 * torch.randn_like(v) for k, v in CLIP(CLIPConfig(**TINY)).state_dict().items()}


# Our block's modules as transformers' CLIPEncoderLayer names them.
_HF_LAYER = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _to_hf(sd):
    """OpenAI-layout CLIP state dict -> a transformers CLIPModel's (the inverse of hf.py's tables)."""
    direct, transposed = {v: k for k, v in _DIRECT.items()}, {v: k for k, v in _TRANSPOSED.items()}
    towers = {v: k for k, v in _TOWERS.items()}
    out = {}
    for key, value in sd.items():
        if key in direct:
            out[direct[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            prefix = next(p for p in sorted(towers, key=len, reverse=True) if key.startswith(p))
            layer, rest = key[len(prefix):].split(".", 1)
            base = f"{towers[prefix]}{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3)):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part.clone()
                continue
            module, kind = rest.rsplit(".", 1)
            out[f"{base}{_HF_LAYER[module]}.{kind}"] = value
    return out


def hf_folder(folder: Path, text=None, vision=None, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_to_hf(tiny_state()), str(folder / "model.safetensors"))
    cfg = {"model_type": "clip", "projection_dim": 16, "text_config": {**HF_TEXT, **(text or {})},
           "vision_config": {**HF_VISION, **(vision or {})}, **top}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def open_clip_folder(folder: Path, model_cfg=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_state(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg or OPEN_CLIP}))
    return folder


def _args(head="seqTransf", head_kwargs=None, adapter=None):
    return {"clip": CLIPConfig(**TINY).to_dict(), "head": head,
            "head_kwargs": {"num_blocks": 1} if head_kwargs is None else head_kwargs,
            "adapter": adapter or {"name": "none"}}


def ours_checkpoint(path: Path, edit=None, args=None) -> Path:
    """One of our (evaluation) checkpoints, with a word tokenizer (nothing to download);
    ``edit(ckpt)`` changes it after the model's state is taken."""
    args = args or _args()
    torch.manual_seed(0)
    ckpt = {"format": FORMAT, "contents": "eval", "model": model_from_args(args).state_dict(),
            "model_args": json.loads(json.dumps(args)), "weights": "full",
            "tokenizer": {"kind": "word", "version": 1, "words": ["a", "dog"]},
            "config": {"model": {"tokenizer": "word", "max_words": 8}}}
    if edit:
        edit(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _edit_json(path: Path, edit) -> None:
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def test_the_tiny_files_of_each_kind_load(tmp_path):
    want = tiny_state()
    for source in (hf_folder(tmp_path / "hf"), open_clip_folder(tmp_path / "oc")):
        got = load_clip(source).state_dict()
        assert all(torch.allclose(got[k], v) for k, v in want.items()), source
    load_model_from_checkpoint(torch.load(ours_checkpoint(tmp_path / "ours.pt"), weights_only=True))


# --------------------------------------------------------------------------- 1. declared sizes vs the weights

@pytest.mark.parametrize("tower,field,value", [
    ("vision", "num_hidden_layers", 2), ("text", "num_hidden_layers", 3), ("text", "vocab_size", 65),
    ("text", "max_position_embeddings", 9), ("vision", "image_size", 48), ("vision", "patch_size", 8),
    ("top", "projection_dim", 17)])
def test_hf_config_sizes_are_compared_with_the_weights_naming_the_field(tmp_path, tower, field, value):
    edit = {"top": {field: value}} if tower == "top" else {tower: {field: value}}
    folder = hf_folder(tmp_path / "hf", **edit.pop("top", {}), **edit)
    name = field if tower == "top" else f"{tower}_config.{field}"
    with pytest.raises(ValueError, match=rf"hf/config\.json: .*{name} is {value}\b"):
        load_clip(folder)


def test_hf_widths_are_compared_with_the_weights(tmp_path):
    folder = hf_folder(tmp_path / "hf", text={"hidden_size": 64, "intermediate_size": 256,
                                              "num_attention_heads": 2})
    with pytest.raises(ValueError, match=r"config\.json: .*text_config\.hidden_size is 64 but the weights have 32"):
        load_clip(folder)


@pytest.mark.parametrize("section,field,value", [("vision_cfg", "layers", 2), ("text_cfg", "layers", 2),
                                                 ("vision_cfg", "width", 48), ("text_cfg", "vocab_size", 100),
                                                 ("text_cfg", "context_length", 77), (None, "embed_dim", 24)])
def test_open_clip_config_sizes_are_compared_with_the_weights(tmp_path, section, field, value):
    cfg = json.loads(json.dumps(OPEN_CLIP))
    (cfg[section] if section else cfg)[field] = value
    name = f"model_cfg.{section}.{field}" if section else f"model_cfg.{field}"
    with pytest.raises(ValueError, match=rf"open_clip_config\.json: .*{name} is {value}\b"):
        load_clip(open_clip_folder(tmp_path / "oc", cfg))


@pytest.mark.parametrize("edit,named", [
    (lambda a: a["clip"].update(vision_layers=2), r"model_args\.clip\.vision_layers is 2"),
    (lambda a: a["clip"].update(transformer_layers=3), r"model_args\.clip\.transformer_layers is 3"),
    (lambda a: a["clip"].update(vocab_size=100), r"model_args\.clip\.vocab_size is 100"),
    (lambda a: a["clip"].update(context_length=77), r"model_args\.clip\.context_length is 77"),
    (lambda a: a["head_kwargs"].update(num_blocks=3), r"model_args\.head_kwargs\.num_blocks is 3"),
    (lambda a: a["head_kwargs"].update(num_positions=1000), r"head\.frame_position_embeddings\.weight is \[77"),
])
def test_our_model_args_are_compared_with_the_weights_naming_the_field(tmp_path, edit, named):
    path = ours_checkpoint(tmp_path / "ours.pt", lambda c: edit(c["model_args"]))
    with pytest.raises(ValueError, match=rf"ours\.pt.*{named}"):
        load_model(path)


# The cases of the issue that allocated gigabytes (10^6 layers: 7.3 GB; widths 10^9; a
# zero-stride tensor of 10^9 floats), each loaded in a forked child (of a fresh interpreter
# that has run no torch op, so the fork is safe) under an address-space limit.
_PEAK_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    from clip4clip.weights import load_clip, load_model, read_torch_file
    LIMIT = 1024 * 2 ** 20

    def vm(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

    results = {}
    for label, kind, path in json.loads(sys.argv[1]):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            base = vm("VmRSS:")
            resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize:") + LIMIT,) * 2)
            try:
                {"clip": load_clip, "ours": load_model, "torch": read_torch_file}[kind](path)
                outcome = "loaded"
            except (ValueError, FileNotFoundError) as e:
                outcome = "refused: " + str(e)
            except BaseException as e:
                outcome = f"bug: {type(e).__name__}: {e}"
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
            os.write(w, json.dumps([outcome, peak / 2 ** 20]).encode())
            os._exit(0)
        os.close(w)
        data = b"".join(iter(lambda: os.read(r, 65536), b""))
        os.waitpid(pid, 0)
        results[label] = json.loads(data) if data else ["crashed", None]
    print(json.dumps(results))
""")


def _huge_cases(tmp_path):
    cases = []
    big = {"layers": {"num_hidden_layers": 10 ** 6}, "width": {"hidden_size": 10 ** 9, "intermediate_size": 4 * 10 ** 9,
                                                               "num_attention_heads": 1}}
    for name, edit in big.items():
        cases.append((f"hf_{name}", "clip", hf_folder(tmp_path / f"hf_{name}", vision=edit)))
    for name, edit in {"layers": {"layers": 10 ** 6}, "width": {"width": 10 ** 9, "head_width": 10 ** 9}}.items():
        cfg = json.loads(json.dumps(OPEN_CLIP))
        cfg["vision_cfg"].update(edit)
        cases.append((f"openclip_{name}", "clip", open_clip_folder(tmp_path / f"oc_{name}", cfg)))
    ours = {"layers": lambda a: a["clip"].update(vision_layers=10 ** 6),
            "width": lambda a: a["clip"].update(transformer_width=10 ** 9, transformer_heads=1),
            "head_blocks": lambda a: a["head_kwargs"].update(num_blocks=10 ** 6),
            "head_positions": lambda a: a["head_kwargs"].update(num_positions=10 ** 9),
            "lora_rank": lambda a: a.update(adapter={"name": "lora", "lora": {"rank": 10 ** 9}})}
    for name, edit in ours.items():
        cases.append((f"ours_{name}", "ours", ours_checkpoint(tmp_path / f"ours_{name}.pt",
                                                              lambda c, e=edit: e(c["model_args"]))))
    torch.save({**tiny_state(), "token_embedding.weight": torch.zeros(1).expand(10 ** 9)}, tmp_path / "stride.pt")
    cases.append(("zero_stride", "clip", tmp_path / "stride.pt"))
    return cases


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path):
    cases = _huge_cases(tmp_path)
    arg = json.dumps([(label, kind, str(path)) for label, kind, path in cases])
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, arg], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # A refusal of a tiny file needs a few MB; 200 MiB would still catch any allocation sized by
    # the declared values (the smallest here asked for gigabytes).
    problems = {label: r for label, r in results.items() if not r[0].startswith("refused: ") or r[1] > 200}
    assert not problems, problems
    for label, kind, path in cases:
        assert path.name in results[label][0] and "\n" not in results[label][0], (label, results[label])


def test_a_zero_stride_tensor_is_refused_before_conversion(tmp_path):
    torch.save({**tiny_state(), "token_embedding.weight": torch.zeros(1).expand(64, 32)}, tmp_path / "clip.pt")
    with pytest.raises(ValueError, match=r"clip\.pt: tensor 'token_embedding\.weight' .* view repeating 4 stored bytes"):
        load_clip(tmp_path / "clip.pt")


def test_views_of_one_storage_cannot_add_up_past_the_file(tmp_path):
    shared = torch.randn(256, 256)
    torch.save({f"v{i}": shared[i % 2:] for i in range(64)}, tmp_path / "views.pt")  # 64 views, one 256 KB storage
    with pytest.raises(ValueError, match=r"views\.pt: .*tensors add up to more than"):
        read_torch_file(tmp_path / "views.pt")


def test_a_deflated_torch_zip_inflating_past_the_file_is_refused(tmp_path):
    torch.save({"x": torch.zeros(2 ** 22)}, tmp_path / "plain.pt")  # 16 MiB of zeros
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / "bomb.pt").stat().st_size < 2 ** 20
    with pytest.raises(ValueError, match=r"bomb\.pt: refused .* inflate to \d+ bytes"):
        read_torch_file(tmp_path / "bomb.pt")


def _torchscript(path: Path, pad_code_to: int = 0, deflate=False) -> Path:
    torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(path) + ".orig")
    with zipfile.ZipFile(str(path) + ".orig") as src, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py") and pad_code_to:
                data += b" " * (pad_code_to - len(data))
                pad_code_to = 0
            dst.writestr(info.filename, data)
    return path


def test_a_torchscript_code_member_past_its_bound_is_not_read(tmp_path):
    ok = _torchscript(tmp_path / "ok.pt")
    assert set(read_torchscript_state_dict(ok)) == {"weight", "bias"}
    bomb = _torchscript(tmp_path / "bomb.pt", pad_code_to=MAX_CODE_MEMBER_BYTES + 1, deflate=True)
    assert bomb.stat().st_size < MAX_CODE_MEMBER_BYTES // 8
    with pytest.raises(ValueError, match=rf"bomb\.pt: archive member .*code/.*\.py declares {MAX_CODE_MEMBER_BYTES + 1} "
                                         r"bytes, more than"):
        read_torchscript_state_dict(bomb)
    with pytest.raises(ValueError, match=r"bomb\.pt: "):
        read_torch_file(bomb)


def test_a_torchscript_member_whose_header_understates_its_size_is_refused(tmp_path):
    path = _torchscript(tmp_path / "lying.pt", pad_code_to=MAX_CODE_MEMBER_BYTES + 1, deflate=True)
    raw = bytearray(path.read_bytes())
    # Patch the padded member's uncompressed size to 100 bytes, in its local and central headers.
    size = (MAX_CODE_MEMBER_BYTES + 1).to_bytes(4, "little")
    assert raw.count(size) == 2
    raw = raw.replace(size, (100).to_bytes(4, "little"))
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"lying\.pt: cannot read this TorchScript archive"):
        read_torchscript_state_dict(path)


_FAKE_BPE = types.SimpleNamespace(_encoder={"a": 0, "b": 1}, _ranks={("a", "b"): 0})


def test_a_huge_vocab_json_is_not_read(tmp_path, monkeypatch):
    from clip4clip.weights import hf
    monkeypatch.setattr(hf, "MAX_TOKENIZER_FILE_BYTES", 1000)
    (tmp_path / "vocab.json").write_text(json.dumps({f"tok{i}": i for i in range(500)}))
    with pytest.warns(UserWarning, match=r"vocab\.json: this tokenizer vocabulary is \d+ bytes; refused above 1000"):
        message = check_tokenizer_files(tmp_path, _FAKE_BPE)
    assert "vocab.json" in message


@pytest.mark.parametrize("content", ["[1, 2]", '{"a": "x"}', "{not json"])
def test_a_malformed_vocab_json_is_a_warning_not_a_traceback(tmp_path, content):
    (tmp_path / "vocab.json").write_text(content)
    with pytest.warns(UserWarning, match=r"vocab\.json"):
        assert "vocab.json" in check_tokenizer_files(tmp_path, _FAKE_BPE)


# --------------------------------------------------------------------------- 2. schemas of each config kind

@pytest.mark.parametrize("tower,field,value", [
    ("vision", "patch_size", 0), ("vision", "num_attention_heads", 0), ("vision", "hidden_act", ["gelu"]),
    ("text", "hidden_size", "32"), ("text", "num_hidden_layers", -1), ("text", "num_hidden_layers", True),
    ("text", "layer_norm_eps", "x"), ("vision", "image_size", [32]), ("text", "num_attention_heads", 3),
    ("top", "text_config", [1]), ("top", "projection_dim", 0), ("top", "projection_dim", 2.5)])
def test_malformed_hf_config_values_are_one_line_naming_the_field(tmp_path, tower, field, value):
    edit = {"top": {field: value}} if tower == "top" else {tower: {field: value}}
    folder = hf_folder(tmp_path / "hf", **edit.pop("top", {}), **edit)
    name = field if tower == "top" else f"{tower}_config.{field}"
    with pytest.raises(ValueError, match=rf"config\.json: not a valid Hugging Face CLIP config: {name}"):
        load_clip(folder)


@pytest.mark.parametrize("section,field,value", [
    ("vision_cfg", "head_width", 0), ("vision_cfg", "patch_size", 0), ("vision_cfg", "width", "32"),
    ("vision_cfg", "head_width", 20), ("text_cfg", "heads", -2), (None, "quick_gelu", "yes"),
    (None, "vision_cfg", [1]), (None, "embed_dim", None)])
def test_malformed_open_clip_config_values_are_one_line_naming_the_field(tmp_path, section, field, value):
    cfg = json.loads(json.dumps(OPEN_CLIP))
    target = cfg[section] if section else cfg
    if value is None:
        del target[field]
    else:
        target[field] = value
    name = f"model_cfg.{section}.{field}" if section else f"model_cfg.{field}"
    with pytest.raises(ValueError, match=rf"open_clip_config\.json: not a valid OpenCLIP model config: .*{field}"):
        load_clip(open_clip_folder(tmp_path / "oc", cfg))


@pytest.mark.parametrize("edit,named", [
    (lambda a: a["clip"].update(vision_heads=0), r"model_args\.clip\.vision_heads=0"),
    (lambda a: a["clip"].update(vision_layers="1"), r"model_args\.clip\.vision_layers='1'"),
    (lambda a: a["clip"].update(vision_patch_size=0), r"model_args\.clip\.vision_patch_size=0"),
    (lambda a: a["clip"].update(embed_dim=True), r"model_args\.clip\.embed_dim=True"),
    (lambda a: a["head_kwargs"].update(heads=0), r"model_args\.head_kwargs\.heads=0"),
    (lambda a: a["head_kwargs"].update(num_positions=[77]), r"model_args\.head_kwargs\.num_positions=\[77\]"),
    (lambda a: a.update(head="nope"), r"model_args\.head='nope'"),
    (lambda a: a.update(adapter={"name": "aim", "aim": {"num_frames": 0}}), r"model_args\.adapter\.aim\.num_frames=0"),
    (lambda a: a.update(clip=[1]), r"model_args\.clip is a list"),
])
def test_malformed_model_args_are_one_line_naming_the_field(tmp_path, edit, named):
    path = ours_checkpoint(tmp_path / "ours.pt", lambda c: edit(c["model_args"]))
    with pytest.raises(ValueError, match=rf"ours\.pt: malformed checkpoint: .*{named}"):
        load_model(path)


@pytest.mark.parametrize("weight_map,expected", [(["a.safetensors"], "'weight_map' is a list"),
                                                 ({}, "'weight_map' is empty"), (None, "'weight_map' is a NoneType")])
def test_a_malformed_hf_index_is_one_line(tmp_path, weight_map, expected):
    folder = hf_folder(tmp_path / "hf")
    (folder / "model.safetensors").rename(folder / "model-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=rf"model\.safetensors\.index\.json: {expected}"):
        load_clip(folder)


def test_json_that_does_not_parse_is_named_with_its_line_and_column(tmp_path):
    hf = hf_folder(tmp_path / "hf")
    (hf / "config.json").write_text('{"model_type": "clip",\n  "text_config": {')
    oc = open_clip_folder(tmp_path / "oc")
    (oc / "open_clip_config.json").write_text('{"model_cfg": {')
    index = hf_folder(tmp_path / "idx")
    (index / "model.safetensors").rename(index / "shard.safetensors")
    (index / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    for source, where in ((hf, hf / "config.json"), (oc, oc / "open_clip_config.json"),
                          (index, index / "model.safetensors.index.json")):
        with pytest.raises(ValueError) as e:
            load_clip(source)
        assert str(e.value).startswith(f"{where}: not valid JSON (line "), str(e.value)
        assert "column" in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_export_config_is_reported_as_such(tmp_path):
    out = tmp_path / "exported"
    assert export_main([str(ours_checkpoint(tmp_path / "ours.pt")), str(out)]) == 0
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text[: len(text) // 2])
    for call in (resolve_source, load_model):
        with pytest.raises(ValueError, match=rf"^{out / 'config.json'}: not valid JSON \(line \d+ column \d+"):
            call(out)


def test_a_folder_whose_config_is_neither_kind_says_so(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "config.json").write_text('{"format": "something-else/9"}')
    with pytest.raises(ValueError, match=r"f/config\.json: neither an export of this framework .* nor a Hugging Face"):
        load_model(tmp_path / "f")


def test_zero_heads_and_bad_sizes_are_refused_by_the_towers_themselves():
    with pytest.raises(ValueError, match="num_heads=0"):
        Attention(32, 0)
    with pytest.raises(ValueError, match=r"CLIP config: vision_heads=0"):
        CLIPConfig(**{**TINY, "vision_heads": 0})
    with pytest.raises(ValueError, match=r"image_resolution=30 is not a multiple of vision_patch_size=16"):
        CLIPConfig(**{**TINY, "image_resolution": 30})
    with pytest.raises(ValueError, match=r"transformer_heads=3 does not divide transformer_width=32"):
        CLIPConfig(**{**TINY, "transformer_heads": 3})


# --------------------------------------------------------------------------- 3. missing keys are named

@pytest.mark.parametrize("key,edit", [
    ("text_projection", lambda sd: sd.pop("text_projection")),
    ("visual.positional_embedding", lambda sd: sd.update({"visual.positional_embedding": torch.tensor(1.0)})),
    ("token_embedding.weight", lambda sd: sd.update({"token_embedding.weight": torch.zeros(64)})),
    ("visual.positional_embedding", lambda sd: sd.update({"visual.positional_embedding": torch.zeros(3, 32)}))])
def test_an_openai_layout_file_missing_a_key_names_the_file_and_key(tmp_path, key, edit):
    sd = tiny_state()
    edit(sd)
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(ValueError, match=rf"clip\.pt: cannot read the architecture off the weights: '{key}'"):
        load_clip(tmp_path / "clip.pt")


def test_a_checkpoint_missing_model_names_the_file_and_key(tmp_path):
    path = ours_checkpoint(tmp_path / "ours.pt", lambda c: c.pop("model"))
    with pytest.raises(ValueError, match=r"ours\.pt: malformed checkpoint: 'model' \(the state dict\) is missing"):
        read_checkpoint(path)
    path = ours_checkpoint(tmp_path / "nocfg.pt", lambda c: c.update(config=[1], tokenizer={"words": 3}))
    with pytest.raises(ValueError, match=r"nocfg\.pt: malformed checkpoint: config=\[1\] .*'tokenizer' is"):
        read_checkpoint(path)


def test_an_official_checkpoint_missing_a_head_key_names_it(tmp_path):
    sd = {f"clip.{k}": v for k, v in tiny_state().items()}
    sd["transformerClip.resblocks.0.ln_1.weight"] = torch.ones(16)
    torch.save(sd, tmp_path / "pytorch_model.bin.1")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin\.1: a seqTransf checkpoint without "
                                         r"'frame_position_embeddings\.weight'"):
        load_official_checkpoint(tmp_path / "pytorch_model.bin.1")


def test_a_truncated_safetensors_file_is_named_truncated(tmp_path):
    folder = hf_folder(tmp_path / "hf")
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"hf/model\.safetensors: .*truncated \(its header describes \d+ bytes, "
                                         r"the file holds \d+\)"):
        load_clip(folder)


# --------------------------------------------------------------------------- 4. paths stay inside their folders

@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An HF cache holding org/tiny at commit COMMIT (refs/main), in huggingface_hub's layout:
    snapshot files are links to ../../blobs/."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "hub" / "models--org--tiny"
    snap = root / "snapshots" / COMMIT
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in hf_folder(tmp_path / "src").iterdir():
        (root / "blobs" / f.name).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(root / "blobs" / f.name, snap))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return root


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_cache_resolves_by_branch_and_commit(hub):
    assert resolve_hf("org/tiny") == hub / "snapshots" / COMMIT
    assert resolve_hf(f"org/tiny@{COMMIT}") == hub / "snapshots" / COMMIT
    load_clip("hf:org/tiny")


@pytest.mark.parametrize("revision", ["../../x", "/etc", "a/../b", ".hidden", "a\\b", "a\0b", "a//b", "x" * 300])
def test_a_revision_that_could_leave_the_cache_is_refused(hub, revision):
    with pytest.raises(ValueError, match=r"revision .* is not a branch, tag or commit name"):
        resolve_hf(f"org/tiny@{revision}")


def test_pull_request_revisions_are_accepted(hub):
    with pytest.raises(FileNotFoundError, match=r"hf:org/tiny@refs/pr/1 is not in the cache"):
        resolve_hf("org/tiny@refs/pr/1")


@pytest.mark.parametrize("content", ["../../../../etc", "/etc", "main", COMMIT + "/.."])
def test_a_refs_file_holding_anything_but_a_commit_is_refused(hub, content):
    (hub / "refs" / "main").write_text(content)
    with pytest.raises(ValueError, match=r"hf:org/tiny@main: the cache.s .*refs/main holds .* expected the 40-hex"):
        resolve_hf("org/tiny")


def test_a_snapshot_linking_outside_the_cache_is_refused(hub, tmp_path):
    other = "f" * 40
    (hub / "snapshots" / other).symlink_to(tmp_path / "src")
    (hub / "refs" / "v2").write_text(other)
    with pytest.raises(ValueError, match=r"leads to .*src, outside .*snapshots"):
        resolve_hf("org/tiny@v2")


def _sharded(folder: Path, link_to: Path) -> Path:
    (folder / "model.safetensors").rename(link_to)
    (folder / "model-00001.safetensors").symlink_to(link_to)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001.safetensors"}}))
    return folder


def test_a_shard_linking_out_of_its_folder_is_refused(tmp_path):
    folder = _sharded(hf_folder(tmp_path / "hf"), tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match=r"index\.json: 'weight_map' 'model-00001\.safetensors' is a link to .*outside"):
        load_clip(folder)


def test_a_cached_shard_may_link_into_its_repositorys_blobs_only(hub, tmp_path):
    snap = hub / "snapshots" / COMMIT
    target = hub / "blobs" / "shard-blob"
    (snap / "model.safetensors").unlink()
    (hub / "blobs" / "model.safetensors").rename(target)
    (snap / "model-00001.safetensors").symlink_to(os.path.relpath(target, snap))
    index = {"weight_map": {k: "model-00001.safetensors" for k in _to_hf(tiny_state())}}
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    load_clip("hf:org/tiny")  # into ../../blobs: the cache's own layout
    (snap / "model-00001.safetensors").unlink()
    target.rename(tmp_path / "away.safetensors")
    (snap / "model-00001.safetensors").symlink_to(tmp_path / "away.safetensors")
    with pytest.raises(ValueError, match=r"is a link to .*away\.safetensors, outside .*models--org--tiny"):
        load_clip(snap)


@pytest.mark.parametrize("name", ["../x.safetensors", "/abs/x.safetensors"])
def test_shard_names_that_are_paths_are_refused(tmp_path, name):
    folder = hf_folder(tmp_path / "hf")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": name}}))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"'weight_map' is .*not a path"):
        load_clip(folder)


# --------------------------------------------------------------------------- 5. export writes nothing on refusal

@pytest.mark.parametrize("edit,named", [
    (lambda c: c.update(tokenizer={"kind": "word", "version": 1, "words": 5}), "'tokenizer'"),
    (lambda c: c["model_args"]["clip"].update(vision_heads=0), r"model_args\.clip\.vision_heads=0"),
    (lambda c: c["model"].pop("clip.visual.proj"), r"missing keys \(1\): clip\.visual\.proj"),
    (lambda c: c["model"].update({"clip.visual.proj": torch.zeros(3, 5)}), r"clip\.visual\.proj is \[3, 5\]"),
    (lambda c: c["config"].update(weird=torch.zeros(2)), "cannot be written to config.json"),
])
def test_export_of_a_malformed_checkpoint_writes_nothing(tmp_path, capsys, edit, named):
    path = ours_checkpoint(tmp_path / "ours.pt", edit)
    out = tmp_path / "exported"
    for argv in ([str(path), str(out)], [str(path), str(out), "--no-verify"]):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and "ours.pt" in err, err
        assert __import__("re").search(named, err), err
        assert not out.exists()


def test_a_refused_export_leaves_an_existing_one_as_it_was(tmp_path, capsys):
    out = tmp_path / "exported"
    assert export_main([str(ours_checkpoint(tmp_path / "good.pt")), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = ours_checkpoint(tmp_path / "bad.pt", lambda c: c["model"].pop("clip.visual.proj"))
    with pytest.raises(SystemExit):
        export_main([str(bad), str(out), "--force"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    load_model(out)
