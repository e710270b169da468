"""X-CLIP's head equals the official code (``xclip_golden.pt``: XCLIP._loose_similarity on the tiny
CLIP, README in shared/testdata/reference), and, on other shapes, a brute-force loop written here
from the definitions; its ``masked`` padding, chunked scoring and length checks."""
import pytest
import torch
import torch.nn.functional as F

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.heads import HEADS
from clip4clip.heads.xclip import ALL_WEIGHTS, XCLIP
from clip4clip.loss import contrastive_loss
from clip4clip.model import CLIP4Clip

ATOL = 1e-4
FOUR = ("video_sentence_logits", "video_word_logits", "sentence_frame_logits", "frame_word_logits")
STEPS = ("fine_grained_sim", "word_level_logit", "frame_level_logit", "sent2frame_logits", "video2word_logits")


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "xclip_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def xclip_model(reference_dir):
    from clip4clip.weights.official import load_official_checkpoint
    return load_official_checkpoint(reference_dir / "xclip_official_ckpt.bin").eval()


def _close(got, want, key, atol=ATOL):
    torch.testing.assert_close(got, want.float(), atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


# ------------------------------------------------------------------ the official checkpoint
def test_official_checkpoint_is_detected_as_xclip_with_its_settings(xclip_model, reference_dir, golden):
    from clip4clip.weights.official import detect_official_head
    sd = torch.load(reference_dir / "xclip_official_ckpt.bin", weights_only=True)
    rest = {k: v for k, v in sd.items() if not k.startswith("clip.")}
    assert detect_official_head(rest) == "xclip"
    # the predecessors in HEADS order are still told apart
    drl = torch.load(reference_dir / "drl_official_ckpt.bin", weights_only=True)
    assert detect_official_head({k: v for k, v in drl.items() if not k.startswith("clip.")}) == "drl"
    seq = torch.load(reference_dir / "clip4clip_seqTransf_official_ckpt.bin", weights_only=True)
    assert detect_official_head({k: v for k, v in seq.items() if not k.startswith("clip.")}) == "seqTransf"
    head = xclip_model.head
    assert head.name == "xclip" and head.padding == "official" and head.sim_header == "seqTransf"
    assert (head.num_words, head.num_frames) == (golden["max_words"], golden["max_frames"]) == (32, 12)
    assert len(head.temporal.transformer.resblocks) == 4 and head.temporal.num_positions == 77
    for key in ALL_WEIGHTS:  # read from the file (perturbed there), not the identity init
        torch.testing.assert_close(getattr(head, key).detach(), sd[key].float(), atol=0, rtol=0)
    assert head.max_frames == 12
    torch.testing.assert_close(xclip_model.pair_logit_scale(), golden["logit_scale"].float(), atol=ATOL, rtol=1e-6)


def test_features_similarities_and_logits_equal_the_official(xclip_model, golden):
    g, m = golden, xclip_model
    ids, tm, video, vm = g["input_ids"], g["attention_mask"], g["video"].float(), g["video_mask"]
    with torch.no_grad():
        frames = m.encode_frames(video, frame_mask=vm)
        _close(frames, g["frame_features"], "frame_features")
        _close(m.head.contextualize(frames, vm), g["video_features"], "video_features")
        _, hidden = m.clip.encode_text(ids, return_hidden=True)
        _close(hidden, g["word_features"], "word_features")
        text, video_feats = m.text_features(ids, tm), m.video_features(video, vm)
        # stored layout: [sentence, words...] and [video_emb, frames...], all normalised
        assert text.shape == (6, 33, 64) and video_feats.shape == (6, 13, 64)
        eot = hidden[torch.arange(6), tm.sum(-1) - 1]
        _close(eot, g["text_features"], "text_features (EOT = last real position)")
        _close(text[:, 0], g["sentence_emb"], "sentence_emb")
        _close(text[:, 1:], g["word_emb"], "word_emb")
        _close(video_feats[:, 0], g["video_emb"], "video_emb")
        _close(video_feats[:, 1:], g["frame_emb"], "frame_emb")
        sims = m.head.similarities(text, tm, video_feats, vm, m.pair_logit_scale())
        for key in FOUR + STEPS + ("logits",):
            _close(getattr(sims, key), g[key], key)
        _close(m.score(text, video_feats, vm, text_mask=tm), g["logits"], "score")
        for chunk in (1, 4):  # chunking over texts changes nothing
            _close(m.score(text, video_feats, vm, text_chunk=chunk, text_mask=tm), g["logits"], f"chunk {chunk}")


def test_training_loss_and_logits_equal_the_official(xclip_model, golden):
    g, m = golden, xclip_model
    m.train()
    try:
        with torch.no_grad():
            out = m(g["input_ids"], g["attention_mask"], g["video"].float(), g["video_mask"])
    finally:
        m.eval()
    _close(out["logits"], g["logits_train"], "logits_train")
    _close(out["loss"], g["loss"], "loss")
    s = out["logits"]
    _close(-torch.log_softmax(s, 1).diagonal().mean(), g["loss_t2v"], "loss_t2v")
    _close(-torch.log_softmax(s.t(), 1).diagonal().mean(), g["loss_v2t"], "loss_v2t")


def test_a_meanp_checkpoint_and_foreign_keys(reference_dir):
    from clip4clip.weights.official import load_official_checkpoint
    sd = torch.load(reference_dir / "xclip_official_ckpt.bin", weights_only=True)
    meanp = {k: v for k, v in sd.items() if not k.startswith(("transformerClip.", "frame_position_embeddings."))}
    model = load_official_checkpoint(meanp)
    assert model.head.name == "xclip" and model.head.sim_header == "meanP" and model.head.temporal is None
    with pytest.raises(ValueError, match="unexpected keys.*similarity_dense"):
        load_official_checkpoint({**sd, "similarity_dense.weight": torch.zeros(1, 64)})
    with pytest.raises(ValueError, match="seqLSTM"):
        load_official_checkpoint({**meanp, "lstm_visual.weight_ih_l0": torch.zeros(4, 64)})


# ------------------------------------------------------------------ brute force, other shapes
def _cfg(context=12):
    return CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=16, vision_patch_size=8,
                      context_length=context, vocab_size=60, transformer_width=16, transformer_heads=1,
                      transformer_layers=1)


