"""What the previous layout wrote still loads, to the same numbers (tests/data/legacy_layout)."""
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
