"""Hugging Face and OpenCLIP checkpoints in our towers, the Hugging Face cache, safetensors
exports. Parity is against ``transformers`` itself (a test-only dependency) on tiny random
models saved with ``save_pretrained``; nothing is downloaded."""
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.weights.clip_weights import load_clip, read_clip_weights
from clip4clip.weights.hf import check_tokenizer_files, hf_to_openai_state_dict
from clip4clip.tokenizer import ClipTokenizer, _clean_text

import transformers  # noqa: E402  (the dev extra; a missing install fails here rather than skipping)
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT_WIDTH, VISION_WIDTH, EMBED = 32, 48, 24
ATOL = 1e-5


def _tiny_hf(hidden_act="quick_gelu", seed=0):
    """A random transformers CLIPModel with every parameter perturbed (LayerNorms included, so
    a swapped weight/bias or a missed transpose cannot hide behind an identity init)."""
    text = dict(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act=hidden_act, layer_norm_eps=1e-5)
    vision = dict(hidden_size=VISION_WIDTH, intermediate_size=4 * VISION_WIDTH, num_hidden_layers=2,
                  num_attention_heads=3, image_size=32, patch_size=8, hidden_act=hidden_act, layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                           projection_dim=EMBED)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(42.0))
    return model


def _save_hf(model, folder: Path, fmt: str) -> Path:
    model.save_pretrained(str(folder))
    if fmt == "bin":  # what save_pretrained(safe_serialization=False) wrote, as older checkpoints have it
        sd = load_file(str(folder / "model.safetensors"))
        # transformers < 4.31 saved the position_ids buffers: they must be dropped, not refused.
        sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        (folder / "model.safetensors").unlink()
        torch.save(sd, folder / "pytorch_model.bin")
    return folder


def _features(out):
    # transformers 5 returns a BaseModelOutputWithPooling (projected features in pooler_output).
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def bpe_tokenizer(bpe_vocab_path):
    return ClipTokenizer(vocab_path=bpe_vocab_path)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path):
    """No test reaches the network or the user's caches."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("the network was used")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def _inputs(tokenizer):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    ids, _ = tokenizer(["a photo of a cat", "a man is cooking pasta in a small kitchen",
                        "dogs " * 40], max_words=32)  # the last is cut: EOT at the final position
    return images, ids


# --------------------------------------------------------------------------- Hugging Face parity

@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_hf_checkpoint_features_equal_transformers(tmp_path, bpe_tokenizer, fmt, hidden_act):
    hf = _tiny_hf(hidden_act)
    folder = _save_hf(hf, tmp_path / "ckpt", fmt)
    ours = load_clip(f"hf:{folder}").eval()
    assert ours.config.activation == hidden_act
    assert (ours.config.transformer_heads, ours.config.vision_heads) == (2, 3)  # from config.json, not width // 64
    images, ids = _inputs(bpe_tokenizer)
    with torch.no_grad():
        hf_img = _features(hf.get_image_features(pixel_values=images))
        hf_txt = _features(hf.get_text_features(input_ids=ids))
        img, txt = ours.encode_image(images), ours.encode_text(ids)
    torch.testing.assert_close(img, hf_img, rtol=0, atol=ATOL)
    torch.testing.assert_close(txt, hf_txt, rtol=0, atol=ATOL)
    assert ours.logit_scale.item() == pytest.approx(math.log(42.0))
    # A plain folder path (no hf: prefix) reads the same way.
    again = load_clip(folder).eval()
    with torch.no_grad():
        assert torch.equal(again.encode_text(ids), txt)


def test_hf_weights_file_alone_reads_its_config_beside_it(tmp_path, bpe_tokenizer):
    hf = _tiny_hf()
    folder = _save_hf(hf, tmp_path / "ckpt", "safetensors")
    sd, config = read_clip_weights(folder / "model.safetensors")
    assert config.vision_heads == 3 and "visual.proj" in sd
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "model.safetensors", lone / "model.safetensors")
    with pytest.raises(ValueError, match="no CLIP config.json beside them"):
        read_clip_weights(lone / "model.safetensors")


def test_hf_conversion_lists_every_unconverted_key():
    sd = {k: v for k, v in _tiny_hf().state_dict().items()}
    sd["text_model.embeddings.extra_scale"] = torch.ones(1)
    sd["vision_model.encoder.layers.0.self_attn.rotary.weight"] = torch.ones(1)
    with pytest.raises(ValueError) as e:
        hf_to_openai_state_dict(sd, "ckpt")
    msg = str(e.value)
    assert "2 key(s)" in msg and "text_model.embeddings.extra_scale" in msg
    assert "vision_model.encoder.layers.0.self_attn.rotary.weight" in msg and "\n" not in msg
    del sd["text_model.embeddings.extra_scale"], sd["vision_model.encoder.layers.0.self_attn.rotary.weight"]
    del sd["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"transformer\.resblocks\.1\.attn\.in_proj_bias lacks the k projection"):
        hf_to_openai_state_dict(sd, "ckpt")


def test_hf_variants_our_towers_lack_are_refused(tmp_path):
    folder = _save_hf(_tiny_hf(), tmp_path / "ckpt", "safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 100
    cfg["text_config"]["layer_norm_eps"] = 1e-6
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        load_clip(folder)
    assert "vision intermediate_size 100" in str(e.value) and "text layer_norm_eps 1e-06" in str(e.value)


def test_explicit_activation_overrides_the_checkpoint_with_a_warning(tmp_path, bpe_tokenizer):
    """The wrong activation is not an error: features stay plausible but differ (what the README's
    zero-shot check is for). Here it moves features by far more than the parity tolerance."""
    hf = _tiny_hf("gelu")
    folder = _save_hf(hf, tmp_path / "ckpt", "safetensors")
    with pytest.warns(UserWarning, match="overrides 'gelu'"):
        wrong = load_clip(folder, activation="quick_gelu").eval()
    images, ids = _inputs(bpe_tokenizer)
    with torch.no_grad():
        diff = (wrong.encode_image(images) - _features(hf.get_image_features(pixel_values=images))).abs().max()
        cos = F.cosine_similarity(wrong.encode_text(ids), _features(hf.get_text_features(input_ids=ids))).min()
    assert diff > 1e-3 and cos > 0.5  # different, yet still similar: plausible-looking output


# --------------------------------------------------------------------------- tokenizer

def _write_hf_tokenizer_files(tokenizer: ClipTokenizer, folder: Path) -> Path:
    """vocab.json / merges.txt as transformers' CLIP conversion writes them from the BPE file:
    token -> id for all 49408 ids, and the 48894 merges in rank order after a version header."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer._encoder, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tokenizer._ranks, key=tokenizer._ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    return folder


