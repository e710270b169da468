"""AIM adapters injected into CLIP4Clip: exact identity at init, masking, freezing, counts,
checkpoints. Tiny models built here; the whole file runs in a few seconds on CPU."""
import copy

import pytest
import torch

from adapters import (AIMBlock, Adapter, LoRA, TemporalEmbedding, configure_trainable,
                      format_parameter_summary, inject_aim, inject_lora, parameter_summary)
from clip4clip.weights.adapter_state import load_trainable_state_dict, trainable_state_dict
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.model import CLIP4Clip

HEADS = [("meanP", {}), ("seqLSTM", {}), ("seqTransf", {"num_blocks": 1}), ("frameweight", {"num_blocks": 1})]
T = 3


def tiny_config():
    return CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                      vision_patch_size=16, context_length=16, vocab_size=100,
                      transformer_width=64, transformer_layers=2)


def build(head="meanP", seed=0, **head_kwargs):
    torch.manual_seed(seed)
    return CLIP4Clip.from_clip(CLIP(tiny_config()), head=head, init_head_from_clip=False, **head_kwargs)


def inject_all(model, lora=True, **aim_kwargs):
    inject_aim(model.clip.visual, num_frames=4, **aim_kwargs)
    if lora:
        inject_lora(model.clip.transformer, rank=4, alpha=8)
    return model


def inputs(seed=1, b=2):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, T, 3, 32, 32, generator=g)
    mask = torch.ones(b, T, dtype=torch.long)
    mask[1, -1] = 0  # second video: last frame is padding
    text = torch.randint(1, 98, (b, 10), generator=g)
    text[:, -1] = 99  # end-of-text: the highest id, where CLIP pools
    return video, mask, text


