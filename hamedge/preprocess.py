"""The one rule that turns an image into network input (training, evaluation, calibration and every
runtime backend call this; nothing else resizes or normalises).

The rule, chosen to match the HAM reference bit for bit on 8-bit X-rays (PIL open -> RGB ->
``resize((S, S), BILINEAR)`` -> ToTensor (/255) -> ``(x - mean) / std``):

1. Resize to ``S x S`` (S = ``spec.input_size``) with Pillow's BILINEAR filter, which widens its
   support when shrinking (it antialiases; OpenCV's INTER_LINEAR does not).
   - ``uint8`` 2-D arrays are resized in Pillow mode "L". Pillow resamples every 8-bit channel
     with the same integer arithmetic, so this equals the reference's resize of each (equal)
     RGB channel.
   - ``float32`` 2-D arrays in [0, 1] (16-bit PNG, DICOM: see hamedge.io) are resized in mode
     "F" with the same filter (float arithmetic, no 8-bit rounding).
   - ``H x W x 3`` / ``H x W x 4`` arrays (colour files handed over directly; hamedge.io itself
     always returns 2-D) are resized per channel; alpha is dropped as PIL's convert("RGB") does.
2. Scale to [0, 1]: ``uint8 / 255`` in float32 (ToTensor); floats are already in [0, 1].
3. Normalise per channel: ``(x - mean[c]) / std[c]`` in float32.
4. Channels: ``spec.in_channels`` by default. A gray image feeds all three channels the same
   plane. ``channels=1`` feeds a grayscale-folded graph (first convolution summed over its
   inputs), allowed only when ``spec.grayscale_foldable``; a colour input is then reduced to
   ITU-R 601 luma (for uint8 exactly Pillow's convert("L")) *before* resizing.

No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from hamedge.errors import DataError, SpecError
from hamedge.spec import ModelSpec

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
    elif image.ndim != 2:
        raise DataError(f"expected a 2-D image or an HxWx3/HxWx4 colour image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise DataError(f"empty image of shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "f":
        return image.astype(np.float32, copy=False)
    raise DataError(f"images must be uint8 or float in [0, 1], not {image.dtype} (read them with hamedge.io)")


def to_luma(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an HxWx3(4) image (uint8: Pillow's convert('L') exactly); 2-D passes through."""
    image = _check(image)
    if image.ndim == 2:
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").convert("L"))
    return (image[:, :, 0] * np.float32(_LUMA[0]) + image[:, :, 1] * np.float32(_LUMA[1])
            + image[:, :, 2] * np.float32(_LUMA[2])).astype(np.float32)


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    if plane.shape == (size, size):
        return plane.copy()  # Pillow returns an identical copy at the same size as well
    mode = "L" if plane.dtype == np.uint8 else "F"
    pil = Image.fromarray(np.ascontiguousarray(plane), mode)
    return np.asarray(pil.resize((size, size), Image.BILINEAR))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size with Pillow BILINEAR; keeps the kind (dtype, 2-D or HxWx3)."""
    image = _check(image)
    if image.ndim == 2:
        return _resize_plane(image, size)
    return np.stack([_resize_plane(image[:, :, c], size) for c in range(3)], axis=2)


def _channels(spec: ModelSpec, channels: int | None) -> int:
    channels = spec.in_channels if channels is None else int(channels)
    if channels not in (1, spec.in_channels):
        raise SpecError(f"this model takes {spec.in_channels} input channel(s), not {channels}")
    if channels == 1 and spec.in_channels != 1 and not spec.grayscale_foldable:
        raise SpecError("a 1-channel (grayscale-folded) input needs the same mean and std in every channel")
    return channels


def normalise(resized: np.ndarray, spec: ModelSpec, channels: int | None = None) -> np.ndarray:
    """(C, S, S) float32 network input from an already resized image (see the module rule)."""
    channels = _channels(spec, channels)
    resized = _check(resized)
    if channels == 1 and resized.ndim == 3:
        resized = to_luma(resized)
    x = resized.astype(np.float32)
    if resized.dtype == np.uint8:
        x /= np.float32(255.0)  # ToTensor: correctly rounded float32 division, like torch's div
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    if channels == 1:
        return ((x - mean[0]) / std[0])[None]
    planes = [x] * 3 if x.ndim == 2 else [x[:, :, c] for c in range(3)]
    return np.stack([(p - mean[c]) / std[c] for c, p in enumerate(planes)]).astype(np.float32, copy=False)


def preprocess(image: np.ndarray, spec: ModelSpec, channels: int | None = None) -> np.ndarray:
    """Image (2-D uint8 / float32 in [0, 1], or HxWx3/4) -> (C, S, S) float32 network input."""
    channels = _channels(spec, channels)
    image = _check(image)
    if channels == 1 and image.ndim == 3:
        image = to_luma(image)  # luma before resizing, like PIL's convert('L') then resize
    return normalise(resize(image, spec.input_size), spec, channels)


def preprocess_batch(images: Sequence[np.ndarray], spec: ModelSpec, channels: int | None = None) -> np.ndarray:
    """A list of images -> (B, C, S, S) float32."""
    if len(images) == 0:
        raise DataError("an empty batch of images")
    return np.stack([preprocess(im, spec, channels) for im in images])
