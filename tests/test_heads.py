"""Temporal heads: interface, masking, initialisation from CLIP."""
import pytest
import torch

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.heads import TEMPORAL_HEADS, FrameWeight, SeqTransf, build_head

D = 32


def _inputs(seed=0, b=3, t=6):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, t, D, generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    return feats, mask


@pytest.mark.parametrize("name", sorted(TEMPORAL_HEADS))  # tightTransf: tests/test_tighttransf.py
def test_every_head_outputs_unit_vectors_and_ignores_padding_content(name):
    torch.manual_seed(0)
    head = build_head(name, D, **({} if name in ("meanP", "seqLSTM") else {"num_blocks": 2})).eval()
    feats, mask = _inputs()
    with torch.no_grad():
        out = head(feats, mask)
        changed = feats.clone()
        changed[mask == 0] = torch.randn(int((mask == 0).sum()), D) * 100
        out2 = head(changed, mask)
    assert out.shape == (3, D)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out, out2, atol=1e-5), "padded frames leaked into the video embedding"


def test_meanP_is_normalised_mean_of_normalised_valid_frames():
    feats, mask = _inputs()
    out = build_head("meanP", D)(feats, mask)
    f = feats[0, :4] / feats[0, :4].norm(dim=-1, keepdim=True)
    expected = f.mean(0) / f.mean(0).norm()
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_frameweight_gives_padded_frames_exactly_zero_weight():
    torch.manual_seed(0)
    head = FrameWeight(D, num_blocks=1, temperature=0.1).eval()
    feats, mask = _inputs()
    with torch.no_grad():
        video, alpha = head(feats, mask, return_weights=True)
    assert torch.all(alpha[mask == 0] == 0)
    assert torch.allclose(alpha.sum(-1), torch.ones(3))
    assert alpha[2, 0] == 1.0  # the only valid frame takes all the weight
    # The weighted sum matches the formula written out by hand.
    v = head.contextualize(feats, mask).detach()
    w = head.weight_predictor(v).squeeze(-1)[0, :4] / 0.1
    a = torch.softmax(w, -1)
    vn = v[0, :4] / v[0, :4].norm(dim=-1, keepdim=True)
    manual = (a[:, None] * vn).sum(0)
    assert torch.allclose(video[0], manual / manual.norm(), atol=1e-5)


def test_frameweight_temperature_sharpens_weights():
    torch.manual_seed(0)
    feats, mask = _inputs()
    soft = FrameWeight(D, num_blocks=1, temperature=10.0).eval()
    sharp = FrameWeight(D, num_blocks=1, temperature=0.01).eval()
    sharp.load_state_dict(soft.state_dict())
    with torch.no_grad():
        _, a_soft = soft(feats, mask, return_weights=True)
        _, a_sharp = sharp(feats, mask, return_weights=True)
    assert a_sharp[1].max() > a_soft[1].max()
    with pytest.raises(ValueError, match="temperature"):
        FrameWeight(D, temperature=0.0)


def test_seqtransf_is_order_sensitive_and_meanP_is_not():
    torch.manual_seed(0)
    feats, _ = _inputs()
    mask = torch.ones(3, 6, dtype=torch.long)
    rev = feats.flip(1)
    seq = SeqTransf(D, num_blocks=1).eval()
    mean = build_head("meanP", D)
    with torch.no_grad():
        assert torch.allclose(mean(feats, mask), mean(rev, mask), atol=1e-6)
        assert not torch.allclose(seq(feats, mask), seq(rev, mask), atol=1e-4)


def test_seqtransf_initialises_from_clip_text_tower():
    cfg = CLIPConfig(embed_dim=64, image_resolution=16, vision_layers=1, vision_width=64,
                     vision_patch_size=8, context_length=77, vocab_size=100, transformer_width=64,
                     transformer_layers=4)
    clip = CLIP(cfg)
    sd = clip.state_dict()
    head = build_head("seqTransf", 64, num_blocks=3)
    head.init_from_clip(sd)
    assert torch.equal(head.frame_position_embeddings.weight, sd["positional_embedding"])
    for i in range(3):
        assert torch.equal(head.transformer.resblocks[i].attn.in_proj_weight,
                           sd[f"transformer.resblocks.{i}.attn.in_proj_weight"])
    too_deep = build_head("seqTransf", 64, num_blocks=5)
    with pytest.raises(KeyError, match="transformer.resblocks.4"):
        too_deep.init_from_clip(sd)


def test_build_head_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="seqTransf"):
        build_head("seqtransformer", D)
    with pytest.raises(ValueError, match="temperature"):
        build_head("meanP", D, temperature=0.1)


def test_too_many_frames_for_position_table():
    head = SeqTransf(D, num_blocks=1, num_positions=4)
    with pytest.raises(ValueError, match="frame positions"):
        head(torch.randn(1, 5, D), torch.ones(1, 5))


@pytest.mark.parametrize("head", ["seqTransf", "frameweight", "tightTransf"])
def test_heads_built_from_clip_blocks_use_the_clips_activation(head):
    # A LAION (GELU) CLIP's text blocks copied into the head must be computed with GELU there.
    from clip4clip.clip import CLIP, CLIPConfig
    from clip4clip.clip.layers import QuickGELU
    from clip4clip.model import CLIP4Clip
    cfg = dict(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=32, vision_patch_size=8,
               context_length=16, vocab_size=50, transformer_width=32, transformer_heads=2, transformer_layers=2)
    for activation, kind in (("gelu", torch.nn.GELU), ("quick_gelu", QuickGELU)):
        clip = CLIP(CLIPConfig(**cfg, activation=activation))
        model = CLIP4Clip.from_clip(clip, head, **({"num_layers": 1} if head == "tightTransf" else {"num_blocks": 1}))
        acts = [m for name, m in model.head.named_modules() if name.endswith("mlp.gelu")]
        assert acts and all(type(a) is kind for a in acts), (head, activation)
