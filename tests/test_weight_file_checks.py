"""Files named inside weight files stay inside their folder, and a FIFO is refused at once
instead of blocking (issue 26, items 1 and 4, for the weights package)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.weights import load_clip, read_torch_file
from clip4clip.weights.files import file_in_folder
from clip4clip.weights.hf import read_hf_folder

TINY = dict(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
            context_length=8, vocab_size=64, transformer_width=32, transformer_heads=2, transformer_layers=1)


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "sub/x.bin", "", ".", "..", None, 7, "a\\b"])
def test_file_names_read_from_files_must_be_plain_names(tmp_path, name):
    with pytest.raises(ValueError, match=r"index.json: 'weight_map' is .*expected the name of a file in"):
        file_in_folder(tmp_path, name, tmp_path / "index.json", "weight_map")


def test_a_plain_name_is_a_file_in_the_folder(tmp_path):
    assert file_in_folder(tmp_path, "model-00001.safetensors", "x", "f") == tmp_path / "model-00001.safetensors"


def _hf_folder(tmp_path, shard_name):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard_name}}))
    return folder


@pytest.mark.parametrize("shard", ["../outside.safetensors", "{tmp}/outside.safetensors"])
def test_a_sharded_hf_index_cannot_name_a_file_outside_its_folder(tmp_path, shard):
    folder = _hf_folder(tmp_path, shard.format(tmp=tmp_path))
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: 'weight_map' is .*not a path"):
        read_hf_folder(folder)


def _runs_without_hanging(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("name", ["clip.pt", "clip.bin", "clip.safetensors"])
def test_a_fifo_as_weights_is_refused_at_once(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    # In a child process with a timeout: the bug this guards against is a read that never returns.
    result = _runs_without_hanging(f"""
        from clip4clip.weights import load_clip
        try:
            load_clip({str(fifo)!r})
        except ValueError as e:
            print("refused:", e)
    """)
    assert "refused:" in result.stdout and "not a regular file" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_read_torch_file_names_a_fifo(tmp_path):
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"checkpoint .*ckpt.pt is not a regular file"):
        read_torch_file(fifo)


def test_a_regular_weights_file_still_loads(tmp_path):
    clip = CLIP(CLIPConfig(**TINY))
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    loaded = load_clip(tmp_path / "clip.pt")
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), loaded.state_dict().values()))
