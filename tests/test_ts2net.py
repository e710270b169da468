"""TS2-Net's head equals the official code (``ts2net_golden.pt``: yuqi657/ts2_net's CLIP4Clip on
the tiny CLIP, README in shared/testdata/reference), and its token shift, token selection, masks
and top-K gradient equal brute-force loops written here from the definitions."""
import pytest
import torch
import torch.nn.functional as F

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.heads import HEADS
from clip4clip.heads.ts2net import (TS2Net, TokenShift, TokenShiftBlock, expand_frame_mask, hard_topk,
                                    inject_token_shift, perturbed_topk, shift_token_indices, token_shift)
from clip4clip.model import CLIP4Clip

ATOL = 1e-4


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "ts2net_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def ts2net_model(reference_dir):
    from clip4clip.weights.official import load_official_checkpoint
    return load_official_checkpoint(reference_dir / "ts2net_official_ckpt.bin").eval()


def _close(got, want, key):
    torch.testing.assert_close(got.float(), want.float(), atol=ATOL, rtol=0, msg=key)


# ------------------------------------------------------------------ the official checkpoint
def test_official_checkpoint_is_detected_and_loads_with_upstreams_settings(ts2net_model, reference_dir):
    from clip4clip.weights.official import detect_official_head
    sd = torch.load(reference_dir / "ts2net_official_ckpt.bin", weights_only=True)
    assert detect_official_head({k: v for k, v in sd.items() if not k.startswith("clip.")}) == "ts2net"
    assert list(HEADS).index("ts2net") < list(HEADS).index("seqTransf")  # detected before seqTransf
    head = ts2net_model.head
    assert head.name == "ts2net" and head.shift_blocks == (10, 11) and head.topk == 3 and head.n_div == 7
    assert len(head.temporal.transformer.resblocks) == 4 and head.temporal.num_positions == 77
    blocks = ts2net_model.clip.visual.transformer.resblocks
    assert [i for i, b in enumerate(blocks) if isinstance(b, TokenShiftBlock)] == [10, 11]
    # the shift wrapper's attention came from upstream's attn.net.* (renamed), bit for bit
    torch.testing.assert_close(blocks[10].attn.in_proj_weight,
                               sd["clip.visual.transformer.resblocks.10.attn.net.in_proj_weight"].float(), atol=0, rtol=0)
    assert not head.clamp_logit_scale and head.scores_are_logits and not head.text_tokens and head.visual_tokens


def test_convert_official_clip_renames_only_the_wrapped_attention():
    sd = {"visual.transformer.resblocks.10.attn.net.in_proj_weight": 1, "visual.transformer.resblocks.10.ln_1.weight": 2,
          "transformer.resblocks.0.attn.in_proj_weight": 3}
    assert TS2Net.convert_official_clip(sd) == {"visual.transformer.resblocks.10.attn.in_proj_weight": 1,
                                                "visual.transformer.resblocks.10.ln_1.weight": 2,
                                                "transformer.resblocks.0.attn.in_proj_weight": 3}
    with pytest.raises(ValueError, match="both"):
        TS2Net.convert_official_clip({**sd, "visual.transformer.resblocks.10.attn.in_proj_weight": 4})