def perturb_(model, std=0.05, seed=3):
    """Move every adapter / temporal embedding / LoRA B away from zero (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Adapter):
                m.fc2.weight.copy_(torch.randn(m.fc2.weight.shape, generator=g) * std)
                m.fc2.bias.copy_(torch.randn(m.fc2.bias.shape, generator=g) * std)
            elif isinstance(m, TemporalEmbedding):
                m.embedding.copy_(torch.randn(m.embedding.shape, generator=g) * std)
            elif isinstance(m, LoRA):
                m.B.copy_(torch.randn(m.B.shape, generator=g) * std)
    return model


def loss_of(model, video, mask, text):
    return model(text, (text > 0).long(), video, mask)["loss"]


# ------------------------------------------------------------------ Adapter
def test_adapter_starts_as_identity_or_zero():
    x = torch.randn(2, 5, 64)
    a = Adapter(64)
    assert a.fc1.out_features == 16 and torch.count_nonzero(a.fc2.weight) == 0
    assert torch.count_nonzero(a.fc2.bias) == 0
    assert torch.equal(a(x), x)
    assert torch.equal(Adapter(64, skip=False)(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="bottleneck"):
        Adapter(3, ratio=0.25)


# ------------------------------------------------------------------ identity at init
@pytest.mark.parametrize("head,kwargs", HEADS, ids=[h for h, _ in HEADS])
def test_injected_model_equals_plain_at_init(head, kwargs):
    plain = build(head, **kwargs).eval()
    adapted = inject_all(copy.deepcopy(plain)).eval()
    video, mask, text = inputs()
    with torch.no_grad():
        assert (plain.encode_video(video, mask) - adapted.encode_video(video, mask)).abs().max() < 1e-6
        assert (plain.encode_text(text) - adapted.encode_text(text)).abs().max() < 1e-6


@pytest.mark.parametrize("kinds", [dict(temporal=False), dict(spatial=False), dict(joint=False),
                                   dict(temporal_embedding=False)])
def test_partial_injection_equals_plain_at_init(kinds):
    plain = build().eval()
    adapted = inject_all(copy.deepcopy(plain), lora=False, **kinds).eval()
    video, mask, _ = inputs()
    with torch.no_grad():
        assert (plain.encode_video(video, mask) - adapted.encode_video(video, mask)).abs().max() < 1e-6
    block = adapted.clip.visual.transformer.resblocks[0]
    for kind in ("temporal", "spatial", "joint"):
        assert (getattr(block, f"{kind}_adapter") is None) == (kinds.get(kind) is False)


# ------------------------------------------------------------------ freezing and training
def test_configure_trainable_default_categories():
    model = inject_all(build("seqTransf", num_blocks=1))
    summary = configure_trainable(model)
    clip = model.clip
    lora_ids = {id(p) for m in model.modules() if isinstance(m, LoRA) for p in m.parameters()}
    adapter_ids = {id(p) for m in model.modules() if isinstance(m, (Adapter, TemporalEmbedding))
                   for p in m.parameters()}
    assert lora_ids and adapter_ids
    for name, p in model.named_parameters():
        if id(p) in lora_ids or id(p) in adapter_ids or name.startswith("head."):
            assert p.requires_grad, name
        else:  # CLIP: vision base, text tower base, logit_scale
            assert not p.requires_grad, name
    assert not clip.token_embedding.weight.requires_grad and not clip.text_projection.requires_grad
    assert not clip.transformer.resblocks[0].attn.in_proj_weight.requires_grad
    assert not clip.visual.transformer.resblocks[0].mlp.c_fc.weight.requires_grad
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary["groups"]["text"] == 0 and summary["groups"]["lora"] == 2 * 4 * (2 * 64 * 4)  # layers x targets x (A + B)
    assert 0 < summary["percent"] < 100
    assert summary == {**parameter_summary(model), "groups": summary["groups"]}
    assert format_parameter_summary(summary).startswith("trainable params:")


def test_configure_trainable_other_flags():
    model = inject_all(build("seqTransf", num_blocks=1))
    configure_trainable(model, train_adapters=False, train_temporal_embedding=False, train_head=False,
                        train_text=True, train_lora=False, train_logit_scale=True)
    clip = model.clip
    assert clip.logit_scale.requires_grad
    text = [clip.token_embedding.weight, clip.positional_embedding, clip.text_projection,
            clip.ln_final.weight, clip.transformer.resblocks[1].attn.in_proj_weight,
            clip.transformer.resblocks[1].attn.out_proj.weight, clip.transformer.resblocks[1].mlp.c_fc.weight]
    assert all(p.requires_grad for p in text)
    for m in model.modules():
        if isinstance(m, (Adapter, TemporalEmbedding, LoRA)):
            assert not any(p.requires_grad for p in m.parameters())
    assert not any(p.requires_grad for p in model.head.parameters())
    assert not any(p.requires_grad for p in clip.visual.parameters())
    with pytest.raises(ValueError, match="no trainable"):
        configure_trainable(build(), train_head=False)  # plain meanP model: nothing left


def test_gradients_reach_adapters_and_step_leaves_frozen_weights_bit_exact():
    model = perturb_(inject_all(build("seqTransf", num_blocks=1))).train()
    configure_trainable(model)
    video, mask, text = inputs()
    loss_of(model, video, mask, text).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name


def test_fc2_gets_gradient_at_zero_init():
    model = inject_all(build(), lora=False)
    configure_trainable(model)
    video, mask, text = inputs()
    loss_of(model, video, mask, text).backward()
    for m in model.modules():
        if isinstance(m, Adapter):
            assert torch.count_nonzero(m.fc2.weight.grad) > 0


# ------------------------------------------------------------------ parameter counts (ViT-B/32)
@pytest.mark.parametrize("kinds,flags", [(1, dict(spatial=False, joint=False)), (3, {})])
def test_vit_b32_adapter_parameter_count_on_meta(kinds, flags):
    with torch.device("meta"):
        clip = CLIP(CLIPConfig(vision_width=768, vision_layers=12, vision_patch_size=32,
                               image_resolution=224, embed_dim=512, transformer_width=512,
                               transformer_layers=12))
    base = sum(p.numel() for p in clip.parameters())
    inject_aim(clip.visual, num_frames=12, **flags)
    added = sum(p.numel() for p in clip.parameters()) - base
    per_adapter = 2 * 768 * 192 + 192 + 768
    assert added == 12 * kinds * per_adapter + 12 * 768
    assert all(p.device.type == "meta" for p in clip.parameters())
    if kinds == 3:  # the thesis reports 10.66M trainable parameters for AIM (12 frames)
        assert added == 10_660_608


# ------------------------------------------------------------------ masking and mixing
def test_padded_frames_do_not_change_the_video_embedding():
    model = perturb_(inject_all(build("meanP"), lora=False), std=0.2).eval()
    video, mask, _ = inputs()
    with torch.no_grad():
        ref = model.encode_video(video, mask)
        changed_pad = video.clone()
        changed_pad[1, -1] = torch.randn_like(changed_pad[1, -1]) * 3
        assert (model.encode_video(changed_pad, mask) - ref).abs().max() < 1e-5
        changed_valid = video.clone()
        changed_valid[1, 0] += 1.0
        diff = (model.encode_video(changed_valid, mask) - ref).abs()
        assert diff[1].max() > 1e-3 and diff[0].max() < 1e-6  # videos stay independent


def test_temporal_attention_mixes_frames_only_when_enabled():
    video, _, _ = inputs()
    mask = torch.ones(2, T, dtype=torch.long)
    changed = video.clone()
    changed[:, 0] += 1.0
    for temporal in (True, False):
        model = perturb_(inject_all(build(), lora=False, temporal=temporal), std=0.2).eval()
        with torch.no_grad():
            a = model.encode_frames(video, frame_mask=mask)
            b = model.encode_frames(changed, frame_mask=mask)
        frame1_moved = (a[:, 1] - b[:, 1]).abs().max()
        assert (frame1_moved > 1e-3) if temporal else (frame1_moved < 1e-6)


def test_video_without_valid_frames_stays_finite():
    model = perturb_(inject_all(build(), lora=False)).eval()
    video, _, _ = inputs()
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with torch.no_grad():
        assert torch.isfinite(model.encode_frames(video, frame_mask=mask)).all()


def test_frame_layout_errors_name_the_values():
    model = inject_all(build(), lora=False)
    video = torch.randn(1, 5, 3, 32, 32)
    with pytest.raises(ValueError, match="T=5.*num_frames=4"):
        model.encode_video(video, torch.ones(1, 5))
    with pytest.raises(ValueError, match="frame layout|num_frames=4"):
        model.clip.encode_image(torch.randn(3, 3, 32, 32))  # 3 images, no mask, T=4 assumed


def test_injection_is_refused_twice_and_on_the_wrong_module():
    model = inject_all(build(), lora=False)
    with pytest.raises(RuntimeError, match="already injected"):
        inject_aim(model.clip.visual, num_frames=4)
    with pytest.raises(TypeError, match="model.clip.visual"):
        inject_aim(build(), num_frames=4)
    with pytest.raises(TypeError, match="clip.visual"):
        inject_aim(build().clip, num_frames=4)
    with pytest.raises(ValueError, match="num_frames"):
        inject_aim(build().clip.visual, num_frames=0)


def test_drop_path_increases_linearly_with_depth():
    model = inject_all(build(), lora=False, drop_path=0.2)
    rates = [b.drop_path.p for b in model.clip.visual.transformer.resblocks]
    assert rates == pytest.approx([0.0, 0.2])
    assert all(isinstance(b, AIMBlock) for b in model.clip.visual.transformer.resblocks)


# ------------------------------------------------------------------ pretrained weights
def test_pretrained_state_dict_loads_into_injected_model():
    plain = build("seqTransf", num_blocks=1).eval()
    plain_sd = plain.state_dict()
    adapted = inject_all(build("seqTransf", seed=5, num_blocks=1)).eval()  # other random weights
    assert set(plain_sd) <= set(adapted.state_dict())
    missing, unexpected = adapted.load_state_dict(plain_sd, strict=False)
    assert not unexpected
    assert missing and all(("_adapter." in k or "pre_ln_adapter." in k or ".lora_" in k) for k in missing)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in {k[len("clip."):] for k in plain_sd}
    video, mask, text = inputs()
    with torch.no_grad():
        assert (plain.encode_video(video, mask) - adapted.encode_video(video, mask)).abs().max() < 1e-6
        assert (plain.encode_text(text) - adapted.encode_text(text)).abs().max() < 1e-6


# ------------------------------------------------------------------ gradient checkpointing
def test_grad_checkpointing_gives_same_loss_and_grads():
    model = perturb_(inject_all(build("seqTransf", num_blocks=1), drop_path=0.1)).train()
    configure_trainable(model, train_text=True)
    video, mask, text = inputs()
    results = []
    for enable in (False, True):
        model.clip.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # drop path draws the same masks; checkpoint replays the RNG
        loss = loss_of(model, video, mask, text)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.requires_grad}))
    (loss0, g0), (loss1, g1) = results
    assert torch.allclose(loss0, loss1, atol=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-6), name


# ------------------------------------------------------------------ small checkpoints
def _prepared(seed_head=0, **aim_kwargs):
    """A model as the trainer builds it: same 'pretrained' CLIP, new head, injection, freezing."""
    model = build("seqTransf", seed=seed_head, num_blocks=1)
    model.clip.load_state_dict(build("seqTransf", seed=0, num_blocks=1).clip.state_dict())
    inject_all(model, **aim_kwargs)
    configure_trainable(model)
    return model


def test_trainable_state_dict_round_trip():
    trained = perturb_(_prepared())
    with torch.no_grad():  # as if training moved the head too
        for p in trained.head.parameters():
            p.add_(0.01)
    sd = trainable_state_dict(trained)
    full = trained.state_dict()
    assert sum(v.numel() for v in sd.values()) < 0.25 * sum(v.numel() for v in full.values())
    assert any(k.startswith("head.") for k in sd) and not any(k.startswith("clip.visual.conv1") for k in sd)

    fresh = _prepared(seed_head=9)
    load_trainable_state_dict(fresh, sd)
    trained.eval(), fresh.eval()
    video, mask, text = inputs()
    with torch.no_grad():
        assert torch.equal(trained.encode_video(video, mask), fresh.encode_video(video, mask))
        assert torch.equal(trained.encode_text(text), fresh.encode_text(text))


def test_load_trainable_state_dict_rejects_foreign_checkpoints():
    model = _prepared()
    sd = trainable_state_dict(model)
    temporal_only = trainable_state_dict(_prepared(spatial=False, joint=False))
    with pytest.raises(ValueError, match=r"missing \(\d+\).*spatial_adapter"):
        load_trainable_state_dict(model, temporal_only)
    with pytest.raises(ValueError, match=r"unexpected \(1\).*not\.a\.key"):
        load_trainable_state_dict(model, {**sd, "not.a.key": torch.zeros(1)})
    key = "clip.visual.pre_ln_adapter.embedding"
    with pytest.raises(ValueError, match="shape mismatch.*pre_ln_adapter"):
        load_trainable_state_dict(model, {**sd, key: torch.zeros(7, 64)})
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state_dict(_prepared(), build().state_dict())  # plain CLIP4Clip, no adapters


def test_init_checkpoint_keeps_the_saved_head_count_so_adapters_start_from_the_same_model(tmp_path):
    """A from-scratch model with 4 heads at width 64 (OpenAI's rule would say 1): the model
    rebuilt from ``model.init_checkpoint`` with zero-initialised AIM adapters must compute
    exactly what the checkpointed model computes."""
    from clip4clip.builder import model_args
    from clip4clip.weights import build_model
    from clip4clip.weights.checkpoints import read_init_checkpoint
    from clip4clip.engine.saving import FORMAT, atomic_save
    arch = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=4,
                vision_patch_size=8, context_length=16, vocab_size=50, transformer_width=64,
                transformer_heads=4, transformer_layers=1)
    mcfg = {"clip": {"arch": arch}, "head": {"name": "meanP"}}
    torch.manual_seed(0)
    base = build_model(mcfg).eval()
    path = atomic_save({"format": FORMAT, "model": base.state_dict(), "model_args": model_args(base, mcfg),
                        "weights": "full"}, tmp_path / "base.pt")
    aim = {"name": "aim", "aim": {"num_frames": T, "temporal": True, "spatial": True, "joint": True}}
    staged = build_model({**mcfg, "init_checkpoint": str(path)}, adapter_cfg=aim,
                         init_state=read_init_checkpoint({**mcfg, "init_checkpoint": str(path)})).eval()
    assert staged.clip.config.vision_heads == 4
    video, mask, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(staged.encode_video(video, mask), base.encode_video(video, mask),
                                   rtol=0, atol=1e-6)
