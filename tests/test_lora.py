"""LoRA on CLIP's text tower: unchanged at init, fused q/k/v thirds, scaling, merge for export."""
import copy

import pytest
import torch

from adapters import LoRA, LoRAAttention, inject_lora, merge_lora
from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.clip.layers import Attention


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
                           vision_patch_size=16, context_length=16, vocab_size=100,
                           transformer_width=64, transformer_layers=2)).eval()


def tokens(b=3, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 98, (b, length), generator=g)
    text[:, -1] = 99  # end-of-text token: the highest id
    return text


def perturb_b_(module, std=0.1, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRA):
                m.B.copy_(torch.randn(m.B.shape, generator=g) * std)


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_zero_init_leaves_outputs_unchanged_and_keys_in_place():
    plain = tiny_clip()
    lora = copy.deepcopy(plain)
    inject_lora(lora.transformer, rank=4, alpha=8)
    text = tokens()
    with torch.no_grad():
        assert max_diff(plain.encode_text(text), lora.encode_text(text)) < 1e-6
    keys, plain_keys = set(lora.state_dict()), set(plain.state_dict())
    assert plain_keys <= keys
    assert keys - plain_keys == {f"transformer.resblocks.{i}.attn.lora_{t}.{p}"
                                 for i in range(2) for t in ("q", "k", "v", "out") for p in ("A", "B")}
    attn = lora.transformer.resblocks[0].attn
    assert isinstance(attn, LoRAAttention) and attn.lora_q.A.shape == (4, 64) and attn.lora_q.B.shape == (64, 4)
    assert torch.count_nonzero(attn.lora_q.A) > 0 and torch.count_nonzero(attn.lora_q.B) == 0
    assert not any(isinstance(b.attn, LoRAAttention) for b in lora.visual.transformer.resblocks)


def test_perturbed_lora_changes_outputs_and_merge_restores_plain_attention():
    plain = tiny_clip()
    model = copy.deepcopy(plain)
    inject_lora(model.transformer, rank=4, alpha=8)
    perturb_b_(model)
    text = tokens()
    with torch.no_grad():
        before = model.encode_text(text)
        assert max_diff(before, plain.encode_text(text)) > 1e-3
        merge_lora(model.transformer)
        after = model.encode_text(text)
    assert max_diff(before, after) < 1e-5
    assert all(type(b.attn) is Attention for b in model.transformer.resblocks)
    assert set(model.state_dict()) == set(plain.state_dict())
    # The merged model is a plain CLIP: its state dict loads strictly into a fresh one.
    fresh = tiny_clip(seed=5)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert max_diff(fresh.encode_text(text), after) < 1e-6
    with pytest.raises(ValueError, match="no LoRAAttention"):
        merge_lora(model.transformer)


def test_targets_subset_touches_only_its_thirds_of_the_fused_projection():
    model = tiny_clip()
    w0 = model.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    out0 = model.transformer.resblocks[0].attn.out_proj.weight.detach().clone()
    inject_lora(model.transformer, rank=2, alpha=2, targets=("q", "v"))
    attn = model.transformer.resblocks[0].attn
    assert attn.lora_k is None and attn.lora_out is None and attn.lora_q is not None and attn.lora_v is not None
    perturb_b_(model)
    text = tokens()
    with torch.no_grad():
        before = model.encode_text(text)
        merge_lora(model.transformer)
        assert max_diff(before, model.encode_text(text)) < 1e-5
    w = model.transformer.resblocks[0].attn.in_proj_weight
    d = 64
    assert not torch.equal(w[:d], w0[:d])               # q changed
    assert torch.equal(w[d:2 * d], w0[d:2 * d])         # k untouched
    assert not torch.equal(w[2 * d:], w0[2 * d:])       # v changed
    assert torch.equal(model.transformer.resblocks[0].attn.out_proj.weight, out0)


def test_scaling_is_alpha_over_rank():
    lora = LoRA(8, 6, rank=4, alpha=12)
    assert lora.scaling == 3.0
    with torch.no_grad():
        lora.B.normal_()
    x = torch.randn(5, 8)
    expected = 3.0 * x @ lora.A.t() @ lora.B.t()
    assert torch.allclose(lora(x), expected, atol=1e-5)
    assert torch.allclose(lora.delta_weight(), 3.0 * lora.B @ lora.A)
    # Through the attention: "out" alone adds (alpha / rank) * B @ A to out_proj.weight.
    attn = Attention(16, 2)
    w = attn.out_proj.weight.detach().clone()
    wrapped = LoRAAttention(attn, rank=2, alpha=8, targets=("out",))
    with torch.no_grad():
        wrapped.lora_out.B.normal_()
    delta = 4.0 * wrapped.lora_out.B @ wrapped.lora_out.A
    merged = wrapped.merged()
    assert torch.allclose(merged.out_proj.weight, w + delta, atol=1e-6)


def test_dropout_acts_on_the_lora_input_only():
    plain = tiny_clip()
    model = copy.deepcopy(plain)
    inject_lora(model.transformer, rank=4, alpha=8, dropout=0.5)
    model.train()
    text = tokens()
    with torch.no_grad():  # B = 0: whatever dropout does, the base path is untouched
        assert max_diff(model.encode_text(text), plain.encode_text(text)) < 1e-6
        perturb_b_(model)
        torch.manual_seed(0)
        train_a = model.encode_text(text)
        torch.manual_seed(1)
        train_b = model.encode_text(text)
        model.eval()
        assert max_diff(train_a, train_b) > 1e-4
        assert torch.equal(model.encode_text(text), model.encode_text(text))


def test_gradients_reach_b_at_zero_init():
    model = tiny_clip()
    inject_lora(model.transformer, rank=4, alpha=8)
    model.encode_text(tokens()).pow(2).sum().backward()
    attn = model.transformer.resblocks[1].attn
    for _, lora in attn.loras():
        assert torch.count_nonzero(lora.B.grad) > 0      # B learns from the first step
        assert torch.count_nonzero(lora.A.grad) == 0     # A only once B is non-zero


def test_lora_parameters_on_meta_device():
    with torch.device("meta"):
        clip = CLIP(CLIPConfig(transformer_width=512, transformer_layers=12))
    inject_lora(clip.transformer, rank=8, alpha=16)
    added = sum(p.numel() for m in clip.modules() if isinstance(m, LoRA) for p in m.parameters())
    assert added == 12 * 4 * 2 * 512 * 8
    assert all(p.device.type == "meta" for p in clip.parameters())


def test_invalid_injection_is_refused():
    model = tiny_clip()
    with pytest.raises(ValueError, match="targets"):
        inject_lora(model.transformer, targets=("q", "query"))
    with pytest.raises(ValueError, match="targets"):
        inject_lora(model.transformer, targets=())
    with pytest.raises(TypeError, match="string"):
        inject_lora(model.transformer, targets="qv")
    with pytest.raises(ValueError, match="rank"):
        inject_lora(model.transformer, rank=0)
    with pytest.raises(TypeError, match="clip.transformer"):
        inject_lora(model)
    assert all(type(b.attn) is Attention for b in model.transformer.resblocks)  # nothing half-done
    inject_lora(model.transformer)
    with pytest.raises(RuntimeError, match="already injected"):
        inject_lora(model.transformer)