def test_tokenizer_ids_equal_transformers_clip_tokenizer_on_golden_lines(tmp_path, reference_dir, bpe_tokenizer):
    folder = _write_hf_tokenizer_files(bpe_tokenizer, tmp_path / "tok")
    hf_tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (bpe_tokenizer.sot_token_id, bpe_tokenizer.eot_token_id)
    lines = [json.loads(line) for line in (reference_dir / "tokenizer_golden.jsonl").read_text().splitlines()]
    assert len(lines) == 630
    raw_differs = 0
    for row in lines:
        ours = bpe_tokenizer.encode(row["text"])
        assert ours == row["bpe_ids"]
        # transformers' tokenizer normalises with NFC + lower-case only; CLIP cleans with ftfy and
        # html.unescape first. On CLIP-cleaned text the BPE must agree id for id.
        theirs = hf_tok(_clean_text(row["text"]), add_special_tokens=False)["input_ids"]
        assert theirs == ours, row["text"]
        with_specials = hf_tok(_clean_text(row["text"]))["input_ids"]
        assert with_specials == [bpe_tokenizer.sot_token_id, *ours, bpe_tokenizer.eot_token_id]
        raw_differs += hf_tok(row["text"], add_special_tokens=False)["input_ids"] != ours
    assert raw_differs < len(lines) // 10  # the lines with entities, ligatures, mojibake...
    assert check_tokenizer_files(folder, bpe_tokenizer) is None


def test_tokenizer_files_that_differ_from_clips_bpe_are_warned(tmp_path, bpe_tokenizer):
    folder = _write_hf_tokenizer_files(bpe_tokenizer, tmp_path / "tok")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["hello</w>"], vocab["world</w>"] = vocab["world</w>"], vocab["hello</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"vocab\.json differs from CLIP's vocabulary at id \d+: "
                                         r"'(hello|world)</w>' there, '(world|hello)</w>' in CLIP's"):
        check_tokenizer_files(folder, bpe_tokenizer)
    _write_hf_tokenizer_files(bpe_tokenizer, folder)
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[6] = "x y"
    (folder / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"merges\.txt differs from CLIP's merges at merge 5: 'x y' there"):
        check_tokenizer_files(folder, bpe_tokenizer)


