"""Mixed precision and the other speed options: bf16 on CPU, fp16/bf16 on CUDA (skipped without
a GPU), float32 LayerNorm / softmax / loss under autocast, uint8 frames normalised on the
device, torch.compile in place."""
import pytest
import torch

from clip4clip.clip.layers import LayerNorm
from clip4clip.engine.optim import build_optimizer
from clip4clip.engine.precision import autocast, grad_scaler, resolve_precision
from clip4clip.engine.step import ContrastiveStep, batch_to_device
from speed_utils import tiny_batch, tiny_model

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train_steps(device, precision, steps=3, chunk_size=0):
    torch.manual_seed(0)
    model = tiny_model().to(device)
    opt = build_optimizer(model, lr=1e-3, coef_lr=1.0, pretrained=set(), fused=device.type == "cuda")
    scaler = grad_scaler(device, precision)
    step = ContrastiveStep(model, device=device, precision=precision, scaler=scaler, chunk_size=chunk_size)
    losses = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        losses.append(step(batch_to_device(tiny_batch(8, seed=i, uint8=True), device)).item())
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    return model, losses


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", CPU)


def test_bf16_training_steps_on_cpu_are_finite_with_float32_master_weights():
    torch.set_num_threads(1)
    model, losses = _train_steps(CPU, "bf16")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _, fp32 = _train_steps(CPU, "fp32", steps=1)
    assert losses[0] == pytest.approx(fp32[0], abs=0.05)  # bf16 rounding, not a different model


def test_layernorm_softmax_and_loss_stay_float32_under_bf16_autocast():
    ln = LayerNorm(32)
    x = (torch.randn(4, 32) * 30 + 100).bfloat16()  # large mean: bf16 statistics would be off
    with autocast(CPU, "bf16"):
        y = ln(x)
    want = torch.nn.functional.layer_norm(x.float(), (32,), ln.weight, ln.bias, ln.eps)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want.bfloat16().float())
    model = tiny_model(head="frameweight")
    b = tiny_batch(4)
    with autocast(CPU, "bf16"):
        frames = model.encode_frames(b["video"], frame_mask=b["video_mask"])
        _, weights = model.head(frames, b["video_mask"], return_weights=True)
    assert weights.dtype == torch.float32  # the frame softmax
    loss = ContrastiveStep(model, precision="bf16")(b)
    assert loss.dtype == torch.float32


def test_uint8_frames_normalised_on_the_device_give_the_float_pipeline_loss():
    from data.video.transforms import normalize_uint8
    raw = tiny_batch(6, uint8=True)
    moved = batch_to_device(raw, CPU)
    assert moved["video"].dtype == torch.float32
    torch.testing.assert_close(moved["video"], normalize_uint8(raw["video"]))
    pre = dict(raw, video=normalize_uint8(raw["video"]))  # what a normalize=True dataset ships
    a = ContrastiveStep(tiny_model())(batch_to_device(raw, CPU))
    b = ContrastiveStep(tiny_model())(pre)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_compile_in_place_keeps_parameter_names():
    torch.set_num_threads(1)
    model = tiny_model()
    names = list(model.state_dict())
    want = ContrastiveStep(tiny_model())(tiny_batch(4)).item()
    model.compile(backend="eager")  # what trainer.compile=eager does; inductor needs minutes on CPU
    assert list(model.state_dict()) == names
    assert ContrastiveStep(model)(tiny_batch(4)).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_steps_are_finite(precision):
    model, losses = _train_steps(torch.device("cuda"), precision)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.cuda
@cuda
def test_cuda_bf16_chunked_step_matches_plain_step():
    _, plain = _train_steps(torch.device("cuda"), "bf16", steps=1)
    _, chunked = _train_steps(torch.device("cuda"), "bf16", steps=1, chunk_size=3)
    assert chunked[0] == pytest.approx(plain[0], abs=1e-3)  # bf16: same arithmetic per clip