def test_features_similarities_and_loss_equal_the_official(ts2net_model, golden):
    g, m = golden, ts2net_model
    ids, tm, video, vm = g["input_ids"], g["attention_mask"], g["video"].float(), g["video_mask"]
    calls = []
    hooks = [mod.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
             for i, b in enumerate(m.clip.visual.transformer.resblocks) for mod in b.modules()
             if isinstance(mod, TokenShift)]
    try:
        with torch.no_grad():
            text = m.text_features(ids, tm)
            torch.manual_seed(int(g["topk_seed"]))
            tokens = m.encode_frames(video, tokens=True, frame_mask=vm)
            sel = m.head.select(tokens)
            vid = m.head.contextualize(sel.tokens, vm)
            torch.manual_seed(int(g["topk_seed"]))
            vid_model = m.video_features(video, vm)   # the same through the model's one call
    finally:
        for h in hooks:
            h.remove()
    assert calls == [10, 11, 10, 11] and int(g["shift_calls"]) == 2   # two encodings above
    left, right = shift_token_indices(17, 7)
    assert left.tolist() == g["shift_left_token_idx"].tolist() and right.tolist() == g["shift_right_token_idx"].tolist()
    _close(text, g["text_features"], "text_features")
    _close(tokens, g["visual_tokens"], "visual_tokens")
    _close(sel.scores, g["token_scores"], "token_scores")
    _close(sel.indicator, g["topk_indicator"], "topk_indicator")
    _close(sel.tokens, g["selected_tokens"], "selected_tokens")
    _close(tokens[:, :, 0], g["frame_features"], "frame_features")
    _close(vid, g["video_features"], "video_features")
    _close(vid_model, g["video_features"], "video_features (model.video_features)")
    assert torch.equal(m.head.frame_mask_used(vm), g["frame_mask_used"])
    with torch.no_grad():
        scale = m.pair_logit_scale()
        _close(scale, g["logit_scale"], "logit_scale")
        semantic, global_ = m.head.similarities(text, vid, vm, scale)
        _close(global_, g["sim_global"], "sim_global")
        _close(semantic, g["sim_semantic"], "sim_semantic")
        _close(m.score(text, vid, vm), g["logits"], "logits")
        _close(m.pair_loss(text, vid, vm, tm)[1], g["loss"], "loss")


def test_the_golden_noise_is_the_global_generators_draw(golden):
    torch.manual_seed(int(golden["topk_seed"]))
    noise = torch.randn(tuple(golden["topk_noise_shape"].tolist()))
    assert noise.double().sum().item() == pytest.approx(golden["topk_noise_sum"].item(), abs=1e-6)
    assert torch.equal(noise.flatten()[:8], golden["topk_noise_first"])


def test_without_the_shift_the_visual_tokens_differ(ts2net_model, golden, monkeypatch):
    monkeypatch.setattr(TokenShift, "forward", lambda self, x, frame_mask: x)
    with torch.no_grad():
        tokens = ts2net_model.encode_frames(golden["video"].float(), tokens=True, frame_mask=golden["video_mask"])
    assert (tokens - golden["visual_tokens"]).abs().max() > 1e-3


def test_train_mode_gives_the_same_loss_after_the_same_seed(ts2net_model, golden):
    m = ts2net_model
    g = golden
    try:
        m.train()
        with torch.no_grad():
            torch.manual_seed(int(g["topk_seed"]))
            out = m(g["input_ids"], g["attention_mask"], g["video"].float(), g["video_mask"])
    finally:
        m.eval()
    _close(out["loss"], g["loss"], "loss (train mode)")


