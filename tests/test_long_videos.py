"""Long videos (the paragraph datasets' 64 frames): every head trains and evaluates 64-frame
batches, position tables that are too short fail in one line, and 64-frame clips go through the
frame cache, the loaders, evaluation and search exactly as short ones.

Also the activation-memory measurement behind benchmarks/README.md ("Memory at 64 frames"):
``python tests/test_long_videos.py`` prints it for ViT-B/32 (random weights, CPU, ~3 minutes).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # framework_utils when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip4clip.clip import CLIP, CLIPConfig  # noqa: E402
from clip4clip.heads import HEADS  # noqa: E402
from clip4clip.model import CLIP4Clip  # noqa: E402

T = 64
SIZE = 32


def tiny_clip(**kw) -> CLIP:
    args = dict(embed_dim=32, image_resolution=SIZE, vision_layers=2, vision_width=32, vision_patch_size=16,
                vision_heads=2, context_length=77, vocab_size=100, transformer_width=32, transformer_heads=2,
                transformer_layers=4)
    args.update(kw)
    return CLIP(CLIPConfig(**args))


def batch(b: int = 3, t: int = T):
    """b captions and b videos of t frames; video i has t - 20 * i real frames (the rest padding)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 98, (b, 16), generator=g)
    ids[:, 0], ids[:, -1] = 98, 99  # SOT ... EOT (EOT is the highest id, as CLIP pools)
    video = torch.randn(b, t, 3, SIZE, SIZE, generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):
        mask[i, : max(1, t - 20 * i)] = 1
    return ids, torch.ones_like(ids), video, mask


# ----------------------------------------------------------------------------------------------
# Every head at 64 frames
# ----------------------------------------------------------------------------------------------


#: What a head needs at 64 frames on the tiny tower: X-CLIP's frame tables sized for 64 and its
#: masked padding (officially padded frames take part in its softmaxes, so they would change the
#: scores checked below); TS2-Net's shift in the tiny tower's block 0.
HEAD_KWARGS_64 = {"xclip": {"max_frames": 64, "padding": "masked"}, "ts2net": {"shift_blocks": [0], "num_positions": 256}}
#: Heads whose official computation lets padded frames reach real ones (TS2-Net's token shift
#: takes tokens from the neighbouring frame, padded or not): the invariance check skips them.
PADDING_REACHES_SCORES = {"ts2net"}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_trains_and_evaluates_64_frame_batches(head):
    torch.manual_seed(0)
    # seqTransf/frameweight/tightTransf: positions from CLIP's 77
    model = CLIP4Clip.from_clip(tiny_clip(), head, **HEAD_KWARGS_64.get(head, {}))
    ids, am, video, mask = batch()

    def step(checkpointing: bool):
        model.clip.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(1)  # tightTransf's dropout draws the same masks in both runs
        out = model(ids, am, video, mask)
        out["loss"].backward()
        return out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step(False)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    assert any(n.startswith("head.") for n in grads) or head == "meanP"
    # grad checkpointing (what the 64-frame experiments turn on) changes nothing but memory
    loss_ckpt, grads_ckpt = step(True)
    model.clip.set_grad_checkpointing(False)
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    assert all(torch.allclose(grads[n], grads_ckpt[n], atol=1e-5, rtol=1e-4) for n in grads)

    # evaluation: padded frames do not change any score, for every head
    model.eval()
    other = video.clone()
    other[~mask.bool()] = 7.0
    with torch.no_grad():
        t = model.text_features(ids, am)
        torch.manual_seed(2)  # TS2-Net draws its top-K noise in evaluation too
        a = model.score(t, model.video_features(video, mask), mask, text_mask=am)
        torch.manual_seed(2)
        b = model.score(t, model.video_features(other, mask), mask, text_mask=am)
    assert a.shape == (3, 3)
    if head not in PADDING_REACHES_SCORES:
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("head, frames, limit", [("seqTransf", 78, 77), ("frameweight", 78, 77),
                                                 ("tightTransf", 77, 76)])
