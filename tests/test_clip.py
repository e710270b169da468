"""CLIP towers: parity with OpenAI's outputs, architecture inference, weight loading."""
import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.weights import clip_weights as pretrained_mod
from clip4clip.weights import load_clip
from clip4clip.weights.clip_state import read_state_dict


@pytest.fixture(scope="module")
def tiny(reference_dir):
    sd = torch.load(reference_dir / "clip_tiny_openai_state_dict.pt", weights_only=True)
    golden = torch.load(reference_dir / "clip_tiny_golden.pt", weights_only=False)
    return sd, golden


def test_config_inferred_from_state_dict(tiny):
    sd, golden = tiny
    cfg = CLIPConfig.from_state_dict(sd)
    for key, value in golden["config"].items():
        assert getattr(cfg, key) == value, key


def test_tiny_clip_matches_openai_outputs(tiny):
    sd, golden = tiny
    model = CLIP(CLIPConfig.from_state_dict(sd))
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(golden["images"])
        txt = model.encode_text(golden["texts"])
        logits_per_image, logits_per_text = model(golden["images"], golden["texts"])
    assert (img - golden["image_features"]).abs().max() < 1e-4
    assert (txt - golden["text_features"]).abs().max() < 1e-4
    assert (logits_per_image - golden["logits_per_image"]).abs().max() < 1e-4
    assert torch.equal(logits_per_text, logits_per_image.t())


@pytest.mark.parametrize("name,expected", [
    ("ViT-B/32", dict(vision_width=768, vision_patch_size=32, image_resolution=224, vision_layers=12, embed_dim=512)),
    ("ViT-B/16", dict(vision_width=768, vision_patch_size=16, image_resolution=224, vision_layers=12, embed_dim=512)),
    ("ViT-L/14", dict(vision_width=1024, vision_patch_size=14, image_resolution=224, vision_layers=24, embed_dim=768)),
    ("ViT-L/14@336px", dict(vision_width=1024, vision_patch_size=14, image_resolution=336, vision_layers=24, embed_dim=768)),
])
def test_released_architectures_roundtrip_through_state_dict_shapes(name, expected):
    # Built on the meta device: only shapes, no memory, so the real sizes are cheap to check.
    text_width = 768 if "L/14" in name else 512
    cfg = CLIPConfig(transformer_width=text_width, transformer_heads=text_width // 64, **expected)
    with torch.device("meta"):
        model = CLIP(cfg)
    inferred = CLIPConfig.from_state_dict(model.state_dict())
    for key, value in expected.items():
        assert getattr(inferred, key) == value
    assert inferred.transformer_width == text_width and inferred.context_length == 77
    assert inferred.vocab_size == 49408
    assert model.visual.transformer.heads == expected["vision_width"] // 64


def test_resnet_state_dict_is_refused_by_name():
    with pytest.raises(ValueError, match="ResNet"):
        CLIPConfig.from_state_dict({"visual.layer1.0.conv1.weight": torch.zeros(1)})


def test_gradient_checkpointing_gives_same_outputs_and_grads(tiny):
    sd, golden = tiny
    results = []
    for enable in (False, True):
        model = CLIP(CLIPConfig.from_state_dict(sd))
        model.load_state_dict(sd)
        model.set_grad_checkpointing(enable)
        assert model.visual.transformer.grad_checkpointing is enable
        assert model.transformer.grad_checkpointing is enable
        logits, _ = model(golden["images"], golden["texts"])
        logits.sum().backward()
        results.append((logits.detach(), model.visual.conv1.weight.grad.clone(),
                        model.token_embedding.weight.grad.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6)


def test_text_longer_than_context_is_an_error(tiny):
    sd, _ = tiny
    model = CLIP(CLIPConfig.from_state_dict(sd))
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def _tiny_config():
    return CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32,
                      vision_patch_size=8, context_length=8, vocab_size=50, transformer_width=32,
                      transformer_heads=2, transformer_layers=1)


def test_torchscript_archive_with_fp16_weights_loads_as_float32(tmp_path):
    model = CLIP(_tiny_config()).half()
    # A released checkpoint is a TorchScript archive in float16 carrying the three
    # non-parameter buffers; reproduce that with a scripted wrapper.

    class Released(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            for name, child in clip.named_children():
                self.add_module(name, child)
            for name, p in clip.named_parameters(recurse=False):
                self.register_parameter(name, p)
            self.register_buffer("input_resolution", torch.tensor(16))
            self.register_buffer("context_length", torch.tensor(8))
            self.register_buffer("vocab_size", torch.tensor(50))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logit_scale * x

    archive = tmp_path / "ViT-tiny.pt"
    # Tracing keeps every submodule's parameters in the archive, as the released files do.
    torch.jit.trace(Released(model), torch.ones(1, dtype=torch.float16)).save(str(archive))
    loaded = load_clip(archive)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = model.float().state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_plain_state_dict_file_with_module_prefix_loads(tmp_path):
    model = CLIP(_tiny_config())
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = load_clip(path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(loaded.encode_image(x), model.encode_image(x))


def test_unknown_name_and_garbage_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ViT-B/32"):
        load_clip("ViT-H/99")
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    with pytest.raises(ValueError, match="bad.pt"):
        load_clip(bad)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_released_name_downloads_into_cache_with_checksum(http_dir, tmp_path, monkeypatch):
    root, url = http_dir
    model = CLIP(_tiny_config())
    payload = root / "abc" / "ViT-T.pt"
    payload.parent.mkdir()
    torch.save(model.state_dict(), payload)
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained_mod, "_BASE_URL", url)
    monkeypatch.setitem(pretrained_mod.PRETRAINED, "ViT-T", ("abc", "ViT-T.pt"))
    monkeypatch.setattr(pretrained_mod, "pretrained_url", lambda name: f"{url}/abc/ViT-T.pt")
    cache = tmp_path / "cache"

    # Wrong checksum: refused, and nothing is left in the cache.
    monkeypatch.setitem(pretrained_mod.PRETRAINED, "ViT-T", ("0" * 64, "ViT-T.pt"))
    with pytest.raises(Exception, match="(?i)checksum|sha256"):
        load_clip("ViT-T", cache_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []

    monkeypatch.setitem(pretrained_mod.PRETRAINED, "ViT-T", (sha, "ViT-T.pt"))
    loaded = load_clip("ViT-T", cache_dir=cache, progress=False)
    assert (cache / "ViT-T.pt").is_file()
    assert torch.equal(loaded.visual.proj, model.visual.proj)


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_mod, "_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(Exception) as info:
        load_clip("ViT-B/32", cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "ViT-B-32.pt" in message and str(tmp_path) in message


def test_read_state_dict_converts_fp16(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(2, dtype=torch.float16), "input_resolution": torch.tensor(224)}, path)
    sd = read_state_dict(path)
    assert sd["a"].dtype == torch.float32 and "input_resolution" not in sd
