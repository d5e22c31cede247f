"""hamedge.ops.refine: the numpy reference against an independent transcription of HAM's
refinement steps (torch F.interpolate), the exact upsampled extremes, and the fused path against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hamedge.ops import refine as R
from hamedge.spec import ModelSpec

TOL = 1e-3
# (h, w) -> (H, W): aligned grids ((H-1)/(h-1) integer) and misaligned ones, odd and non-square.
SIZES = [((16, 16), (256, 256)), ((16, 16), (511, 511)), ((16, 16), (512, 512)),
         ((64, 64), (512, 512)), ((7, 7), (100, 100)), ((5, 9), (33, 70)), ((13, 11), (97, 101)),
         ((2, 3), (5, 4)), ((1, 6), (9, 17))]


def transcription(maps: np.ndarray, size, gain=100.0, center=0.4) -> np.ndarray:
    """HAM's refinement step by step, in torch (independent of hamedge.ops)."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for k in range(x.shape[1]):
            m = x[b, k]
            rng = m.max() - m.min()
            rng = torch.tensor(1e-5) if rng == 0 else rng
            out[b, k] = torch.sigmoid(gain * ((m - m.min()) / rng - center))
    return out.numpy()


def spiky(rng, shape, power=4.0, scale=7.0):
    """ReLU-CAM-like maps: mostly small, a few peaks, some exact zeros."""
    m = rng.random(shape).astype(np.float32) ** power * scale
    m[m < 0.05 * scale * rng.random()] = 0.0
    return m


@pytest.fixture(scope="module")
def real_cams(nih_images):
    """Raw class CAMs of a small HAM (random weights, eval mode) on a real NIH X-ray: 16x16 maps."""
    import cv2

    from hamedge.model.network import build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", output_stride=8, input_size=128)
    model = build_model(spec).eval()
    img = cv2.imread(str(nih_images[0]), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = torch.from_numpy((img - 0.5) / 0.5)[None, None].expand(1, 3, 128, 128).contiguous()
    with torch.no_grad():
        out = model(x, refine=False)
    cams = torch.cat([out.anomaly_cam, out.class_cams], dim=1).numpy()
    assert cams.shape == (1, 15, 16, 16) and cams.max() > 0
    return cams


@pytest.mark.parametrize("src,dst", SIZES)
def test_reference_matches_transcription(src, dst):
    rng = np.random.default_rng(1)
    for maps in (spiky(rng, (2, 3, *src)), rng.standard_normal((1, 4, *src)).astype(np.float32)):
        ref = R.refine_reference(maps, dst)
        assert ref.dtype == np.float32 and ref.shape == (maps.shape[0], maps.shape[1], *dst)
        np.testing.assert_allclose(ref, transcription(maps, dst), atol=1e-5, rtol=0)


@pytest.mark.parametrize("src,dst", SIZES)
def test_extrema_exact(src, dst):
    rng = np.random.default_rng(2)
    maps = spiky(rng, (3, 5, *src))
    up = F.interpolate(torch.from_numpy(maps), size=dst, mode="bilinear",
                       align_corners=True).numpy()
    lo, hi = R.upsampled_extrema(maps, dst)
    assert lo.shape == hi.shape == (3, 5)
    np.testing.assert_allclose(lo, up.min(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hi, up.max(axis=(2, 3)), rtol=1e-6, atol=1e-6)


def test_grid_extrema_are_wrong_when_misaligned():
    """The point of upsampled_extrema: at 16->512 the grid's max is not the upsampled max."""
    rng = np.random.default_rng(3)
    maps = spiky(rng, (1, 15, 16, 16))
    _, hi = R.upsampled_extrema(maps, 512)
    assert (maps.max(axis=(2, 3)) - hi).max() > 1e-3  # grid peaks are not sampled
    # ...and normalising with the grid's extremes visibly changes the heatmap.
    lo_g, hi_g = maps.min(axis=(2, 3)), maps.max(axis=(2, 3))
    up = F.interpolate(torch.from_numpy(maps), size=(512, 512), mode="bilinear",
                       align_corners=True).numpy()
    wrong = 1 / (1 + np.exp(-100 * ((up - lo_g[..., None, None])
                                    / (hi_g - lo_g)[..., None, None] - 0.4)))
    assert np.abs(wrong - R.refine_reference(maps, 512)).max() > 0.01


def test_candidates_cover_cell_ends():
    for n_in, n_out in [(16, 512), (64, 512), (16, 511), (7, 100), (9, 5), (2, 2)]:
        cand = R.axis_candidates(n_in, n_out)
        i0 = np.floor(np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)).astype(int)
        for c in np.unique(np.minimum(i0, n_in - 2)):
            members = np.flatnonzero(np.minimum(i0, n_in - 2) == c)
            # the cell's first and last sample (exact rational positions) are candidates
            assert members[0] in cand or members[0] - 1 in cand
            assert members[-1] in cand
        assert cand[0] == 0 and cand[-1] == n_out - 1
        assert len(cand) <= 2 * max(n_in - 1, 1)


@pytest.mark.parametrize("src,dst", SIZES)
def test_fused_matches_reference(src, dst):
    rng = np.random.default_rng(4)
    for batch in (1, 3):
        maps = spiky(rng, (batch, 15, *src))
        ref = R.refine_reference(maps, dst)
        fused = R.refine(maps, dst)
        assert fused.dtype == np.float32 and fused.shape == ref.shape
        assert np.isfinite(fused).all()
        assert np.abs(fused - ref).max() < TOL


def test_fused_512_vs_transcription_and_threads(monkeypatch):
    rng = np.random.default_rng(5)
    maps = spiky(rng, (2, 15, 16, 16))
    want = transcription(maps, (512, 512))
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("HAMEDGE_REFINE_THREADS", threads)
        assert np.abs(R.refine(maps, 512) - want).max() < TOL
    single = rng.random((1, 1, 64, 64), dtype=np.float32)  # one map: rows split across threads
    assert np.abs(R.refine(single, 512) - transcription(single, (512, 512))).max() < TOL


def test_real_cams(real_cams):
    for size in (128, 512, 300):
        ref = R.refine_reference(real_cams, size)
        np.testing.assert_allclose(ref, transcription(real_cams, (size, size)), atol=1e-5, rtol=0)
        assert np.abs(R.refine(real_cams, size) - ref).max() < TOL
        u8 = R.refine(real_cams, size, out_dtype=np.uint8)
        assert np.abs(u8.astype(int) - np.round(255 * ref).astype(int)).max() <= 1


def test_zero_range_maps():
    maps = np.zeros((2, 3, 8, 8), np.float32)
    maps[0, 1] = 2.5  # constant, non-zero
    maps[1, 2] = np.arange(64, dtype=np.float32).reshape(8, 8)  # a normal map beside them
    expect = 1 / (1 + math.exp(100 * 0.4))  # normalised 0 everywhere
    for fn in (R.refine_reference, R.refine):
        out = fn(maps, (50, 61))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[0, 0], expect, atol=1e-7)
        np.testing.assert_allclose(out[0, 1], expect, atol=1e-7)
        assert out[1, 2].max() > 0.99
    # torch's bilinear (w0*a + w1*b) does not reproduce a non-zero constant exactly, so the
    # reference chain there normalises rounding noise to [0, 1]; ours keeps the constant exact
    # (a + f*(b - a)) and treats it as the zero range it is. Elsewhere the two agree.
    want = transcription(maps, (50, 50))
    got = R.refine(maps, 50)
    keep = np.ones((2, 3), bool)
    keep[0, 1] = False
    assert np.abs(got[keep] - want[keep]).max() < TOL
    lo, hi = R.upsampled_extrema(maps, 50)
    assert lo[0, 1] == hi[0, 1] == np.float32(2.5)