def test_frames_beyond_the_position_table_fail_in_one_line_naming_max_frames(head, frames, limit):
    model = CLIP4Clip.from_clip(tiny_clip(), head)
    ids, am, video, mask = batch(2, frames)
    with pytest.raises(ValueError) as e:
        model(ids, am, video, mask)
    msg = str(e.value)
    assert "\n" not in msg and f"dataset.max_frames={frames}" in msg and f"dataset.max_frames <= {limit}" in msg
    assert "model.head.num_positions=77" in msg
    # ... and exactly at the limit it runs (77 frame positions; tightTransf: text + 76 frames)
    ids, am, video, mask = batch(2, limit)
    assert torch.isfinite(model(ids, am, video, mask)["loss"])


def test_a_longer_position_table_takes_more_frames():
    model = CLIP4Clip.from_clip(tiny_clip(), "seqTransf", num_positions=96)
    ids, am, video, mask = batch(2, 90)
    assert torch.isfinite(model(ids, am, video, mask)["loss"])
    # the first 77 rows come from CLIP's text positions, the rest keep their random init
    pos = model.clip.state_dict()["positional_embedding"]
    assert torch.equal(model.head.frame_position_embeddings.weight[:77], pos)


# ----------------------------------------------------------------------------------------------
# 64-frame clips through frame cache, loaders, evaluation and search
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_anet(tmp_path_factory) -> Path:
    from benchmark_layouts import write_activitynet
    # 70 s at 1 fps: 70 candidate frames, cut to 64 uniformly (ActivityNet uses the whole video).
    return write_activitynet(tmp_path_factory.mktemp("anet") / "ActivityNet", seconds=70, fps=1)


