"""CLIP4Clip parity with the official implementation on its own checkpoints."""
import pytest
import torch

from clip4clip.weights.official import load_official_checkpoint
from clip4clip.heads import MeanPooling, SeqLSTM, SeqTransf
from clip4clip.loss import contrastive_loss

HEAD_CLASSES = {"meanP": MeanPooling, "seqTransf": SeqTransf, "seqLSTM": SeqLSTM}


@pytest.mark.parametrize("head", ["meanP", "seqTransf", "seqLSTM"])
def test_official_checkpoint_reproduces_official_outputs(reference_dir, head):
    model = load_official_checkpoint(reference_dir / f"clip4clip_{head}_official_ckpt.bin").eval()
    assert type(model.head) is HEAD_CLASSES[head]
    g = torch.load(reference_dir / f"clip4clip_{head}_golden.pt", weights_only=False)
    with torch.no_grad():
        text = model.encode_text(g["input_ids"], g["attention_mask"], normalize=False)
        frames = model.encode_frames(g["video"])
        out = model(g["input_ids"], g["attention_mask"], g["video"], g["video_mask"])
    assert (text - g["text_features"]).abs().max() < 1e-4
    assert (frames - g["frame_features"]).abs().max() < 1e-4
    assert (out["logits"] - g["logits"]).abs().max() < 1e-4
    assert abs(out["loss"].item() - float(g["loss"])) < 1e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_seqtransf_block_count_read_from_checkpoint(reference_dir):
    model = load_official_checkpoint(reference_dir / "clip4clip_seqTransf_official_ckpt.bin")
    assert len(model.head.transformer.resblocks) == 4


def test_unknown_keys_are_listed(reference_dir):
    sd = torch.load(reference_dir / "clip4clip_meanP_official_ckpt.bin", weights_only=True)
    sd["mystery.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="mystery.weight"):
        load_official_checkpoint(sd)


def test_missing_head_keys_are_listed(reference_dir):
    sd = torch.load(reference_dir / "clip4clip_seqTransf_official_ckpt.bin", weights_only=True)
    del sd["transformerClip.resblocks.3.ln_2.bias"]
    with pytest.raises(ValueError, match="resblocks.3.ln_2.bias"):
        load_official_checkpoint(sd)


def test_not_a_clip4clip_checkpoint(tmp_path):
    path = tmp_path / "x.bin"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="clip"):
        load_official_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.bin")


def test_forward_loss_is_symmetric_infonce_and_trains(reference_dir):
    model = load_official_checkpoint(reference_dir / "clip4clip_meanP_official_ckpt.bin")
    g = torch.load(reference_dir / "clip4clip_meanP_golden.pt", weights_only=False)
    out = model(g["input_ids"], g["attention_mask"], g["video"], g["video_mask"])
    logits = out["logits"]
    manual = (-torch.log_softmax(logits, 1).diag().mean() - torch.log_softmax(logits, 0).diag().mean()) / 2
    assert torch.allclose(out["loss"], manual, atol=1e-6)
    out["loss"].backward()
    assert model.clip.visual.conv1.weight.grad is not None
    assert model.clip.logit_scale.grad is not None


def test_similarity_clamps_logit_scale_at_100(reference_dir):
    model = load_official_checkpoint(reference_dir / "clip4clip_meanP_official_ckpt.bin")
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)
    t = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    assert torch.allclose(model.similarity(t, t).diag(), torch.full((2,), 100.0), atol=1e-3)


def test_contrastive_loss_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3))
