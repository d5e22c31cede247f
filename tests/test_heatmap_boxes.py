"""hamedge.heatmap: boxes from connected components, overlays, heatmap files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hamedge.heatmap import Box, boxes_from_mask, colorize, overlay, save_heatmap, to_display


def test_boxes_two_components_scaled_to_image():
    heat = np.zeros((64, 64), np.float32)
    heat[10:20, 5:15] = 0.9995
    heat[12, 8] = 1.0
    heat[40:60, 30:34] = 0.9992
    mask = heat >= 0.999
    boxes = boxes_from_mask(mask, heat, image_size=(128, 256))  # H x2, W x4
    assert len(boxes) == 2
    first, second = boxes
    assert first == Box(x=20, y=20, w=40, h=20, score=1.0, area=100 * 8)
    assert (second.x, second.y, second.w, second.h) == (120, 80, 16, 40)
    assert second.score == pytest.approx(0.9992, abs=1e-6)
    assert second.area == 80 * 8


def test_boxes_diagonal_pixels_are_one_component_and_min_area():
    mask = np.zeros((8, 8), bool)
    mask[1, 1] = mask[2, 2] = True  # 8-connected
    mask[6, 6] = True
    heat = mask.astype(np.float32)
    assert len(boxes_from_mask(mask, heat)) == 2
    assert len(boxes_from_mask(mask, heat, min_area=2)) == 1
    assert boxes_from_mask(np.zeros((8, 8), bool), heat) == []


def test_boxes_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        boxes_from_mask(np.zeros((4, 4), bool), np.zeros((5, 5)))


def test_overlay_blends_only_where_hot():
    image = np.full((100, 80), 128, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == (100, 80, 3) and out.dtype == np.uint8
    assert (out[:, :30] == 128).all()  # cold half untouched
    hot = out[:, 50:].reshape(-1, 3)
    assert not (hot == 128).all(axis=1).any()  # every hot pixel tinted
    # jet at 1.0 is dark red: the red channel dominates in the hot half
    assert hot[:, 0].mean() > hot[:, 2].mean()


def test_to_display_float_and_rgba():
    assert to_display(np.ones((3, 4), np.float32))[0, 0].tolist() == [255, 255, 255]
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert to_display(rgba).shape == (3, 4, 3)
    assert colorize(np.zeros((2, 2))).shape == (2, 2, 3)


@pytest.mark.parametrize("kind,suffix", [("overlay", ".png"), ("png", ".png"), ("npy", ".npy")])
def test_save_heatmap_kinds(tmp_path, kind, suffix):
    image = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    heat = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    out = save_heatmap(tmp_path / "sub" / "Mass.whatever", heat, kind, image=image)
    assert out.endswith("Mass" + suffix)
    if kind == "npy":
        loaded = np.load(out)
        assert loaded.dtype == np.float16 and loaded.shape == (50, 70)
    else:
        loaded = cv2.imread(out, cv2.IMREAD_UNCHANGED)
        assert loaded.shape[:2] == (50, 70)
        assert loaded.ndim == (3 if kind == "overlay" else 2)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp left


def test_box_to_dict_has_every_field():
    import dataclasses

    from hamedge.heatmap import Box

    box = Box(1, 2, 3, 4, 0.5, 12)
    assert box.to_dict() == dataclasses.asdict(box)