def test_64_frame_clips_through_cache_loader_evaluation_and_search(long_anet):
    from benchmark_layouts import ANET
    from clip4clip.builder import to_plain
    from clip4clip.engine.evaluation import Postprocess, draw_querybank, evaluate, evaluate_with_postprocessing
    from clip4clip.search.encoder import Encoder, Sampling
    from clip4clip.tokenizer import WordTokenizer
    from data import KeyframeParams, select_keyframes
    from data.splits import build_split
    from extract_frames import run_extraction
    from framework_utils import compose_cfg

    dcfg = to_plain(compose_cfg("train", ["dataset=activitynet", f"dataset.root={long_anet}",
                                          f"dataset.frame_cache.size={SIZE}"]).dataset)
    assert dcfg["max_frames"] == T and dcfg["frame_rule"] == "official"
    decoded = build_split({**dcfg, "frame_cache": {**dcfg["frame_cache"], "use": False}}, long_anet, "test", SIZE, 0,
                          progress=False)
    item = decoded[0]
    assert item["video"].shape == (T, 3, SIZE, SIZE) and int(item["video_mask"].sum()) == T

    # frame cache: extract_frames.py at 64 frames, then the loader reads it (and nothing changes)
    report, _ = run_extraction(compose_cfg("extract_frames", ["dataset=activitynet", f"dataset.root={long_anet}",
                                                              f"size={SIZE}", "workers=0", "progress=false"]))
    assert len(report.extracted) == len(ANET["train"]) + len(ANET["val"]) and not report.failed
    cached = build_split({**dcfg, "frame_cache": {**dcfg["frame_cache"], "use": True}}, long_anet, "test", SIZE, 0,
                         progress=False)
    assert cached.frame_store is not None
    for i in range(len(cached)):
        assert torch.equal(cached[i]["video"], decoded[i]["video"])

    # evaluation (and post-processing) at 64 frames with a two-tower head
    train = build_split(dcfg, long_anet, "train", SIZE, 0, progress=False)
    tok = WordTokenizer.build([c for caps in train.captions.values() for c in caps])
    torch.manual_seed(0)
    model = CLIP4Clip.from_clip(tiny_clip(vocab_size=tok.vocab_size), "seqTransf").eval()
    opts = dict(tokenizer=tok, max_words=64, batch_size=2, device=torch.device("cpu"), progress=False)
    metrics, enc = evaluate(model, cached, **opts)
    assert metrics["t2v"]["num_queries"] == 3
    again, processed, _ = evaluate_with_postprocessing(
        model, cached, **opts, post=Postprocess(("dsl", "qbnorm")), querybank=draw_querybank(train.captions, 3))
    assert again == metrics and set(processed.metrics) == {"dsl", "qbnorm"}

    # search encodes a 64-frame clip exactly as evaluation does
    params = KeyframeParams.from_config(dcfg, "test")
    encoder = Encoder(model, tok, 64, Sampling(fps=params.fps, max_frames=T, slice_framepos=params.slice_framepos,
                                               moment_fps=1.0, moment_frames=T, image_size=SIZE,
                                               frame_rule=params.rule), "test", {})
    frames = select_keyframes(cached.video_path(enc.video_ids[0]), params).frames
    assert len(frames) == T
    emb = encoder.encode_videos([frames])
    assert np.allclose(emb[0], enc.video_emb[0].numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Activation memory (benchmarks/README.md, "Memory at 64 frames")
# ----------------------------------------------------------------------------------------------


def saved_activation_bytes(model: CLIP4Clip, frames: int, words: int, bf16: bool = False) -> int:
    """Bytes of every tensor autograd keeps for the backward pass of one clip + one caption
    (each storage counted once; parameters excluded). Under grad checkpointing the blocks keep
    only their inputs, which are counted instead (the checkpoint holds them for recomputation)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    hooks = []
    for tower in (model.clip.visual.transformer, model.clip.transformer):
        if tower.grad_checkpointing:
            hooks += [blk.register_forward_pre_hook(lambda m, a: (pack(a[0]), None)[1]) for blk in tower.resblocks]
    res = model.clip.visual.input_resolution
    video, mask = torch.randn(1, frames, 3, res, res), torch.ones(1, frames, dtype=torch.long)
    vocab = model.clip.config.vocab_size
    ids = torch.randint(1, vocab - 2, (1, words))
    ids[0, 0], ids[0, -1] = vocab - 2, vocab - 1
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            model.text_features(ids)
            model.video_features(video, mask) if not model.two_tower else model.encode_video(video, mask)
    finally:
        for h in hooks:
            h.remove()
    return sum(seen.values())


def per_frame_bytes(model: CLIP4Clip, words: int = 64, bf16: bool = False) -> tuple:
    """(bytes per extra frame, bytes at 0 frames) from 2 and 4 frames: activations are linear in frames."""
    a, b = saved_activation_bytes(model, 2, words, bf16), saved_activation_bytes(model, 4, words, bf16)
    return (b - a) / 2, a - (b - a)


def test_saved_activations_are_linear_in_frames_and_checkpointing_keeps_block_inputs_only():
    torch.manual_seed(0)
    layers, width, tokens = 3, 64, (64 // 16) ** 2 + 1
    model = CLIP4Clip.from_clip(tiny_clip(image_resolution=64, vision_width=width, vision_layers=layers), "meanP")
    slope, _ = per_frame_bytes(model, words=16)
    assert saved_activation_bytes(model, 6, 16) - saved_activation_bytes(model, 4, 16) == pytest.approx(2 * slope)
    model.clip.set_grad_checkpointing(True)
    slope_ckpt, _ = per_frame_bytes(model, words=16)
    # kept per frame: each block's fp32 input [tokens, width], the input image (conv1's backward)
    # and the few tensors outside the blocks (embedding, ln_pre/ln_post, the CLS projection)
    blocks = layers * tokens * width * 4
    assert blocks < slope_ckpt < blocks + 3 * 64 * 64 * 4 + 8 * tokens * width * 4
    assert slope_ckpt < slope / 4  # (ViT-B/32: 15x less, benchmarks/README.md)


def _vit_b32_report() -> None:  # pragma: no cover - the README's figures (python tests/test_long_videos.py)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    clip = CLIP(CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                           vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                           transformer_heads=8, transformer_layers=12))
    model = CLIP4Clip.from_clip(clip, "meanP", init_head_from_clip=False)
    mib = 2 ** 20
    for bf16 in (False, True):
        for ckpt in (False, True):
            model.clip.set_grad_checkpointing(ckpt)
            slope, rest = per_frame_bytes(model, words=64, bf16=bf16)
            print(f"{'bf16 autocast' if bf16 else 'fp32':13s} checkpointing={'on ' if ckpt else 'off'}: "
                  f"{slope / mib:6.2f} MiB per frame -> {T * slope / mib:7.1f} MiB per 64-frame clip "
                  f"(+ {rest / mib:.1f} MiB caption and per-pass constants)", flush=True)


if __name__ == "__main__":
    _vit_b32_report()
