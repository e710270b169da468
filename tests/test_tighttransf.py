"""tightTransf (CLIP4Clip's cross-encoder scorer): parity with a literal re-implementation of
the official algorithm, official checkpoint loading, CLIP init, chunked scoring, evaluation,
training end to end, and the settings it refuses."""
import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from clip4clip.weights.official import load_official_checkpoint
from clip4clip.weights import build_model
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.engine import evaluation
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.evaluation import EncodedSplit, encode_split, split_metrics
from clip4clip.engine.train_job import run_training
from clip4clip.engine.step import ContrastiveStep
from clip4clip.heads import TightTransf, build_head
from clip4clip.loss import ClipLoss
from clip4clip.metrics import retrieval_metrics_multi
from clip4clip.model import CLIP4Clip
from framework_utils import compose_cfg, tiny_train_overrides

D = 64


# ---------------------------------------------------------------------------------------------
# The official algorithm, written out literally (modules/module_cross.py, modeling.py
# _cross_similarity): sequence-first nn.MultiheadAttention, the BERT-style LayerNorm (eps inside
# the square root, 1e-12), an additive (1 - mask) * -1e6 mask expanded per head with
# repeat_interleave (upstream's fix of its issue #22), repeat-based pairing, and the text mask
# replaced by ones [B, 1].
class RefLayerNorm(nn.Module):
    def __init__(self, d, eps=1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


def ref_quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class RefQuickGELU(nn.Module):
    def forward(self, x):
        return ref_quick_gelu(x)


class RefBlock(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, n_head)
        self.ln_1 = RefLayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", RefQuickGELU()),
                                              ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = RefLayerNorm(d)
        self.n_head = n_head

    def forward(self, x, attn_mask):  # x [L, N, D], attn_mask [N, L, L] additive
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask.repeat_interleave(self.n_head, dim=0))[0]
        return x + self.mlp(self.ln_2(x))