def _model(max_words, max_frames, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = CLIP4Clip.from_clip(CLIP(_cfg()), "xclip", max_words=max_words, max_frames=max_frames, num_blocks=1,
                                **kwargs).eval()
    with torch.no_grad():  # away from the identity init, so every table matters
        for key in ALL_WEIGHTS:
            p = getattr(model.head, key)
            p.add_(0.3 * torch.randn_like(p))
        model.clip.logit_scale.fill_(2.0)
    return model


def _texts(lengths, L, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 50, (len(lengths), L), generator=g) * mask
    ids[torch.arange(len(lengths)), lengths - 1] = 59  # EOT: the highest id, the last real token
    return ids, mask


def _videos(counts, T, seed=2):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor(counts)[:, None]).long()
    return torch.randn(len(counts), T, 3, 16, 16, generator=g), mask


def _pool(x, w, keep):
    """Σ_j x_j · Σ_i p_i w[i, j] with p = softmax of x / 0.01 over the kept positions."""
    idx = [i for i in range(len(x)) if keep[i]]
    z = torch.stack([x[i] / 0.01 for i in idx])
    p = torch.exp(z - z.max())
    p = p / p.sum()
    return sum(x[j] * sum(p[k] * w[i, j] for k, i in enumerate(idx)) for j in idx)


