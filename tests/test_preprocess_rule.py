"""The one preprocessing rule: bit-exact with the reference PIL pipeline on 8-bit X-rays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hamedge.errors import DataError, SpecError
from hamedge.preprocess import normalise, preprocess, preprocess_batch, resize, to_luma
from hamedge.spec import ModelSpec


def reference_pipeline(pil: Image.Image, size: int, mean, std) -> np.ndarray:
    """What the HAM reference does: RGB, PIL bilinear resize, ToTensor, Normalize (float32)."""
    rgb = np.asarray(pil.convert("RGB").resize((size, size), Image.BILINEAR))
    x = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


@pytest.mark.parametrize("size", [512, 224, 97])
def test_bit_exact_with_reference_on_real_xrays(nih_images, size):
    spec = ModelSpec(input_size=size)
    for path in nih_images:
        pil = Image.open(path)
        ours = preprocess(np.asarray(pil), spec)
        assert ours.dtype == np.float32 and ours.shape == (3, size, size)
        assert np.array_equal(ours, reference_pipeline(pil, size, spec.mean, spec.std))


def test_bit_exact_with_torch_normalisation(nih_images):
    torch = pytest.importorskip("torch")
    spec = ModelSpec(input_size=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pil = Image.open(nih_images[0])
    rgb = torch.from_numpy(np.asarray(pil.convert("RGB").resize((128, 128), Image.BILINEAR)).copy())
    t = rgb.permute(2, 0, 1).float().div(255)  # torchvision ToTensor
    t = t.sub(torch.tensor(spec.mean)[:, None, None]).div(torch.tensor(spec.std)[:, None, None])
    assert np.array_equal(preprocess(np.asarray(pil), spec), t.numpy())


def test_rgb_input_keeps_channels_and_luma_for_folded_graph():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    spec = ModelSpec(input_size=32)
    ours = preprocess(rgb, spec)
    assert np.array_equal(ours, reference_pipeline(Image.fromarray(rgb), 32, spec.mean, spec.std))
    rgba = np.dstack([rgb, np.full((50, 70), 7, np.uint8)])
    assert np.array_equal(preprocess(rgba, spec), ours)  # alpha dropped
    one = preprocess(rgb, spec, channels=1)
    luma = np.asarray(Image.fromarray(rgb).convert("L").resize((32, 32), Image.BILINEAR))
    assert one.shape == (1, 32, 32)
    assert np.array_equal(one[0], (luma.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5))
    assert np.array_equal(to_luma(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


def test_gray_folded_equals_each_channel():
    img = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    spec = ModelSpec(input_size=32)
    three = preprocess(img, spec)
    one = preprocess(img, spec, channels=1)
    assert np.array_equal(three[0], one[0]) and np.array_equal(three[2], one[0])
    with pytest.raises(SpecError):
        preprocess(img, ModelSpec(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), channels=1)
    with pytest.raises(SpecError):
        preprocess(img, spec, channels=2)


def test_float_input_uses_pil_float_resize():
    rng = np.random.default_rng(2)
    img = rng.random((300, 200)).astype(np.float32)
    out = resize(img, 64)
    expected = np.asarray(Image.fromarray(img, "F").resize((64, 64), Image.BILINEAR))
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    spec = ModelSpec(input_size=64)
    x = preprocess(img, spec)
    assert np.array_equal(x[1], (expected - np.float32(0.5)) / np.float32(0.5))
    # a 16-bit image scaled to [0, 1] and its 8-bit version agree to within 8-bit rounding
    img16 = (img * 65535).round() / 65535
    img8 = np.round(img * 255).astype(np.uint8)
    assert np.abs(preprocess(img16.astype(np.float32), spec) - preprocess(img8, spec)).max() < 0.01


def test_batch_and_errors():
    spec = ModelSpec(input_size=32)
    imgs = [np.zeros((40, 40), np.uint8), np.full((20, 60), 255, np.uint8)]
    batch = preprocess_batch(imgs, spec)
    assert batch.shape == (2, 3, 32, 32)
    assert batch[0].max() == -1.0 and batch[1].min() == 1.0
    assert normalise(resize(imgs[0], 32), spec).shape == (3, 32, 32)
    with pytest.raises(DataError):
        preprocess(np.zeros((4, 4, 2), np.uint8), spec)
    with pytest.raises(DataError):
        preprocess(np.zeros((4, 4), np.int32), spec)
    with pytest.raises(DataError):
        preprocess_batch([], spec)