class RefTightTransf(nn.Module):
    """Holds the official parameter names: cross.embeddings / cross.transformer / cross.pooler,
    similarity_dense."""

    def __init__(self, d=D, layers=2, heads=8, positions=77, dropout=0.1):
        super().__init__()
        self.cross = nn.Module()
        self.cross.embeddings = nn.Module()
        self.cross.embeddings.position_embeddings = nn.Embedding(positions, d)
        self.cross.embeddings.dropout = nn.Dropout(dropout)
        self.cross.transformer = nn.Module()
        self.cross.transformer.resblocks = nn.Sequential(*[RefBlock(d, heads) for _ in range(layers)])
        self.cross.pooler = nn.Module()
        self.cross.pooler.ln_pool = RefLayerNorm(d)
        self.cross.pooler.dense = nn.Linear(d, d)
        self.similarity_dense = nn.Linear(d, 1)

    def cross_model(self, concat_input, attention_mask):  # CrossModel.forward -> pooled output
        ext = (1.0 - attention_mask.unsqueeze(1).to(torch.float32)) * -1000000.0
        ext = ext.expand(-1, attention_mask.size(1), -1)
        n, length = concat_input.shape[:2]
        position_ids = torch.arange(length).unsqueeze(0).expand(n, -1)
        emb = concat_input + self.cross.embeddings.position_embeddings(position_ids)   # no token types
        emb = self.cross.embeddings.dropout(emb)
        x = emb.permute(1, 0, 2)
        for block in self.cross.transformer.resblocks:
            x = block(x, ext)
        x = x.permute(1, 0, 2)
        hidden = self.cross.pooler.ln_pool(x)
        return ref_quick_gelu(self.cross.pooler.dense(hidden[:, 0]))

    def cross_similarity(self, sequence_output, visual_output, attention_mask, video_mask, step_size=None):
        b_text, s_text, h_text = sequence_output.size()
        b_visual, s_visual, h_visual = visual_output.size()
        step_size = step_size or b_text
        split_size = [step_size] * (b_text // step_size)
        if b_text - sum(split_size) > 0:
            split_size += [b_text - sum(split_size)]
        attention_mask = torch.ones(sequence_output.size(0), 1).to(dtype=attention_mask.dtype)
        out = []
        rows = zip(torch.split(sequence_output, split_size), torch.split(attention_mask, split_size))
        for seq_row, mask_row in rows:
            step = seq_row.size(0)
            seq_l = seq_row.unsqueeze(1).repeat(1, b_visual, 1, 1).view(-1, s_text, h_text)
            mask_l = mask_row.unsqueeze(1).repeat(1, b_visual, 1).view(-1, s_text)
            vis_r = visual_output.unsqueeze(0).repeat(step, 1, 1, 1).view(-1, s_visual, h_visual)
            vmask_r = video_mask.unsqueeze(0).repeat(step, 1, 1).view(-1, s_visual)
            pooled = self.cross_model(torch.cat((seq_l, vis_r), dim=1), torch.cat((mask_l, vmask_r), dim=1))
            out.append(self.similarity_dense(pooled).squeeze(-1).view(step, b_visual))
        return torch.cat(out, dim=0)


def random_reference(seed=0, **kw):
    torch.manual_seed(seed)
    ref = RefTightTransf(**kw)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return ref


def random_inputs(bt=4, bv=3, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(bt, D, generator=g)
    frames = torch.randn(bv, t, D, generator=g)
    mask = torch.ones(bv, t, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return text, frames, mask


def ours_from(ref, **kw):
    head = TightTransf(D, num_layers=len(ref.cross.transformer.resblocks), heads=8,
                       num_positions=ref.cross.embeddings.position_embeddings.num_embeddings, **kw)
    head.load_state_dict(ref.state_dict(), strict=True)  # the official key layout, as is
    return head


def test_matches_the_official_algorithm_with_padded_frames():
    ref = random_reference().eval()
    head = ours_from(ref).eval()
    text, frames, mask = random_inputs()
    caption_mask = torch.ones(text.shape[0], 7, dtype=torch.long)
    caption_mask[:, 4:] = 0  # upstream replaces the caption mask by ones: its padding is irrelevant
    with torch.no_grad():
        expected = ref.cross_similarity(text.unsqueeze(1), frames, caption_mask, mask)
        got = head(text, frames, mask)
        assert got.shape == (4, 3)
        assert (got - expected).abs().max() < 1e-5

        # Padded frames: their content changes nothing (both implementations) ...
        noisy = frames.clone()
        noisy[mask == 0] = 100 * torch.randn(int((mask == 0).sum()), D)
        assert (head(text, noisy, mask) - got).abs().max() < 1e-5
        assert (ref.cross_similarity(text.unsqueeze(1), noisy, caption_mask, mask) - expected).abs().max() < 1e-5
        # ... but the mask does: unmasking them changes the padded videos' scores and only theirs.
        ones = torch.ones_like(mask)
        unmasked = head(text, noisy, ones)
        assert (unmasked[:, 1] - got[:, 1]).abs().max() < 1e-5  # video 1 has no padding
        assert (unmasked[:, [0, 2]] - got[:, [0, 2]]).abs().min() > 1e-3
        assert (unmasked - ref.cross_similarity(text.unsqueeze(1), noisy, caption_mask, ones)).abs().max() < 1e-5


def test_dropout_sits_after_the_position_embeddings_as_upstream():
    ref = random_reference(dropout=0.3).train()
    head = ours_from(ref, dropout=0.3).train()
    text, frames, mask = random_inputs()
    with torch.no_grad():
        torch.manual_seed(5)
        a = head(text, frames, mask)
        torch.manual_seed(5)
        b = ref.cross_similarity(text.unsqueeze(1), frames, torch.ones(4, 1), mask)
        torch.manual_seed(6)
        c = head(text, frames, mask)
    assert (a - b).abs().max() < 1e-5  # same mask drawn on the same [N, L, D] tensor
    assert (a - c).abs().max() > 1e-4  # and it is active in training


# ---------------------------------------------------------------------------------------------
def fake_official_checkpoint(reference_dir, layers=2, seed=0):
    """An official tightTransf checkpoint: CLIP under clip.* as the official trainer writes it
    (the reference meanP checkpoint's), the cross model and similarity_dense in float32."""
    sd = torch.load(reference_dir / "clip4clip_meanP_official_ckpt.bin", weights_only=True)
    assert any(v.dtype == torch.float16 for k, v in sd.items() if k.startswith("clip."))
    ref = random_reference(seed, layers=layers)
    sd.update(ref.state_dict())
    return sd, ref


def test_official_checkpoint_loads_and_reproduces_official_scores(reference_dir):
    sd, ref = fake_official_checkpoint(reference_dir, layers=3)
    assert any(k.startswith("cross.transformer.resblocks.2.attn.in_proj_weight") for k in sd)
    model = load_official_checkpoint(sd).eval()
    assert isinstance(model.head, TightTransf) and not model.two_tower
    assert len(model.head.cross.transformer.resblocks) == 3
    assert model.head.cross.transformer.heads == 8  # upstream's cross_config, not in the weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    g = torch.load(reference_dir / "clip4clip_meanP_golden.pt", weights_only=False)
    with torch.no_grad():
        text = model.text_features(g["input_ids"], g["attention_mask"])
        frames = model.video_features(g["video"], g["video_mask"])
        out = model(g["input_ids"], g["attention_mask"], g["video"], g["video_mask"])
        expected = ref.eval().cross_similarity(g["text_features"].unsqueeze(1), g["frame_features"],
                                               g["attention_mask"], g["video_mask"])
    # The features the cross model reads are the official ones: raw EOT text feature, raw frames.
    assert (text - g["text_features"]).abs().max() < 1e-4
    assert (frames - g["frame_features"]).abs().max() < 1e-4
    assert (out["logits"] - expected).abs().max() < 1e-4
    logits = out["logits"]
    cross_en = (-torch.log_softmax(logits, -1).diag().mean() - torch.log_softmax(logits.t(), -1).diag().mean()) / 2
    assert torch.allclose(out["loss"], cross_en, atol=1e-6)


def test_official_checkpoint_unknown_and_missing_keys_are_listed(reference_dir):
    sd, _ = fake_official_checkpoint(reference_dir)
    bad = dict(sd, **{"mystery.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="mystery.weight"):
        load_official_checkpoint(bad)
    bad = dict(sd, **{"cross.embeddings.token_type_embeddings.weight": torch.zeros(2, D)})
    with pytest.raises(ValueError, match="token_type_embeddings"):
        load_official_checkpoint(bad)
    for key in ("cross.pooler.dense.bias", "similarity_dense.weight", "cross.transformer.resblocks.1.ln_2.bias"):
        bad = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_official_checkpoint(bad)


def test_evaluate_py_scores_an_official_checkpoint(tmp_path, reference_dir, bpe_vocab_path, synth_root):
    sd, _ = fake_official_checkpoint(reference_dir)
    path = tmp_path / "pytorch_model.bin.0"
    torch.save(sd, path)
    cfg = compose_cfg("evaluate", [f"checkpoint={path}", f"paths.output_dir={tmp_path / 'ev'}", *SYNTH,
                                   f"dataset.root={synth_root}", f"model.bpe_vocab={bpe_vocab_path}",
                                   "trainer.progress=false", "trainer.eval_batch_size=5"])
    result, objs = run_evaluation(cfg)
    assert result["checkpoint_kind"] == "official" and result["num_texts"] == 16
    assert isinstance(objs["model"].head, TightTransf)
    enc = objs["encoded"]
    assert enc.cross and enc.video_emb.shape == (16, 4, D) and enc.video_mask.shape == (16, 4)
    for d in ("t2v", "v2t"):
        assert all(math.isfinite(v) for v in result["metrics"][d].values())


# ---------------------------------------------------------------------------------------------
def tiny_clip(layers=3, width=D, context=77):
    torch.manual_seed(0)
    return CLIP(CLIPConfig(embed_dim=width, image_resolution=32, vision_layers=1, vision_width=32,
                           vision_patch_size=16, context_length=context, vocab_size=100, vision_heads=2,
                           transformer_width=width, transformer_layers=layers, transformer_heads=2))


def test_init_from_clip_copies_text_blocks_and_positions_like_from_pretrained():
    clip = tiny_clip(layers=3)
    csd = clip.state_dict()
    model = CLIP4Clip.from_clip(clip, "tightTransf", num_layers=2)
    head = model.head
    assert torch.equal(head.cross.embeddings.position_embeddings.weight, csd["positional_embedding"])
    own = head.cross.transformer.state_dict()
    assert len(own) == 2 * 12
    for key, value in own.items():
        assert torch.equal(value, csd["transformer." + key]), key
    # The rest keeps upstream's init_weights: N(0, 0.02) weights, zero biases, LayerNorm 1 / 0.
    assert torch.equal(head.similarity_dense.bias, torch.zeros(1))
    assert torch.equal(head.cross.pooler.dense.bias, torch.zeros(D))
    assert torch.equal(head.cross.pooler.ln_pool.weight, torch.ones(D))
    assert head.cross.pooler.ln_pool.eps == 1e-12
    assert 0.015 < float(head.cross.pooler.dense.weight.detach().std()) < 0.025
    fresh = build_head("tightTransf", D)
    assert 0.015 < float(fresh.cross.transformer.resblocks[0].mlp.c_fc.weight.detach().std()) < 0.025
    assert 0.015 < float(fresh.cross.embeddings.position_embeddings.weight.detach().std()) < 0.025
    # Without CLIP init nothing is copied.
    plain = CLIP4Clip.from_clip(tiny_clip(layers=3), "tightTransf", init_head_from_clip=False, num_layers=2)
    assert not torch.equal(plain.head.cross.embeddings.position_embeddings.weight, csd["positional_embedding"])


def test_init_from_clip_refuses_a_shallow_or_narrow_text_tower():
    with pytest.raises(KeyError, match="transformer.resblocks.3"):
        CLIP4Clip.from_clip(tiny_clip(layers=3), "tightTransf", num_layers=4)
    narrow = tiny_clip(layers=4)
    head = build_head("tightTransf", 32)
    with pytest.raises(ValueError, match="64 wide"):
        head.init_from_clip(narrow.state_dict())


def test_chunked_scoring_equals_unchunked_and_too_many_frames_are_refused():
    torch.manual_seed(0)
    head = build_head("tightTransf", D, num_layers=2).eval()
    text, frames, mask = random_inputs(bt=7, bv=3)
    with torch.no_grad():
        full = head(text, frames, mask)
        for chunk in (1, 2, 3, 6, 7, 50):
            assert (head(text, frames, mask, text_chunk=chunk) - full).abs().max() < 1e-6, chunk
        # Row i, column j is the pair (text i, video j).
        assert (head.pair_logits(text[5:6], frames[2:3], mask[2:3]) - full[5, 2]).abs().max() < 1e-6
    short = build_head("tightTransf", D, num_layers=1, num_positions=5)
    with pytest.raises(ValueError, match="positions"):
        short(text, frames, mask)  # 5 frames + the text need 6


def _loader_batches(t=3):
    """Captions (two videos have two captions each) as the evaluation collate yields them."""
    g = torch.Generator().manual_seed(3)
    vids = ["v0", "v1", "v1", "v2", "v3", "v3"]
    videos = {v: torch.randn(t, 3, 32, 32, generator=g) for v in sorted(set(vids))}
    masks = {"v0": [1, 1, 1], "v1": [1, 0, 0], "v2": [1, 1, 0], "v3": [1, 1, 1]}
    items = []
    for i, v in enumerate(vids):
        ids = torch.zeros(8, dtype=torch.long)
        ids[:4] = torch.tensor([1, 5 + i, 7 + 2 * i, 99])
        items.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "video": videos[v],
                      "video_mask": torch.tensor(masks[v]), "video_id": v, "text": f"caption {i}"})
    batches = []
    for i in range(0, len(items), 4):
        chunk = items[i:i + 4]
        keys = ("input_ids", "attention_mask", "video", "video_mask")
        batch = {k: torch.stack([it[k] for it in chunk]) for k in keys}
        batch.update(video_id=[it["video_id"] for it in chunk], text=[it["text"] for it in chunk])
        batches.append(batch)
    return batches, items


def test_evaluation_scores_every_caption_video_pair_like_the_model(monkeypatch):
    model = CLIP4Clip.from_clip(tiny_clip(layers=2), "tightTransf", num_layers=2)
    batches, items = _loader_batches()
    enc = encode_split(model, batches, torch.device("cpu"), progress=False)
    assert enc.cross and enc.video_emb.shape == (4, 3, D) and enc.video_mask.tolist()[1] == [1, 0, 0]
    assert enc.video_ids == ["v0", "v1", "v2", "v3"]
    # Brute force: each (caption, video) pair scored on its own through the whole model.
    model.eval()
    first = {}
    for it in items:
        first.setdefault(it["video_id"], it)
    brute = torch.zeros(len(items), 4)
    with torch.no_grad():
        for i, it in enumerate(items):
            for j, vid in enumerate(enc.video_ids):
                v = first[vid]
                text = model.text_features(it["input_ids"][None], it["attention_mask"][None])
                frames = model.video_features(v["video"][None], v["video_mask"][None])
                brute[i, j] = model.head.pair_logits(text, frames, v["video_mask"][None])[0]
    sim = evaluation.similarity_matrix(enc, model)
    assert (sim - brute).abs().max() < 1e-5
    monkeypatch.setattr(evaluation, "CROSS_PAIRS_PER_PASS", 4)  # one text per pass
    assert (evaluation.similarity_matrix(enc, model) - brute).abs().max() < 1e-5
    assert split_metrics(enc, model) == retrieval_metrics_multi(brute, enc.text_video_index)
    with pytest.raises(ValueError, match="model"):
        split_metrics(enc)
    # Two-tower splits are untouched: plain cosine similarities, no model needed.
    two = EncodedSplit(torch.eye(3), torch.eye(3), torch.arange(3), ["a", "b", "c"], ["x", "y", "z"])
    assert split_metrics(two)["t2v"]["R1"] == 100.0


def test_a_video_repeated_within_one_batch_is_encoded_once():
    # Regression (both kinds of head): two captions of one video in the same batch used to add
    # the video twice, shifting every later video's row.
    for head in ("meanP", "tightTransf"):
        kwargs = {"num_layers": 1} if head == "tightTransf" else {}
        model = CLIP4Clip.from_clip(tiny_clip(layers=2), head, **kwargs)
        batches, _ = _loader_batches()
        enc = encode_split(model, batches, torch.device("cpu"), progress=False)
        assert enc.video_ids == ["v0", "v1", "v2", "v3"], head
        assert enc.video_emb.shape[0] == 4 and enc.text_video_index.tolist() == [0, 1, 1, 2, 3, 3], head


class _Clips(torch.utils.data.Dataset):
    def __init__(self, ids, clips, masks):
        self.video_ids, self.clips, self.masks = ids, clips, masks

    def __len__(self):
        return len(self.video_ids)

    def __getitem__(self, i):
        return {"video_id": self.video_ids[i], "video": self.clips[i], "video_mask": self.masks[i]}


class _TwoStreamSplit:
    """5 videos (uint8 frames, some padded) with 1-3 captions each, as MSVD's evaluation reads."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        ids = [f"v{i}" for i in range(5)]
        clips = torch.randint(0, 256, (5, 3, 3, 32, 32), generator=g, dtype=torch.uint8)
        masks = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
        self.text_video_ids = [v for i, v in enumerate(ids) for _ in range(1 + i % 3)]
        self.texts = [f"caption {j} of {v}" for j, v in enumerate(self.text_video_ids)]
        self._videos = _Clips(ids, clips, masks)

    def video_dataset(self):
        return self._videos


def _tokenize(texts, max_words):
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    for i, t in enumerate(texts):
        toks = [1] + [2 + (sum(map(ord, w)) % 90) for w in t.split()][: max_words - 2] + [99]
        ids[i, :len(toks)] = torch.tensor(toks)
    return ids, (ids > 0).long()


def test_two_stream_and_sharded_evaluation_of_a_cross_encoder():
    from clip4clip.engine.evaluation_sharded import _encode_share, evaluate_distributed, merge_shares
    from clip4clip.engine.distributed import DistInfo
    model = CLIP4Clip.from_clip(tiny_clip(layers=2), "tightTransf", num_layers=1)
    data = _TwoStreamSplit()
    opts = dict(tokenizer=_tokenize, max_words=8, batch_size=2, device=torch.device("cpu"), precision="fp32",
                num_workers=0, progress=False, desc="t")
    metrics, enc = evaluate_distributed(model, data, DistInfo(), **opts)
    assert enc.cross and enc.video_mask.tolist() == data._videos.masks.tolist()
    assert enc.video_emb.shape == (5, 3, D) and len(enc.texts) == 9
    for world_size in (2, 3):
        shares = [_encode_share(model, data, DistInfo(r, world_size), **opts)
                  for r in range(world_size)]
        merged = merge_shares(shares)
        assert torch.equal(merged.video_mask, enc.video_mask)
        torch.testing.assert_close(merged.video_emb, enc.video_emb, atol=1e-6, rtol=1e-5)
        got = split_metrics(merged, model)
        for d in ("t2v", "v2t"):
            for k, v in metrics[d].items():
                assert got[d][k] == pytest.approx(v), (world_size, d, k)
    # The scores are the model's own on those features.
    with torch.no_grad():
        direct = model.eval().score(enc.text_emb, enc.video_emb, enc.video_mask)
    assert (evaluation.similarity_matrix(enc, model) - direct).abs().max() < 1e-5


def _train_batch(b=6, t=3):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 90, (b, 8), generator=g)
    ids[:, -1] = 99
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 2:] = 0
    return {"input_ids": ids, "attention_mask": torch.ones(b, 8, dtype=torch.long),
            "video": torch.randn(b, t, 3, 32, 32, generator=g), "video_mask": mask}


def _step_grads(chunk_size):
    model = CLIP4Clip.from_clip(tiny_clip(layers=2), "tightTransf", num_layers=2, dropout=0.0).train()
    loss = ContrastiveStep(model, chunk_size=chunk_size)(_train_batch())
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_training_step_plain_and_gradient_cache_agree():
    loss, grads = _step_grads(0)
    assert any(n.startswith("head.cross.transformer") for n in grads) and "head.similarity_dense.weight" in grads
    assert "clip.visual.conv1.weight" in grads and "clip.token_embedding.weight" in grads
    assert "clip.logit_scale" not in grads  # a cross-encoder's logits are not scaled
    cached_loss, cached = _step_grads(2)
    assert abs(loss.item() - cached_loss.item()) < 1e-5
    assert grads.keys() == cached.keys()
    for n in grads:
        assert torch.allclose(grads[n], cached[n], atol=1e-5, rtol=1e-4), n


def test_bf16_autocast_step_and_scoring_are_finite_and_close_to_float32():
    model = CLIP4Clip.from_clip(tiny_clip(layers=2), "tightTransf", num_layers=2, dropout=0.0)
    loss = ContrastiveStep(model, precision="bf16")(_train_batch())
    assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in model.parameters())
    text, frames, mask = random_inputs()
    enc = EncodedSplit(text, frames, torch.arange(3).repeat(2)[:4], ["t"] * 4, ["a", "b", "c"], video_mask=mask)
    full = evaluation.similarity_matrix(enc, model)
    half = evaluation.similarity_matrix(enc, model, precision="bf16")
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.05 * full.abs().max() + 1e-3


def test_multi_process_training_and_search_index_are_refused():
    model = CLIP4Clip.from_clip(tiny_clip(layers=2), "tightTransf", num_layers=2)
    with pytest.raises(ValueError, match=r"tightTransf.*one process.*2 processes"):
        ContrastiveStep(model, ClipLoss(rank=0, world_size=2, gather=lambda x: [x, x]))
    with pytest.raises(ValueError, match="no video embedding"):
        model.encode_video(torch.randn(1, 2, 3, 32, 32), torch.ones(1, 2))
    from clip4clip.search.encoder import Encoder, Sampling
    with pytest.raises(ValueError, match="cross-encoder and cannot be indexed"):
        Encoder(model, None, 8, Sampling(1.0, 12, "uniform", 1.0, 64, 32), "fp", {})


# ---------------------------------------------------------------------------------------------
SYNTH = ["dataset=synthetic", "dataset.generator.num_train=48", "dataset.generator.num_val=16",
         "dataset.generator.num_test=16", "dataset.max_frames=4", "dataset.fps=0.5"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from data import ensure_synthetic_dataset
    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic_dataset(root, progress=False, num_train=48, num_val=16, num_test=16)
    return root


def test_train_and_evaluate_end_to_end(tmp_path, synth_root):
    out = tmp_path / "run"
    cfg = compose_cfg("train", tiny_train_overrides(out, synth_root, ["model/head=tightTransf", "trainer.epochs=1",
                                                                      "model.head.num_layers=2"]))
    metrics, objs = run_training(cfg)
    assert isinstance(objs["model"].head, TightTransf)
    assert len(objs["model"].head.cross.transformer.resblocks) == 2
    saved = json.loads((out / "metrics.json").read_text())
    for d in ("t2v", "v2t"):
        assert all(math.isfinite(v) for v in saved["test"][d].values())
        assert 0 <= saved["test"][d]["R1"] <= 100
    assert math.isfinite(saved["history"][0]["train_loss"])
    best = out / "checkpoints" / "best.pt"
    ev = compose_cfg("evaluate", [f"checkpoint={best}", f"paths.output_dir={tmp_path / 'ev'}",
                                  "trainer.eval_batch_size=3", "trainer.progress=false"])
    result, ev_objs = run_evaluation(ev, overrides=["trainer.eval_batch_size=3"])
    assert result["checkpoint_kind"] == "ours" and isinstance(ev_objs["model"].head, TightTransf)
    for d in ("t2v", "v2t"):
        for k in ("R1", "R5", "R10", "MdR", "MnR"):
            assert result["metrics"][d][k] == pytest.approx(metrics["test"][d][k]), (d, k)
    from clip4clip.search.encoder import Encoder
    with pytest.raises(ValueError, match="cannot be indexed"):
        Encoder.load(str(best))


def test_builds_from_the_config_group(tmp_path):
    clip = tiny_clip(layers=4)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg = compose_cfg("train", ["model/head=tightTransf", f"model.clip.pretrained={tmp_path / 'clip.pt'}",
                                f"paths.output_dir={tmp_path}"])
    assert cfg.model.head.num_layers == 4 and cfg.model.head.dropout == 0.1
    model = build_model(cfg.model)
    assert isinstance(model.head, TightTransf) and len(model.head.cross.transformer.resblocks) == 4
    assert torch.equal(model.head.cross.transformer.resblocks[3].attn.in_proj_weight,
                       clip.state_dict()["transformer.resblocks.3.attn.in_proj_weight"])