def test_chunked_scoring_equals_one_pass(ts2net_model, golden):
    m, g = ts2net_model, golden
    with torch.no_grad():
        text = m.text_features(g["input_ids"], g["attention_mask"])
        torch.manual_seed(0)
        vid = m.video_features(g["video"].float(), g["video_mask"])
        whole = m.score(text, vid, g["video_mask"])
        for chunk in (1, 2, 4):
            torch.testing.assert_close(m.score(text, vid, g["video_mask"], text_chunk=chunk), whole, atol=1e-6, rtol=0)
        # a slice of the videos scores the same columns
        torch.testing.assert_close(m.score(text[1:4], vid[2:], g["video_mask"][2:]), whole[1:4, 2:], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ the fixes
def test_hard_topk_in_eval_is_deterministic_and_the_plain_topk(ts2net_model, golden):
    m, g = ts2net_model, golden
    with torch.no_grad():
        tokens = m.encode_frames(g["video"].float(), tokens=True, frame_mask=g["video_mask"])
        torch.manual_seed(1)
        a = m.head.select(tokens)
        torch.manual_seed(2)
        b = m.head.select(tokens)
        assert not torch.equal(a.indicator, b.indicator)   # official: the draw decides
        m.head.topk_eval = "hard"
        try:
            torch.manual_seed(1)
            h1 = m.head.select(tokens)
            torch.manual_seed(2)
            h2 = m.head.select(tokens)
            m.head.train()
            torch.manual_seed(1)
            t1 = m.head.select(tokens)
        finally:
            m.head.topk_eval = "official"
            m.head.eval()
    assert torch.equal(h1.indicator, h2.indicator) and torch.equal(h1.tokens, h2.tokens)
    assert torch.equal(t1.indicator, a.indicator)  # training stays perturbed
    scores = h1.scores[..., 1:]
    best = scores.topk(3, dim=-1).indices.sort(-1).values
    for b_ in range(scores.shape[0]):
        for t in range(scores.shape[1]):
            for j in range(3):
                row = h1.indicator[b_, t, j]
                assert row.sum() == 1 and row[best[b_, t, j]] == 1
    with pytest.raises(ValueError, match="topk_eval"):
        m.head.topk_eval = "soft"


def test_repeat_mask_changes_only_padded_videos(ts2net_model, golden):
    m, g = ts2net_model, golden
    vm = g["video_mask"]
    unpadded = vm.all(dim=1)
    assert unpadded.any() and not unpadded.all()
    with torch.no_grad():
        text = m.text_features(g["input_ids"], g["attention_mask"])
        tokens = m.encode_frames(g["video"].float(), tokens=True, frame_mask=vm)
        torch.manual_seed(0)
        sel = m.head.select(tokens)
        official_v = m.head.contextualize(sel.tokens, vm)
        official_s = m.score(text, official_v, vm)
        m.head.mask_expand = "repeat"
        try:
            repeat_v = m.head.contextualize(sel.tokens, vm)
            repeat_s = m.score(text, repeat_v, vm)
            used = m.head.frame_mask_used(vm)
        finally:
            m.head.mask_expand = "official"
    assert torch.equal(used, vm)
    torch.testing.assert_close(repeat_v[unpadded], official_v[unpadded], atol=1e-6, rtol=0)
    torch.testing.assert_close(repeat_s[:, unpadded], official_s[:, unpadded], atol=1e-6, rtol=0)
    assert (repeat_s[:, ~unpadded] - official_s[:, ~unpadded]).abs().max() > 1e-4
    # with repeat (and the hard top-K, so no noise), what padded frames hold cannot reach a score
    changed = tokens.clone()
    changed[vm == 0] = torch.randn_like(changed[vm == 0])
    m.head.topk_eval, m.head.mask_expand = "hard", "repeat"
    try:
        with torch.no_grad():
            s1 = m.score(text, m.head.video_features(tokens, vm), vm)
            s2 = m.score(text, m.head.video_features(changed, vm), vm)
    finally:
        m.head.topk_eval, m.head.mask_expand = "official", "official"
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ brute force, other shapes
def _brute_shift(x, frames, n_div):
    n, length, _ = x.shape
    fold = max(1, length // n_div)
    left = [i for i in range(1, length) if (i - 1) % fold == 0]
    right = [i for i in range(4, length) if (i - 4) % fold == 0]
    out = x.clone()
    for v in range(n // frames):
        for t in range(frames):
            for i in range(length):
                row = v * frames + t
                if i in right and t < frames - 1:       # upstream writes the right shift last
                    out[row, i] = x[row + 1, i]
                elif i in left and t > 0:
                    out[row, i] = x[row - 1, i]
    return out


@pytest.mark.parametrize("videos,frames,tokens,n_div", [(2, 12, 17, 7), (3, 4, 50, 7), (1, 5, 22, 7), (2, 3, 5, 7),
                                                        (2, 6, 197, 7), (1, 1, 17, 7), (2, 4, 17, 3)])
def test_token_shift_equals_a_loop(videos, frames, tokens, n_div):
    torch.manual_seed(0)
    x = torch.randn(videos * frames, tokens, 3)
    torch.testing.assert_close(token_shift(x, frames, n_div), _brute_shift(x, frames, n_div), atol=0, rtol=0)
    mod = TokenShift(n_div)
    torch.testing.assert_close(mod(x, torch.ones(videos, frames)), _brute_shift(x, frames, n_div), atol=0, rtol=0)
    with pytest.raises(ValueError, match="frame_mask"):
        mod(x, None)


def test_shift_block_shifts_the_attention_input_only():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=2, vision_width=32, vision_patch_size=4,
                           vision_heads=2, context_length=8, vocab_size=50, transformer_width=32,
                           transformer_heads=2, transformer_layers=1))
    plain = clip.visual.transformer.resblocks[1]
    keys = set(clip.state_dict())
    x = torch.randn(6, 17, 32)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    inject_token_shift(clip.visual, [1])
    block = clip.visual.transformer.resblocks[1]
    assert isinstance(block, TokenShiftBlock) and block.attn is plain.attn and block.mlp is plain.mlp
    assert set(clip.state_dict()) == keys   # CLIP's names, nothing added
    with torch.no_grad():
        h = x + plain.attn(_brute_shift(plain.ln_1(x), 3, 7))
        want = h + plain.mlp(plain.ln_2(h))
        torch.testing.assert_close(block(x, frame_mask=mask), want, atol=1e-6, rtol=0)
    # the same request again changes nothing; a different one is refused
    inject_token_shift(clip.visual, [1])
    assert clip.visual.transformer.resblocks[1] is block
    with pytest.raises(ValueError, match="injected once"):
        inject_token_shift(clip.visual, [0, 1])
    with pytest.raises(ValueError, match="do not exist"):
        inject_token_shift(CLIP(clip.config).visual, [2])


def test_the_head_refuses_shift_blocks_beyond_the_tower_and_attaching_twice_is_a_no_op():
    clip = CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=2, vision_width=32, vision_patch_size=8,
                           vision_heads=2, context_length=8, vocab_size=50, transformer_width=32,
                           transformer_heads=2, transformer_layers=1))
    with pytest.raises(ValueError, match=r"shift_blocks \[10, 11\] do not exist in a vision tower of 2 blocks"):
        CLIP4Clip.from_clip(clip, "ts2net", init_head_from_clip=False)
    model = CLIP4Clip.from_clip(clip, "ts2net", init_head_from_clip=False, shift_blocks=[1], topk=2)
    before = list(model.clip.visual.transformer.resblocks)
    model.head.attach(model.clip)
    assert list(model.clip.visual.transformer.resblocks) == before
    with pytest.raises(ValueError, match="topk=5"):
        CLIP4Clip.from_clip(CLIP(clip.config), "ts2net", init_head_from_clip=False, shift_blocks=[0], topk=5)
    for bad in ({"shift_blocks": 10}, {"shift_blocks": [-1]}, {"topk_eval": "x"}, {"mask_expand": "x"}, {"topk": 0}):
        with pytest.raises(ValueError):
            TS2Net(16, **bad)