def test_loading_an_hf_folder_checks_its_tokenizer_files(tmp_path, monkeypatch, bpe_tokenizer, bpe_vocab_path):
    monkeypatch.setenv("CLIP4CLIP_BPE_VOCAB", str(bpe_vocab_path))
    folder = _save_hf(_tiny_hf(), tmp_path / "ckpt", "safetensors")
    _write_hf_tokenizer_files(bpe_tokenizer, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_clip(folder)
    (folder / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="merges.txt"):
        load_clip(folder)


# --------------------------------------------------------------------------- OpenCLIP

def _reference_forward(sd, cfg, images, ids):
    """CLIP written out with plain tensor ops and exact GELU, from the OpenCLIP state dict:
    an independent re-computation of what our towers must give."""
    def block(x, p, heads, causal):
        n, length, d = x.shape
        h = F.layer_norm(x, (d,), p["ln_1.weight"], p["ln_1.bias"], 1e-5)
        q, k, v = (h @ p["attn.in_proj_weight"].t() + p["attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        if causal:
            scores = scores + torch.full((length, length), float("-inf")).triu(1)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
        x = x + out @ p["attn.out_proj.weight"].t() + p["attn.out_proj.bias"]
        h = F.layer_norm(x, (d,), p["ln_2.weight"], p["ln_2.bias"], 1e-5)
        h = F.gelu(h @ p["mlp.c_fc.weight"].t() + p["mlp.c_fc.bias"])
        return x + h @ p["mlp.c_proj.weight"].t() + p["mlp.c_proj.bias"]

    def tower(x, prefix, layers, heads, causal):
        for i in range(layers):
            pre = f"{prefix}{i}."
            x = block(x, {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, heads, causal)
        return x

    v, t = cfg["model_cfg"]["vision_cfg"], cfg["model_cfg"]["text_cfg"]
    x = F.conv2d(images, sd["visual.conv1.weight"], stride=v["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (v["width"],), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], 1e-5)
    x = tower(x, "visual.transformer.resblocks.", v["layers"], v["width"] // v["head_width"], False)
    img = F.layer_norm(x[:, 0], (v["width"],), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    x = tower(x, "transformer.resblocks.", t["layers"], t["heads"], True)
    x = F.layer_norm(x, (t["width"],), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    txt = x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return img, txt


def _open_clip_checkpoint(folder: Path, fmt: str = "bin", quick_gelu=None, with_config=True):
    """OpenCLIP's layout: OpenAI's keys plus the attn_mask buffer older versions saved. The
    vision head width is 16 (3 heads at width 48): OpenAI's width // 64 rule would give 1."""
    model_cfg = {"embed_dim": EMBED,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": VISION_WIDTH, "patch_size": 8, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": 2, "layers": 2}}
    if quick_gelu is not None:
        model_cfg["quick_gelu"] = quick_gelu
    torch.manual_seed(3)
    sd = CLIP(CLIPConfig(embed_dim=EMBED, image_resolution=32, vision_layers=2, vision_width=VISION_WIDTH,
                         vision_patch_size=8, transformer_width=TEXT_WIDTH, transformer_heads=2, transformer_layers=2,
                         vision_heads=3)).state_dict()
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in sd.items()}
    sd["attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file(sd, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(sd, folder / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                      "std": [0.26862954, 0.26130258, 0.27577711]}}
    if with_config:
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return sd, cfg


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_open_clip_gelu_checkpoint_matches_a_plain_recomputation(tmp_path, bpe_tokenizer, fmt):
    sd, cfg = _open_clip_checkpoint(tmp_path / "oc", fmt)
    ours = load_clip(tmp_path / "oc").eval()
    assert ours.config.activation == "gelu" and ours.config.vision_heads == 3
    images, ids = _inputs(bpe_tokenizer)
    with torch.no_grad():
        ref_img, ref_txt = _reference_forward(sd, cfg, images, ids)
        torch.testing.assert_close(ours.encode_image(images), ref_img, rtol=0, atol=ATOL)
        torch.testing.assert_close(ours.encode_text(ids), ref_txt, rtol=0, atol=ATOL)
        # The same weights read as QuickGELU (OpenAI's activation) give other features.
        with pytest.warns(UserWarning, match="overrides 'gelu'"):
            wrong = load_clip(tmp_path / "oc", activation="quick_gelu").eval()
        assert (wrong.encode_image(images) - ref_img).abs().max() > 1e-3
    # The weights file named directly finds its config beside it.
    weights = "open_clip_model.safetensors" if fmt == "safetensors" else "open_clip_pytorch_model.bin"
    assert load_clip(tmp_path / "oc" / weights).config.activation == "gelu"


def test_open_clip_quick_gelu_models_and_bare_files(tmp_path):
    _open_clip_checkpoint(tmp_path / "q", quick_gelu=True)
    assert load_clip(tmp_path / "q").config.activation == "quick_gelu"
    _open_clip_checkpoint(tmp_path / "bare", with_config=False)
    with pytest.raises(ValueError, match="activation is unknown.*activation='gelu'"):
        load_clip(tmp_path / "bare")
    assert load_clip(tmp_path / "bare", activation="gelu").config.activation == "gelu"


def test_open_clip_variants_our_towers_lack_are_refused(tmp_path):
    sd, cfg = _open_clip_checkpoint(tmp_path / "oc")
    cfg["model_cfg"]["vision_cfg"]["mlp_ratio"] = 4.3637
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "roberta-base"
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="text_cfg.hf_model_name='roberta-base'.*vision_cfg.mlp_ratio=4.3637"):
        load_clip(tmp_path / "oc")
    sd, _ = _open_clip_checkpoint(tmp_path / "oc")
    torch.save({**sd, "logit_bias": torch.zeros(()), "attn_mask": torch.zeros(77, 77)},
               tmp_path / "oc" / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="attn_mask' is not CLIP's causal mask"):
        load_clip(tmp_path / "oc")
    torch.save({**sd, "logit_bias": torch.zeros(())}, tmp_path / "oc" / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="logit_bias"):
        load_clip(tmp_path / "oc")


# --------------------------------------------------------------------------- Hugging Face cache

def _populate_cache(hub: Path, repo: str, source: Path, revision="0123456789abcdef0123456789abcdef01234567"):
    """The cache layout huggingface_hub writes: blobs, snapshot links to them, refs/main."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in source.iterdir():
        blob = root / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return revision


def test_offline_with_an_empty_cache_is_one_line_naming_the_repo(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_clip("hf:openai/clip-vit-base-patch32")
    msg = str(e.value)
    assert "\n" not in msg and "openai/clip-vit-base-patch32" in msg and "HF_HUB_OFFLINE" in msg
    assert str(tmp_path / "hf-home" / "hub" / "models--openai--clip-vit-base-patch32") in msg


def test_a_populated_cache_resolves_without_network(tmp_path, monkeypatch, bpe_tokenizer):
    hf = _tiny_hf()
    source = _save_hf(hf, tmp_path / "src", "safetensors")
    rev = _populate_cache(tmp_path / "hf-home" / "hub", "org/tiny-clip", source)
    images, ids = _inputs(bpe_tokenizer)
    with torch.no_grad():
        want = _features(hf.get_image_features(pixel_values=images))
    for offline in ("1", "0"):  # online too: a complete cached snapshot needs no network call
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        for name in ("hf:org/tiny-clip", f"hf:org/tiny-clip@{rev}", "hf:org/tiny-clip@main"):
            with torch.no_grad():
                torch.testing.assert_close(load_clip(name).eval().encode_image(images), want, rtol=0, atol=ATOL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf:org/tiny-clip@v2 is not in the cache"):
        load_clip("hf:org/tiny-clip@v2")


def test_downloads_go_through_the_huggingface_hub_client(tmp_path, monkeypatch):
    """Online with an empty cache: the files are fetched with hf_hub_download (its progress bars
    and cache layout); files the repository lacks are skipped, the first weights layout is used."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    remote = _save_hf(_tiny_hf(), tmp_path / "remote", "bin")
    asked = []

    def fake_download(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        asked.append(filename)
        if not (remote / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        snap = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "abc"
        snap.mkdir(parents=True, exist_ok=True)
        shutil.copy(remote / filename, snap / filename)
        return str(snap / filename)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_clip("hf:org/remote-clip")
    assert model.config.vision_heads == 3
    assert asked[:3] == ["config.json", "model.safetensors", "model.safetensors.index.json"]
    assert "pytorch_model.bin" in asked and "vocab.json" in asked

    def unreachable(repo_id, filename, **kw):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic "
                                      "has been disabled.\nmore lines")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(FileNotFoundError) as e:
        load_clip("hf:org/other-clip")
    assert "\n" not in str(e.value) and "org/other-clip" in str(e.value) and "hf download" in str(e.value)


# --------------------------------------------------------------------------- safetensors, config

def test_openai_layout_safetensors_file_and_corrupt_file(tmp_path):
    model = CLIP(CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=64,
                            vision_patch_size=16, context_length=16, vocab_size=100, transformer_width=64,
                            transformer_layers=1))
    save_file(model.state_dict(), str(tmp_path / "clip.safetensors"))
    back = load_clip(tmp_path / "clip.safetensors")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"bad\.safetensors: cannot read .* not a valid safetensors file"):
        load_clip(tmp_path / "bad.safetensors")


def test_clip_config_activation_field():
    cfg = CLIPConfig(activation="gelu")
    assert cfg.to_dict()["activation"] == "gelu"
    old = {k: v for k, v in CLIPConfig().to_dict().items() if k != "activation"}  # a checkpoint from before
    assert CLIPConfig.from_dict(old).activation == "quick_gelu"
    with pytest.raises(ValueError, match="activation='relu'"):
        CLIPConfig(activation="relu")
    small = dict(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=16, vocab_size=100, transformer_width=64, transformer_layers=1)
    acts = {type(m).__name__ for m in CLIP(CLIPConfig(**small, activation="gelu")).modules()}
    assert "GELU" in acts and "QuickGELU" not in acts
    acts = {type(m).__name__ for m in CLIP(CLIPConfig(**small)).modules()}
    assert "QuickGELU" in acts and "GELU" not in acts


def test_runtime_code_never_imports_transformers():
    offenders = [str(p.relative_to(REPO)) for d in ("clip4clip", "adapters", "data") for p in (REPO / d).rglob("*.py")
                 if "import transformers" in p.read_text() or "from transformers" in p.read_text()]
    assert offenders == []


# --------------------------------------------------------------------------- export

def _tiny_run(tmp_path: Path, activation="gelu") -> Path:
    """A run folder with one of our (evaluation) checkpoints: a tiny seqTransf model with a word
    vocabulary, written as train.py writes best.pt."""
    from clip4clip.builder import model_args, tokenizer_state
    from clip4clip.weights import build_model
    from clip4clip.weights.checkpoints import FORMAT
    from clip4clip.engine.saving import atomic_save
    from clip4clip.tokenizer import WordTokenizer

    tok = WordTokenizer.build(["a man is cooking", "a dog runs on the beach"])
    arch = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_heads=2,
                vision_patch_size=16, context_length=16, vocab_size=tok.vocab_size, transformer_width=32,
                transformer_heads=2, transformer_layers=1, activation=activation)
    mcfg = {"clip": {"arch": arch}, "head": {"name": "seqTransf", "num_blocks": 1}, "tokenizer": "word",
            "max_words": 16}
    torch.manual_seed(0)
    model = build_model(mcfg).eval()
    run = tmp_path / "run"
    atomic_save({"format": FORMAT, "contents": "eval", "model": model.state_dict(),
                 "model_args": model_args(model, mcfg), "tokenizer": tokenizer_state(tok),
                 "config": {"model": mcfg, "dataset": {"name": "synthetic", "fps": 1.0}},
                 "state": {"epoch": 3, "step": 30, "best_epoch": 3, "best_score": 12.5}, "weights": "full"},
                run / "checkpoints" / "best.pt")
    return run, model, tok


def test_export_round_trip_gives_identical_outputs(tmp_path, capsys):
    from clip4clip.builder import build_tokenizer
    from clip4clip.weights.checkpoints import load_model_from_checkpoint
    from clip4clip.weights.checkpoints import exported_checkpoint
    from clip4clip.weights.export import main
    from clip4clip.weights.exported import is_exported_folder, load_exported

    run, model, tok = _tiny_run(tmp_path)
    out = tmp_path / "exported"
    assert main([str(run), str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_args"]["clip"]["activation"] == "gelu" and meta["tokenizer"]["kind"] == "word"
    assert is_exported_folder(out) and not is_exported_folder(run)
    # Plain safetensors: a JSON header then raw bytes, nothing to unpickle.
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["clip4clip"] == meta["format"]

    loaded, tok_state, config = load_exported(out)
    loaded.eval()
    assert config["model"]["max_words"] == 16 and config["dataset"]["name"] == "synthetic"
    tok2 = build_tokenizer({"tokenizer": "word"}, state=tok_state)
    ids, mask = tok(["a dog is cooking", "the man runs"], max_words=16)
    assert torch.equal(tok2(["a dog is cooking", "the man runs"], max_words=16)[0], ids)
    torch.manual_seed(5)
    video, vmask = torch.randn(2, 3, 3, 32, 32), torch.tensor([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids, mask), model.encode_text(ids, mask))
        assert torch.equal(loaded.encode_video(video, vmask), model.encode_video(video, vmask))
        # As a checkpoint dict, through the loader every entry point uses for ours.
        again = load_model_from_checkpoint(exported_checkpoint(out), str(out)).eval()
        assert torch.equal(again.encode_video(video, vmask), model.encode_video(video, vmask))
    assert exported_checkpoint(out)["state"]["best_epoch"] == 3

    with pytest.raises(SystemExit) as e:  # an existing export is not overwritten silently
        main([str(run), str(out)])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert main([str(run / "checkpoints" / "best.pt"), str(out), "--force"]) == 0