def test_output_dtypes():
    rng = np.random.default_rng(6)
    maps = spiky(rng, (2, 4, 16, 16))
    ref = R.refine_reference(maps, 512)
    f16 = R.refine(maps, 512, out_dtype=np.float16)
    assert f16.dtype == np.float16 and np.abs(f16.astype(np.float32) - ref).max() < TOL
    u8 = R.refine(maps, 512, out_dtype="uint8")
    assert u8.dtype == np.uint8
    diff = np.abs(u8.astype(int) - np.round(255 * ref).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert u8.min() == 0 and u8.max() == 255
    with pytest.raises(ValueError):
        R.refine(maps, 512, out_dtype=np.int32)


def test_shapes_and_spec():
    rng = np.random.default_rng(7)
    maps = spiky(rng, (15, 7, 7))  # (K, h, w)
    out = R.refine(maps, (40, 30))
    assert out.shape == (15, 40, 30)
    np.testing.assert_allclose(out, R.refine_reference(maps, (40, 30)), atol=TOL)
    spec = ModelSpec(input_size=64, cam_gain=50.0, cam_center=0.3)
    got = R.refine_spec(maps[None], spec)
    np.testing.assert_allclose(got, R.refine_reference(maps[None], 64, gain=50.0, center=0.3),
                               atol=TOL)
    assert R.refine_spec(maps[None], spec, size=32, out_dtype=np.uint8).shape == (1, 15, 32, 32)
    with pytest.raises(ValueError):
        R.refine(np.zeros((4, 4), np.float32), 8)


def test_binary_masks_follow_refined_threshold():
    spec = ModelSpec(input_size=96)
    rng = np.random.default_rng(8)
    maps = spiky(rng, (2, 15, 7, 7))
    masks = R.binary_masks(maps, None, spec)
    assert masks.dtype == bool and masks.shape == (2, 15, 96, 96)
    refined = transcription(maps, (96, 96)).astype(np.float64)
    # Same decision except where the float32 sigmoid sits within rounding of the threshold.
    disagree = masks != (refined >= spec.cam_threshold)
    assert disagree.mean() < 1e-4
    assert np.all(np.abs(refined[disagree] - spec.cam_threshold) < 1e-6)
    assert masks.any() and not masks.all()
    norm = R._normalised_maps(maps, 96)
    assert norm.min() == 0.0 and abs(norm.max() - 1.0) < 1e-6
    # A zero-range map has no inside pixels.
    assert not R.binary_masks(np.zeros((1, 1, 4, 4), np.float32), 16, spec).any()