def _brute_indicator(scores, noise, k, sigma):
    m, samples, p = noise.shape
    out = torch.zeros(m, k, p)
    for i in range(m):
        for s in range(samples):
            pert = [scores[i, d].item() + sigma * noise[i, s, d].item() for d in range(p)]
            top = sorted(sorted(range(p), key=lambda d: -pert[d])[:k])
            for j, d in enumerate(top):
                out[i, j, d] += 1
    return out / samples


@pytest.mark.parametrize("m,p,k,samples", [(3, 16, 3, 40), (2, 49, 5, 20), (4, 4, 2, 30), (1, 7, 1, 25)])
def test_perturbed_topk_equals_a_loop(m, p, k, samples):
    torch.manual_seed(0)
    scores, noise = torch.rand(m, p) - 0.5, torch.randn(m, samples, p)
    torch.testing.assert_close(perturbed_topk(scores, k, samples, 0.05, noise=noise),
                               _brute_indicator(scores, noise, k, 0.05), atol=1e-6, rtol=0)
    # the default noise is torch.randn of [M, S, P] from the global generator
    torch.manual_seed(3)
    drawn = perturbed_topk(scores, k, samples, 0.05)
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, _brute_indicator(scores, torch.randn(m, samples, p), k, 0.05), atol=1e-6, rtol=0)
    hard = hard_topk(scores, k)
    torch.testing.assert_close(hard, _brute_indicator(scores, torch.zeros(m, 1, p), k, 0.05), atol=0, rtol=0)


