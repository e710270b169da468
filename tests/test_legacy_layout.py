"""What the previous layout wrote still loads, to the same numbers (tests/data/legacy_layout)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clip4clip.weights import load_model

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_layout"


@pytest.mark.parametrize("source", ["checkpoint.pt", "export"])
def test_files_written_by_the_old_layout_load_and_score_as_they_did(source):
    expected = load_file(str(LEGACY / "expected.safetensors"))
    loaded = load_model(LEGACY / source)
    model = loaded.model.eval()
    ids, mask = loaded.tokenizer(["a red circle moves left", "a blue square"], model.clip.config.context_length)
    # The tokenizer (a word vocabulary saved in the checkpoint) is part of what must survive.
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        video = model.encode_video(expected["video"], expected["video_mask"])
        sim = model.similarity(text, video)
    torch.testing.assert_close(text, expected["text_emb"], rtol=0, atol=1e-6)
    torch.testing.assert_close(video, expected["video_emb"], rtol=0, atol=1e-6)
    torch.testing.assert_close(sim, expected["similarity"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("weights", ["../checkpoint.pt", "/etc/passwd", "sub/model.safetensors", "", 3, ".."])
def test_an_export_cannot_point_its_weights_outside_its_folder(tmp_path, weights):
    folder = tmp_path / "export"
    shutil.copytree(LEGACY / "export", folder)
    shutil.copy(LEGACY / "checkpoint.pt", tmp_path / "checkpoint.pt")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "weights": weights}))
    with pytest.raises(ValueError, match=r"config\.json: 'weights' is .*expected the name of a file in"):
        load_model(folder)


def test_an_export_weights_link_leading_outside_is_refused(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(LEGACY / "export", folder)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(ValueError, match="is a link to .* outside"):
        load_model(folder)