def _brute_force(model, ids, tm, video, vm, padding):
    """[A, B] logits from the definitions, one (text, video) pair at a time."""
    head = model.head
    with torch.no_grad():
        _, hidden = model.clip.encode_text(ids, return_hidden=True)
        frames = model.encode_frames(video)
        ctx = head.temporal.contextualize(frames, vm) if head.temporal is not None else frames
        s = model.clip.logit_scale.exp()
        W = {k: getattr(head, k).detach() for k in ALL_WEIGHTS}
        A, L = ids.shape
        B, T = vm.shape
        out = torch.zeros(A, B)
        for a in range(A):
            n = int(tm[a].sum())
            sent = hidden[a, n - 1] / hidden[a, n - 1].norm()
            words = [hidden[a, i] / hidden[a, i].norm() for i in range(L)]
            wkeep = [True] * L if padding == "official" else [bool(tm[a, i]) for i in range(L)]
            for b in range(B):
                real = [t for t in range(T) if vm[b, t]]
                vemb = sum(ctx[b, t] / ctx[b, t].norm() for t in real) / len(real)
                vemb = vemb / vemb.norm()
                fr = [frames[b, t] / frames[b, t].norm() for t in range(T)]
                fkeep = [True] * T if padding == "official" else [bool(vm[b, t]) for t in range(T)]
                vs = sent @ W["global_mat_weight"] @ vemb
                vw = _pool(torch.stack([w @ vemb for w in words]), W["word_logit_weight"], wkeep)
                sf = _pool(torch.stack([sent @ f for f in fr]), W["frame_logit_weight"], fkeep)
                fine = torch.stack([torch.stack([words[i] @ W["local_mat_weight"] @ fr[t] for t in range(T)])
                                    for i in range(L)])  # [L, T]
                word_level = torch.stack([_pool(fine[:, t], W["word_mat_weight"], wkeep) for t in range(T)])
                frame_level = torch.stack([_pool(fine[i], W["frame_mat_weight"], fkeep) for i in range(L)])
                fw = (_pool(word_level, W["frame_mat_weight2"], fkeep)
                      + _pool(frame_level, W["word_mat_weight2"], wkeep)) / 2
                out[a, b] = s * (vs + vw + sf + fw) / 4
    return out


@pytest.mark.parametrize("padding", ["official", "masked"])
@pytest.mark.parametrize("text_lengths,L,frame_counts,T,tables", [
    ([7, 2, 5], 7, [4, 1, 3, 2, 4], 4, (7, 4)),       # 3 texts, 5 videos
    ([3, 6, 6, 4, 2], 6, [2, 3], 3, (9, 5)),          # 5 texts, 2 videos; tables larger than the inputs
])
def test_scores_equal_a_brute_force_of_the_definitions(padding, text_lengths, L, frame_counts, T, tables):
    model = _model(*tables, padding=padding)
    ids, tm = _texts(text_lengths, L)
    video, vm = _videos(frame_counts, T)
    want = _brute_force(model, ids, tm, video, vm, padding)
    with torch.no_grad():
        text, vid = model.text_features(ids, tm), model.video_features(video, vm)
        got = model.score(text, vid, vm, text_mask=tm)
        chunked = model.score(text, vid, vm, text_mask=tm, text_chunk=2)
    assert got.shape == (len(text_lengths), len(frame_counts))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=0)


