"""CLIP preprocessing: shorter-side bicubic resize, centre crop, normalisation."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.video.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    clip_preprocess,
    clip_resize_crop,
    normalize_uint8,
    normalize_uint8_numpy,
    resize_shorter_side,
)


def test_constants_are_clips():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_output_shape_and_dtype():
    frames = np.random.default_rng(0).integers(0, 256, (5, 240, 320, 3), dtype=np.uint8)
    out = clip_preprocess(frames, 224)
    assert out.shape == (5, 3, 224, 224) and out.dtype == torch.float32


def test_constant_image_normalises_to_expected_values():
    value = np.array([200, 100, 50], dtype=np.uint8)
    frames = np.broadcast_to(value, (2, 50, 80, 3)).copy()
    out = clip_preprocess(frames, 32)
    for c in range(3):
        expected = (value[c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[:, c], torch.full((2, 32, 32), expected, dtype=torch.float32))


def test_normalize_uint8_matches_formula_and_handles_batch_dims():
    x = torch.randint(0, 256, (2, 4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(normalize_uint8(x), (x.float() / 255.0 - mean) / std)
    assert normalize_uint8(x, torch.float16).dtype == torch.float16
    # channels-last views (from permuting HWC arrays) give the same numbers
    hwc = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    torch.testing.assert_close(normalize_uint8(hwc.permute(0, 3, 1, 2)), normalize_uint8(hwc.permute(0, 3, 1, 2).contiguous()))
    with pytest.raises(ValueError, match="uint8"):
        normalize_uint8(x.float())


@pytest.mark.parametrize("hw, size, expected", [((100, 200), 50, (50, 100)), ((256, 340), 224, (224, 297)), ((340, 256), 224, (297, 224)), ((64, 64), 224, (224, 224))])
def test_resize_shorter_side_keeps_aspect(hw, size, expected):
    img = np.zeros((*hw, 3), dtype=np.uint8)
    out = resize_shorter_side(img, size)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8


def test_resize_is_pil_bicubic():
    img = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((67, 45), Image.BICUBIC))  # 45 * 45/30 = 67.5 -> 67
    np.testing.assert_array_equal(resize_shorter_side(img, 45), ref)


def test_center_crop_offsets_round_like_torchvision():
    img = np.arange(7 * 10 * 3, dtype=np.int64).reshape(7, 10, 3).astype(np.uint8)
    out = center_crop(img, 4)
    # top = round((7 - 4) / 2) = round(1.5) = 2 (banker's rounding, as torchvision), left = 3
    np.testing.assert_array_equal(out, img[2:6, 3:7])


def test_center_crop_pads_small_images():
    img = np.full((2, 6, 3), 9, dtype=np.uint8)
    out = center_crop(img, 4)
    assert out.shape == (4, 4, 3)
    assert (out[1:3] == 9).all() and (out[0] == 0).all() and (out[3] == 0).all()


def test_resize_crop_keeps_the_centre_of_a_wide_frame():
    # Left third red, middle third green, right third blue: the centre crop is all green.
    frame = np.zeros((60, 180, 3), dtype=np.uint8)
    frame[:, :60, 0] = 255
    frame[:, 60:120, 1] = 255
    frame[:, 120:, 2] = 255
    out = clip_resize_crop(frame[None], 30)[0]
    assert out.shape == (30, 30, 3)
    # (bicubic blends a pixel or two at the colour boundaries, which sit at the crop's edges)
    inner = out[:, 3:-3].astype(int)
    assert (inner[..., 1] >= 250).all() and (inner[..., [0, 2]] <= 5).all()


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        clip_preprocess(np.zeros((4, 4, 3), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        resize_shorter_side(np.zeros((4, 4, 3), dtype=np.float32), 8)


def test_numpy_normalisation_equals_torch():
    x = np.random.default_rng(2).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    chw = x.transpose(0, 3, 1, 2)  # a strided view, as the dataset passes it
    got = normalize_uint8_numpy(chw)
    assert got.dtype == np.float32 and got.shape == (3, 3, 5, 6)
    np.testing.assert_array_equal(got, normalize_uint8(torch.from_numpy(np.ascontiguousarray(chw))).numpy())
    out = np.zeros((4, 3, 5, 6), dtype=np.float32)
    normalize_uint8_numpy(chw, out=out[:3])
    np.testing.assert_array_equal(out[:3], got)
    assert (out[3] == 0).all()


@pytest.mark.parametrize("hw", [(40, 50), (32, 32)])  # resized, and already model-size (the fast path)
@pytest.mark.parametrize("max_frames", [4, 8])
def test_pack_clip_is_clip_preprocessing_of_the_kept_frames(hw, max_frames):
    from data.video.transforms import pack_clip
    frames = np.random.default_rng(1).integers(0, 256, (6, *hw, 3), dtype=np.uint8)
    frames.flags.writeable = False  # as the in-memory frame cache hands them out
    before = frames.copy()
    t = min(6, max_frames)
    video, mask = pack_clip(frames, max_frames, 32)
    assert video.shape == (max_frames, 3, 32, 32) and video.dtype == torch.float32
    torch.testing.assert_close(video[:t], clip_preprocess(frames[:t], 32), rtol=0, atol=0)
    assert video[t:].abs().sum() == 0
    assert mask.dtype == torch.int64 and mask.tolist() == [1] * t + [0] * (max_frames - t)
    raw, _ = pack_clip(frames, max_frames, 32, normalize=False)
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw[:t].numpy(), clip_resize_crop(frames[:t], 32).transpose(0, 3, 1, 2))
    order = np.arange(t)[::-1]
    flipped, _ = pack_clip(frames, max_frames, 32, order=order)
    torch.testing.assert_close(flipped[:t], video[:t].flip(0), rtol=0, atol=0)
    np.testing.assert_array_equal(frames, before)  # the input is only read


def test_pack_clip_rejects_frames_that_are_not_uint8_rgb():
    from data.video.transforms import pack_clip
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        pack_clip(np.zeros((2, 32, 32, 3), dtype=np.float32), 4, 32)
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        pack_clip(np.zeros((2, 32, 32), dtype=np.uint8), 4, 32)
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        pack_clip(None, 4, 32)
