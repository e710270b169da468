"""DRL's weighted token-wise interaction and CDCR loss equal the official code's
(``drl_golden.pt``: DRL.wti_interaction on the tiny CLIP; README in shared/testdata/reference)."""
import pytest
import torch
import torch.nn.functional as F

from clip4clip.heads.drl import cdcr_loss, cdcr_matrices, token_weights, wti_logits

ATOL = 1e-4


@pytest.fixture(scope="module")
def golden(reference_dir):
    g = torch.load(reference_dir / "drl_golden.pt", weights_only=True)
    sd = torch.load(reference_dir / "drl_official_ckpt.bin", weights_only=True)
    return g, sd


def _mlp(sd, prefix):
    w0, b0, w2, b2 = (sd[f"{prefix}.{i}"].float() for i in ("0.weight", "0.bias", "2.weight", "2.bias"))
    return lambda x: F.linear(F.relu(F.linear(x, w0, b0)), w2, b2)


def _inputs(golden):
    g, sd = golden
    return (g["text_features"].float(), g["attention_mask"], g["video_features"].float(), g["video_mask"],
            _mlp(sd, "text_weight_fc"), _mlp(sd, "video_weight_fc"))


def test_weights_logits_and_cdcr_equal_the_official(golden):
    g, _ = golden
    text, tm, video, vm, tfc, vfc = _inputs(golden)
    tw, vw = token_weights(text, tm, video, vm, tfc, vfc)
    torch.testing.assert_close(tw, g["text_weight"].float(), atol=ATOL, rtol=0)
    torch.testing.assert_close(vw, g["video_weight"].float(), atol=ATOL, rtol=0)
    inter = wti_logits(text, tm, video, vm, tw, vw)
    for key, got in (("t2v_logits", inter.t2v), ("v2t_logits", inter.v2t), ("logits", inter.logits),
                     ("logits_train", g["logit_scale"] * inter.logits)):
        torch.testing.assert_close(got, g[key].float(), atol=ATOL, rtol=0, msg=key)
    c1, c2 = cdcr_matrices(text, tm, video, vm, inter, tw, vw)
    torch.testing.assert_close(c1, g["cdcr_c1"].float(), atol=ATOL, rtol=0)
    torch.testing.assert_close(c2, g["cdcr_c2"].float(), atol=ATOL, rtol=0)
    args = g["args"]
    loss, on, off = cdcr_loss(c1, c2, args["cdcr_alpha1"], args["cdcr_alpha2"])
    torch.testing.assert_close(on, g["cdcr_on_diag"].float(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(off, g["cdcr_off_diag"].float(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(loss, g["cdcr_loss"].float(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(args["cdcr_lambda"] * loss, g["cdcr_weighted_loss"].float(), atol=ATOL, rtol=1e-5)


def test_shapes_other_than_the_goldens_and_text_video_counts_that_differ():
    torch.manual_seed(0)
    a, b, L, T, D = 3, 5, 7, 4, 8
    text, video = torch.randn(a, L, D), torch.randn(b, T, D)
    tm = (torch.arange(L)[None] < torch.tensor([7, 2, 5])[:, None]).long()
    vm = (torch.arange(T)[None] < torch.tensor([4, 1, 3, 2, 4])[:, None]).long()
    tw, vw = token_weights(text, tm, video, vm, lambda x: x.sum(-1, keepdim=True), lambda x: x[..., :1])
    assert torch.allclose(tw.sum(-1), torch.ones(a)) and (tw[tm == 0] == 0).all() and (vw[vm == 0] == 0).all()
    inter = wti_logits(text, tm, video, vm, tw, vw)
    # Brute force of the definition, official padding (padded positions score 0 in the max).
    t, v = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    for i in range(a):
        for j in range(b):
            cos = (t[i] @ v[j].T) * tm[i][:, None] * vm[j][None, :]
            assert torch.isclose(inter.t2v[i, j], (cos.max(1).values * tw[i]).sum(), atol=1e-6)
            assert torch.isclose(inter.v2t[i, j], (cos.max(0).values * vw[j]).sum(), atol=1e-6)


def test_masked_padding_leaves_padded_positions_out_of_the_max():
    # One real token whose cosine with every real frame is negative: official takes the padded
    # frame's 0 as its max, masked takes the real (negative) best.
    text = torch.tensor([[[1.0, 0.0]]])
    video = torch.tensor([[[-1.0, 0.1], [5.0, 5.0]]])
    tm, vm = torch.ones(1, 1), torch.tensor([[1, 0]])
    tw, vw = torch.ones(1, 1), torch.tensor([[1.0, 0.0]])
    official = wti_logits(text, tm, video, vm, tw, vw)
    masked = wti_logits(text, tm, video, vm, tw, vw, padding="masked")
    assert official.t2v.item() == 0.0
    assert masked.t2v.item() == pytest.approx(-1 / (1.01 ** 0.5), abs=1e-6)
    with pytest.raises(ValueError, match="padding='x'"):
        wti_logits(text, tm, video, vm, tw, vw, padding="x")


# ------------------------------------------------------------------ the head in the model
@pytest.fixture(scope="module")
def drl_model(reference_dir):
    from clip4clip.weights.official import load_official_checkpoint
    return load_official_checkpoint(reference_dir / "drl_official_ckpt.bin").eval()


def test_official_checkpoint_loads_as_drl_with_its_settings(drl_model):
    head = drl_model.head
    assert head.name == "drl" and head.interaction == "wti" and head.wti_arch == 2
    assert head.temporal is not None and len(head.temporal.transformer.resblocks) == 4
    assert head.temporal.num_positions == 77


def test_model_features_scores_and_loss_equal_the_official(drl_model, golden):
    g, _ = golden
    m = drl_model
    ids, tm, video, vm = g["input_ids"], g["attention_mask"], g["video"].float(), g["video_mask"]
    with torch.no_grad():
        frames = m.encode_frames(video, frame_mask=vm)
        torch.testing.assert_close(frames, g["frame_features"].float(), atol=ATOL, rtol=0)
        torch.testing.assert_close(m.head.contextualize(frames, vm), g["video_features"].float(), atol=ATOL, rtol=0)
        text = m.text_features(ids, tm)
        vid = m.video_features(video, vm)
        # Stored layout: normalised features + the weight MLP's score channel.
        torch.testing.assert_close(text[..., :-1], F.normalize(g["text_features"].float(), dim=-1), atol=ATOL, rtol=0)
        _, tw = m.head._split(text, tm)
        _, vw = m.head._split(vid, vm)
        torch.testing.assert_close(tw, g["text_weight"].float(), atol=ATOL, rtol=0)
        torch.testing.assert_close(vw, g["video_weight"].float(), atol=ATOL, rtol=0)
        torch.testing.assert_close(m.score(text, vid, vm, text_mask=tm), g["logits"].float(), atol=ATOL, rtol=0)
        # chunking over texts changes nothing
        torch.testing.assert_close(m.score(text, vid, vm, text_chunk=2, text_mask=tm), g["logits"].float(),
                                   atol=ATOL, rtol=0)
    # CDCR's settings are training flags, not in the checkpoint: the README command's.
    args = g["args"]
    m.head.cdcr, m.head.cdcr_alpha1, m.head.cdcr_alpha2, m.head.cdcr_lambda = (
        args["cdcr"], args["cdcr_alpha1"], args["cdcr_alpha2"], args["cdcr_lambda"])
    m.train()
    try:
        with torch.no_grad():
            out = m(ids, tm, video, vm)
            m.head.cdcr = 0
            plain = m(ids, tm, video, vm)
    finally:
        m.eval()
    torch.testing.assert_close(plain["loss"], g["sim_loss"].float(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(m.pair_logit_scale(), g["logit_scale"].float(), atol=ATOL, rtol=1e-6)
    torch.testing.assert_close(out["logits"], g["logits_train"].float(), atol=ATOL * 10, rtol=1e-5)
    torch.testing.assert_close(out["loss"], g["loss"].float(), atol=ATOL, rtol=1e-5)


def test_every_interaction_and_cdcr_mode_trains_a_step_and_masked_padding_differs():
    from clip4clip.clip import CLIP, CLIPConfig
    from clip4clip.model import CLIP4Clip
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=16, vision_patch_size=8,
                     context_length=12, vocab_size=60, transformer_width=16, transformer_heads=1, transformer_layers=1)
    ids = torch.randint(1, 50, (4, 8))
    lengths = torch.tensor([8, 3, 5, 2])
    tm = (torch.arange(8)[None] < lengths[:, None]).long()
    ids = ids * tm
    ids[torch.arange(4), lengths - 1] = 59  # EOT: the highest id, the last real token
    video, vm = torch.randn(4, 3, 3, 16, 16), torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    for kwargs in ({"interaction": "wti", "cdcr": 3}, {"interaction": "wti", "cdcr": 2, "wti_arch": 1},
                   {"interaction": "ti", "cdcr": 2}, {"interaction": "ti", "cdcr": 1}, {"interaction": "dp", "cdcr": 1},
                   {"interaction": "wti", "wti_arch": 3, "agg_module": "None"}):
        model = CLIP4Clip.from_clip(CLIP(cfg), "drl", num_blocks=1, **kwargs)
        out = model(ids, tm, video, vm)
        assert out["logits"].shape == (4, 4) and torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(p.grad is not None for n, p in model.head.named_parameters()), kwargs
        if kwargs.get("cdcr"):  # the CDCR term is in the loss
            plain = CLIP4Clip.from_clip(CLIP(cfg), "drl", num_blocks=1, **{**kwargs, "cdcr": 0})
            plain.load_state_dict(model.state_dict())
            assert not torch.allclose(plain(ids, tm, video, vm)["loss"], out["loss"])
    model = CLIP4Clip.from_clip(CLIP(cfg), "drl", num_blocks=1).eval()
    text, vid = model.text_features(ids, tm), model.video_features(video, vm)
    official = model.score(text, vid, vm, text_mask=tm)
    model.head.padding = "masked"
    masked = model.score(text, vid, vm, text_mask=tm)
    assert not torch.allclose(official, masked)
    with pytest.raises(ValueError, match="interaction='xx'"):
        CLIP4Clip.from_clip(CLIP(cfg), "drl", interaction="xx")


def test_cdcr_of_a_constant_channel_is_finite_not_nan():
    """Every frame picking the same word (the start token, identical in every caption) makes a
    channel constant over the rows; upstream's division by its std would give NaN."""
    torch.manual_seed(0)
    text, video = torch.randn(3, 4, 6), torch.randn(3, 2, 6)
    text[:, 0] = text[0, 0]  # the same first-token feature in every caption
    video = video + 10 * text[0, 0]  # every frame closest to it
    tm, vm = torch.ones(3, 4), torch.ones(3, 2)
    tw, vw = tm / 4, vm / 2
    inter = wti_logits(text, tm, video, vm, tw, vw, padding="masked")
    assert (inter.v2t_token == 0).all()
    c1, c2 = cdcr_matrices(text, tm, video, vm, inter, tw, vw)
    assert torch.isfinite(c1).all() and torch.isfinite(c2).all()
    assert torch.isfinite(cdcr_loss(c1, c2, 0.11, 0.0)[0])