@pytest.mark.parametrize("padding", ["official", "masked"])
def test_training_logits_and_loss_follow_the_definitions(padding):
    model = _model(6, 3, padding=padding).train()
    ids, tm = _texts([6, 2, 4, 3], 6)
    video, vm = _videos([3, 1, 2, 3], 3)
    want = _brute_force(model.eval(), ids, tm, video, vm, padding)
    model.train()
    out = model(ids, tm, video, vm)
    torch.testing.assert_close(out["logits"].detach(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"].detach(), contrastive_loss(want), atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.head.parameters())


# ------------------------------------------------------------------ padding
def test_masked_equals_official_without_padding_and_differs_with_it():
    official, masked = _model(5, 3), _model(5, 3, padding="masked")
    ids, tm = _texts([5, 5, 5], 5)
    video, vm = _videos([3, 3], 3)
    with torch.no_grad():
        s_off = official.score(official.text_features(ids, tm), official.video_features(video, vm), vm, text_mask=tm)
        s_msk = masked.score(masked.text_features(ids, tm), masked.video_features(video, vm), vm, text_mask=tm)
        torch.testing.assert_close(s_msk, s_off, atol=1e-6, rtol=0)
        ids, tm = _texts([5, 2, 4], 5)
        video, vm = _videos([3, 1], 3)
        s_off = official.score(official.text_features(ids, tm), official.video_features(video, vm), vm, text_mask=tm)
        s_msk = masked.score(masked.text_features(ids, tm), masked.video_features(video, vm), vm, text_mask=tm)
    # every row has a padded video; the padded texts' rows differ against every video
    assert not torch.allclose(s_msk[:, 1], s_off[:, 1], atol=1e-4)
    assert not torch.allclose(s_msk[1:], s_off[1:], atol=1e-4)


def test_masked_scores_ignore_the_content_and_amount_of_padding():
    models = {p: _model(9, 5, padding=p) for p in ("official", "masked")}
    ids, tm = _texts([6, 2, 4], 6)
    video, vm = _videos([3, 1, 2, 3], 3)
    g = torch.Generator().manual_seed(5)
    other_ids = torch.where(tm.bool(), ids, torch.randint(1, 50, ids.shape, generator=g))  # padded positions
    other_video = torch.where(vm.bool()[..., None, None, None], video, torch.randn(video.shape, generator=g))
    longer_ids, longer_tm = F.pad(ids, (0, 3)), F.pad(tm, (0, 3))            # 9 positions instead of 6
    longer_video, longer_vm = F.pad(video, (0, 0, 0, 0, 0, 0, 0, 2)), F.pad(vm, (0, 2))  # 5 frames

    def scores(model, i, t, v, m):
        with torch.no_grad():
            return model.score(model.text_features(i, t), model.video_features(v, m), m, text_mask=t)

    for name, model in models.items():
        base = scores(model, ids, tm, video, vm)
        variants = [scores(model, other_ids, tm, other_video, vm),
                    scores(model, longer_ids, longer_tm, longer_video, longer_vm)]
        for variant in variants:
            if name == "masked":
                torch.testing.assert_close(variant, base, atol=1e-5, rtol=0)
            else:  # padded words and frames are part of X-CLIP's softmaxes
                assert not torch.allclose(variant, base, atol=1e-4)


def test_stored_padding_content_does_not_reach_masked_scores():
    model = _model(6, 4, padding="masked")
    ids, tm = _texts([6, 2, 3], 6)
    video, vm = _videos([4, 1], 4)
    with torch.no_grad():
        text, vid = model.text_features(ids, tm), model.video_features(video, vm)
        base = model.score(text, vid, vm, text_mask=tm)
        text2, vid2 = text.clone(), vid.clone()
        text2[:, 1:][~tm.bool()] = 7.0
        vid2[:, 1:][~vm.bool()] = -3.0
        torch.testing.assert_close(model.score(text2, vid2, vm, text_mask=tm), base, atol=0, rtol=0)


# ------------------------------------------------------------------ construction and limits
def test_init_from_clip_copies_seqtransf_and_keeps_identity_tables():
    torch.manual_seed(0)
    clip = CLIP(_cfg(context=12))
    model = CLIP4Clip.from_clip(clip, "xclip", max_words=8, max_frames=4, num_blocks=1)
    head, sd = model.head, clip.state_dict()
    assert "xclip" in HEADS and isinstance(head, XCLIP) and not head.two_tower and head.text_tokens
    assert head.scores_are_logits and not head.clamp_logit_scale
    torch.testing.assert_close(head.temporal.transformer.resblocks[0].attn.in_proj_weight,
                               sd["transformer.resblocks.0.attn.in_proj_weight"], atol=0, rtol=0)
    torch.testing.assert_close(head.temporal.frame_position_embeddings.weight[:12], sd["positional_embedding"],
                               atol=0, rtol=0)
    for key, n in (("global_mat_weight", 16), ("local_mat_weight", 16), ("word_logit_weight", 8),
                   ("word_mat_weight", 8), ("word_mat_weight2", 8), ("frame_logit_weight", 4),
                   ("frame_mat_weight", 4), ("frame_mat_weight2", 4)):
        assert torch.equal(getattr(head, key).detach(), torch.eye(n)), key


def test_inputs_longer_than_the_tables_and_bad_arguments_are_refused():
    model = _model(5, 3)
    ids, tm = _texts([6, 2], 6)
    with pytest.raises(ValueError, match="6 words.*max_words=5"):
        model.text_features(ids, tm)
    video, vm = _videos([4, 2], 4)
    with pytest.raises(ValueError, match="4 frames.*max_frames=3"):
        model.video_features(video, vm)
    assert model.head.max_frames == 3
    with pytest.raises(ValueError, match="max_frames"):
        model.check_frames(4)
    with pytest.raises(ValueError, match="padding='x'"):
        _model(5, 3, padding="x")
    with pytest.raises(ValueError, match="sim_header='seqLSTM'"):
        _model(5, 3, sim_header="seqLSTM")


def test_meanp_sim_header_pools_the_clip_frames():
    model = _model(6, 3, sim_header="meanP")
    ids, tm = _texts([6, 3], 6)
    video, vm = _videos([3, 2, 1], 3)
    want = _brute_force(model, ids, tm, video, vm, "official")
    with torch.no_grad():
        got = model.score(model.text_features(ids, tm), model.video_features(video, vm), vm, text_mask=tm)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
