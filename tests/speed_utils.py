"""A tiny CLIP4Clip and a fixed batch for the distributed / gradient-cache / precision tests."""
import torch

from clip4clip.clip import CLIP, CLIPConfig
from clip4clip.model import CLIP4Clip

# Parameters whose gradients the equality tests compare: both towers, the head, the temperature.
PROBES = ("clip.visual.conv1.weight", "clip.visual.proj", "clip.transformer.resblocks.0.mlp.c_fc.weight",
          "clip.text_projection", "clip.token_embedding.weight", "head.transformer.resblocks.0.attn.in_proj_weight",
          "clip.logit_scale")


def tiny_model(seed: int = 0, head: str = "seqTransf") -> CLIP4Clip:
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32, vision_patch_size=8,
                           vision_heads=2, context_length=8, vocab_size=50, transformer_width=32,
                           transformer_heads=2, transformer_layers=1))
    kwargs = {"num_blocks": 1} if head in ("seqTransf", "frameweight") else {}
    return CLIP4Clip.from_clip(clip, head, init_head_from_clip=False, **kwargs)


def tiny_batch(n: int = 8, frames: int = 3, seed: int = 1, uint8: bool = False) -> dict:
    """Inputs of n clips; the last clip has one padded frame, captions have varied lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, 8, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 4
        ids[i, 0] = 48                                       # start of text
        ids[i, 1:length - 1] = torch.randint(1, 40, (length - 2,), generator=g)
        ids[i, length - 1] = 49                              # end of text: the highest id
    mask = torch.ones(n, frames, dtype=torch.long)
    mask[-1, -1] = 0
    if uint8:
        video = torch.randint(0, 256, (n, frames, 3, 16, 16), generator=g, dtype=torch.uint8)
    else:
        video = torch.randn(n, frames, 3, 16, 16, generator=g)
    return {"input_ids": ids, "attention_mask": (ids > 0).long(), "video": video, "video_mask": mask}


def grads(model, names=PROBES) -> dict:
    params = dict(model.named_parameters())
    return {k: params[k].grad.detach().clone() for k in names}


def assert_grads_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    """Every gradient within ``tol`` of the reference, measured against the tensor's own scale
    (max |g| when it exceeds 1: float32 summation order alone moves large entries by ~1e-7 of them)."""
    for k, w in want.items():
        err = (got[k] - w).abs().max().item()
        scale = max(1.0, w.abs().max().item())
        assert err <= tol * scale, f"{k}: max |diff| {err:.3g} > {tol} x {scale:.3g}"