@pytest.mark.parametrize("b,t,patches,k", [(2, 3, 4, 2), (1, 5, 9, 3), (3, 2, 16, 1)])
def test_selection_and_masks_on_other_shapes(b, t, patches, k):
    torch.manual_seed(0)
    head = TS2Net(8, shift_blocks=[], topk=k, num_samples=30, num_blocks=1, num_positions=64).eval()
    tokens = torch.randn(b, t, 1 + patches, 8)
    torch.manual_seed(5)
    sel = head.select(tokens)
    torch.manual_seed(5)
    noise = torch.randn(b * t, 30, patches)
    flat = tokens.reshape(b * t, 1 + patches, 8)
    want = _brute_indicator(sel.scores.reshape(b * t, -1)[:, 1:], noise, k, 0.05)
    torch.testing.assert_close(sel.indicator.reshape(b * t, k, patches), want, atol=1e-6, rtol=0)
    for i in range(b * t):
        rows = [flat[i, 0]] + [sum(want[i, j, d] * flat[i, 1 + d] for d in range(patches)) for j in range(k)]
        torch.testing.assert_close(sel.tokens.reshape(b * t, k + 1, 8)[i], torch.stack(rows), atol=1e-5, rtol=0)
    # the predictor: each token's in_conv next to the CLS's, out_conv, tanh
    sp = head.visual_token_selector.score_predictor
    with torch.no_grad():
        h = sp.in_conv(flat)
        want_scores = torch.stack([sp.out_conv(torch.cat([h[i], h[i, :1].expand_as(h[i])], -1)).squeeze(-1)
                                   for i in range(b * t)])
    torch.testing.assert_close(sel.scores.reshape(b * t, -1), want_scores, atol=1e-6, rtol=0)
    # masks: official tiles, repeat repeats
    vm = (torch.arange(t)[None] < torch.randint(1, t + 1, (b,))[:, None]).long()
    s = k + 1
    off = expand_frame_mask(vm, s, "official")
    rep = expand_frame_mask(vm, s, "repeat")
    for i in range(b):
        for p_ in range(t * s):
            assert off[i, p_] == vm[i, p_ % t] and rep[i, p_] == vm[i, p_ // s]
    used = head.frame_mask_used(vm)
    for i in range(b):
        for j in range(t):
            assert used[i, j] == vm[i, (s * j) % t]


def test_similarity_equals_a_loop():
    torch.manual_seed(0)
    text, video = torch.randn(3, 8), torch.randn(4, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    head = TS2Net(8, shift_blocks=[], num_blocks=1)
    scale = torch.tensor(7.0)
    head.mask_expand = "repeat"
    semantic, global_ = head.similarities(text, video, mask, scale)
    for a in range(3):
        for b in range(4):
            keep = mask[b].bool()
            s = F.cosine_similarity(video[b][keep], text[a][None], dim=-1)
            w = torch.softmax(4 * s / s.norm(), dim=0)
            assert global_[a, b].item() == pytest.approx(7.0 * (w * s).sum().item(), abs=1e-5)
    torch.testing.assert_close(semantic, global_, atol=1e-6, rtol=0)


def test_frame_match_weight_mixes_scores_and_losses():
    torch.manual_seed(0)
    text, video = torch.randn(4, 8), torch.randn(4, 3, 8)
    mask = torch.ones(4, 3, dtype=torch.long)
    head = TS2Net(8, shift_blocks=[], num_blocks=1, frame_match_weight=0.25)
    scale = torch.tensor(5.0)
    semantic, global_ = head.similarities(text, video, mask, scale)
    torch.testing.assert_close(head.pair_scores(text, None, video, mask, scale), 0.25 * semantic + 0.75 * global_)
    logits, extra = head.train_logits(text, None, video, mask, scale)

    def ce(x):
        t = torch.arange(4)
        return (F.cross_entropy(x, t) + F.cross_entropy(x.t(), t)) / 2
    torch.testing.assert_close(ce(logits) + extra, 0.25 * ce(semantic) + 0.75 * ce(global_))


# ------------------------------------------------------------------ the top-K gradient
def test_topk_gradient_is_upstreams_estimator():
    torch.manual_seed(0)
    m, samples, p, k, sigma = 3, 50, 6, 2, 0.05
    scores = (torch.rand(m, p) - 0.5).requires_grad_()
    noise = torch.randn(m, samples, p)
    grad_out = torch.randn(m, k, p)
    (perturbed_topk(scores, k, samples, sigma, noise=noise) * grad_out).sum().backward()
    # upstream's formula, written densely: one-hot of the sorted top-k of each draw
    idx = torch.topk(scores.detach()[:, None] + sigma * noise, k, dim=-1).indices.sort(-1).values
    onehot = F.one_hot(idx, p).float()                                           # [m, S, k, p]
    expected = torch.einsum("bnkd,bnd->bkd", onehot, noise) / samples / sigma
    torch.testing.assert_close(scores.grad, torch.einsum("bkd,bkd->bd", grad_out, expected), atol=1e-6, rtol=1e-5)


def test_topk_gradient_estimates_the_smoothed_derivative():
    # E[indicator(x + sigma Z)] is smooth in x; its derivative in x_d of output (k, d) is what
    # the estimator approximates (Stein's lemma). Finite differences of the large-sample mean
    # with common noise against the estimator on the same noise.
    torch.manual_seed(0)
    p, k, sigma, samples, h = 5, 2, 0.3, 100000, 0.02
    x = torch.tensor([[0.3, -0.1, 0.05, 0.2, -0.25]])
    noise = torch.randn(1, samples, p)
    grad_out = torch.randn(1, k, p)
    xg = x.clone().requires_grad_()
    (perturbed_topk(xg, k, samples, sigma, noise=noise) * grad_out).sum().backward()
    fd = torch.zeros(1, p)
    for d in range(p):
        e = torch.zeros(1, p)
        e[0, d] = h
        diff = (perturbed_topk(x + e, k, samples, sigma, noise=noise)
                - perturbed_topk(x - e, k, samples, sigma, noise=noise)) / (2 * h)
        fd[0, d] = (grad_out[0, :, d] * diff[0, :, d]).sum()   # the diagonal terms upstream keeps
    torch.testing.assert_close(xg.grad, fd, atol=0.1, rtol=0.05)


def test_training_backpropagates_into_the_score_predictor():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32, vision_patch_size=8,
                           vision_heads=2, context_length=8, vocab_size=50, transformer_width=32,
                           transformer_heads=2, transformer_layers=1))
    model = CLIP4Clip.from_clip(clip, "ts2net", init_head_from_clip=False, shift_blocks=[0], topk=2, num_blocks=1).train()
    ids = torch.tensor([[48, 5, 49, 0], [48, 7, 8, 49], [48, 9, 49, 0]])
    out = model(ids, (ids > 0).long(), torch.randn(3, 4, 3, 16, 16), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]))
    out["loss"].backward()
    sp = model.head.visual_token_selector.score_predictor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sp.parameters())
    assert model.clip.visual.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
