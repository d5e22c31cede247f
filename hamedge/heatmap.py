"""Refined heatmaps -> boxes, colour overlays and heatmap files. numpy/OpenCV only, no torch.

The refinement itself (raw CAM -> refined heatmap, binary masks) is hamedge.ops.refine's; this
module only turns its results into things a person looks at. Coordinates: heatmaps are made at the
network's input size S (exactly the model's definition, the one the localisation metrics use);
boxes are scaled from there to the original image's pixels, and written heatmap images are resized
to the original image (a display, not a measurement).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from hamedge.errors import HamedgeError
from hamedge.fsutil import write_bytes

HEATMAP_FORMATS = ("overlay", "png", "npy", "none")

_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


@dataclass(frozen=True)
class Box:
    """One connected region of a binarised heatmap, in original-image pixels."""

    x: int
    y: int
    w: int
    h: int
    score: float  # peak heatmap value inside the region
    area: int  # region pixels (not the box's w*h), scaled to original-image pixels

    def to_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies every field, and a row can carry many boxes
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": self.score,
                "area": self.area}


def boxes_from_mask(mask: np.ndarray, heatmap: np.ndarray,
                    image_size: tuple[int, int] | None = None, min_area: int = 1) -> list[Box]:
    """Connected components (8-connected) of a binary mask -> boxes, best score first.

    ``mask`` and ``heatmap`` share one (h, w) grid; ``image_size`` = (H, W) of the original image
    scales boxes and areas to it (default: the mask's own grid). Components smaller than
    ``min_area`` mask pixels are dropped.
    """
    mask = np.asarray(mask)
    heatmap = np.asarray(heatmap)
    if mask.ndim != 2 or mask.shape != heatmap.shape:
        raise ValueError(f"mask {mask.shape} and heatmap {heatmap.shape} must be the same 2-D grid")
    mh, mw = mask.shape
    height, width = image_size if image_size is not None else (mh, mw)
    sy, sx = height / mh, width / mw
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8, copy=False), connectivity=8)
    boxes = []
    for label in range(1, count):  # label 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        peak = float(heatmap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label].max())
        # Scale the box's pixel edges, rounding outwards, and clip to the image.
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = min(width, int(np.ceil((x + w) * sx))), min(height, int(np.ceil((y + h) * sy)))
        boxes.append(Box(x0, y0, x1 - x0, y1 - y0, round(peak, 6), int(round(area * sx * sy))))
    boxes.sort(key=lambda b: (-b.score, -b.area))
    return boxes


def to_display(image: np.ndarray) -> np.ndarray:
    """An image from hamedge.io (2-D uint8, 2-D float in [0, 1], or HxWx3/4) -> HxWx3 uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"cannot display an image of shape {image.shape}")


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) heatmap -> (H, W) float32, bilinear. A no-op when the size already matches."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape == tuple(size):
        return heatmap
    return cv2.resize(heatmap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> HxWx3 uint8 RGB through an OpenCV colour map."""
    if colormap not in _COLORMAPS:
        raise HamedgeError(f"unknown colour map {colormap!r}; known: {', '.join(_COLORMAPS)}")
    levels = (np.clip(heatmap, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, _COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            low: float = 0.2) -> np.ndarray:
    """The X-ray with the heatmap blended on top, only where the heatmap is high.

    The heatmap is resized to the image. The blend weight is ``alpha`` times the heatmap's level
    ramped from 0 at ``low`` to 1 at 1.0, so cold regions keep the untouched X-ray. Returns HxWx3
    uint8 RGB.
    """
    return cv2.cvtColor(_overlay_bgr(image, heatmap, colormap, alpha, low), cv2.COLOR_BGR2RGB)


def _overlay_bgr(image, heatmap, colormap="jet", alpha=0.5, low=0.2) -> np.ndarray:
    if colormap not in _COLORMAPS:
        raise HamedgeError(f"unknown colour map {colormap!r}; known: {', '.join(_COLORMAPS)}")
    base = to_display(image)  # RGB; gray X-rays have equal channels, so RGB == BGR for them
    if base.ndim == 3 and not (image.ndim == 2):
        base = cv2.cvtColor(base, cv2.COLOR_RGB2BGR)
    heat = resize_heatmap(heatmap, base.shape[:2])
    levels = (np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    colours = cv2.applyColorMap(levels, _COLORMAPS[colormap])
    weight = heat - np.float32(low)
    weight *= np.float32(alpha / max(1e-6, 1.0 - low))
    np.clip(weight, 0.0, alpha, out=weight)
    # one fused C++ pass: base * (1 - w) + colours * w
    return cv2.blendLinear(base, colours, 1.0 - weight, weight)


def encode_png(image: np.ndarray) -> bytes:
    """2-D (gray) or HxWx3 RGB uint8/uint16 -> PNG bytes."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported dtypes
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def save_heatmap(path: str | os.PathLike, heatmap: np.ndarray, kind: str = "overlay",
                 image: np.ndarray | None = None, colormap: str = "jet",
                 size: tuple[int, int] | None = None) -> str:
    """Write one heatmap (values in [0, 1]) atomically; returns the path written.

    kind "overlay": colour overlay on ``image`` (PNG, at the image's size);
    "png": the heatmap alone as 8-bit grayscale PNG (at the image's size when given);
    "npy": float16 array (at the image's size when given). ``size`` (H, W) overrides the size
    for png/npy. The suffix is set from the kind.
    """
    path = os.fspath(path)
    if size is None and image is not None:
        size = np.shape(image)[:2]
    root, _ = os.path.splitext(path)
    if kind == "overlay":
        if image is None:
            raise ValueError("an overlay needs the image")
        out = root + ".png"
        ok, data = cv2.imencode(".png", _overlay_bgr(image, heatmap, colormap))
        write_bytes(out, data.tobytes())
    elif kind == "png":
        heat = heatmap if size is None else resize_heatmap(heatmap, size)
        out = root + ".png"
        write_bytes(out, encode_png((np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)))
    elif kind == "npy":
        import io

        heat = heatmap if size is None else resize_heatmap(heatmap, size)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(heat, dtype=np.float16))
        out = root + ".npy"
        write_bytes(out, buffer.getvalue())
    else:
        raise HamedgeError(f"unknown heatmap format {kind!r}; choose from overlay, png, npy, none")
    return out
