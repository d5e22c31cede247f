"""The torch Dataset that feeds HAM training and validation from a hamedge LabelledSet.

Images go through hamedge.preprocess (the one resize/normalise rule). Training augmentation is
the reference's: resize to a random side int((1 + randint(0, 12) / 100) * S), a random S x S
crop, a random horizontal flip; the image and its box masks get the same geometry (masks
resized nearest). A fixed ``resize_factor`` (the reference's non-"dynamic" setting) resizes to
int(factor * S) instead. Validation/test: a plain resize to S. Randomness comes from
(seed, epoch, index) only, so a given epoch is the same whatever the number of loader workers or
processes. Items are fetched by index or by (epoch, index), the keys training.distributed's
sampler yields, so persistent workers need no per-epoch message.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hamedge.datasets import LabelledSet, Record, rect_mask
from hamedge.errors import DataError
from hamedge.io import read_image
from hamedge.preprocess import normalise, resize
from hamedge.spec import ModelSpec

MAX_RESIZE_PERCENT = 12  # reference resize_factor: up to +12 % before the random crop
CACHE_BUDGET_BYTES = 1 << 30  # decoded images kept in memory per process when the set fits


def _mask_stack(record: Record, class_names, hw: tuple[int, int]) -> np.ndarray:
    """(K, H, W) uint8 union-of-boxes masks at the image's full resolution."""
    return np.stack([rect_mask(record.boxes.get(name, ()), hw) for name in class_names])


def _resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask, "L").resize((size, size), Image.NEAREST))


class HAMDataset(torch.utils.data.Dataset):
    """Items: dict(image (C,S,S) float32, masks (K,S,S) float32, labels (K,), box_flag (1,),
    box_tags (K,), index ()). ``box_flag`` is 1 when the record's boxes may supervise
    (``Record.box_supervised``); ``box_tags`` marks the classes with a box on this image, or
    equals the labels when the image has no boxes at all (as the reference's bbox_tags)."""

    def __init__(self, labelled_set: LabelledSet, spec: ModelSpec, train: bool, augment: bool = True,
                 seed: int = 0, channels: int | None = None, cache: bool | None = None,
                 resize_factor: float | str = "dynamic") -> None:
        if tuple(labelled_set.class_names) != tuple(spec.class_names):
            raise DataError("the data set's class names differ from the model spec's "
                             f"({list(labelled_set.class_names)} vs {list(spec.class_names)})")
        self.set = labelled_set
        self.spec = spec
        self.train = train
        self.augment = augment and train
        self.seed = int(seed)
        self.epoch = 0
        self.channels = channels
        self.resize_factor = resize_factor
        # Keeping decoded images in memory pays off for small sets trained many epochs; a real
        # data set (NIH: 112,120 images of 1 MB) is read from disk each time.
        self.cache = self._fits_in_memory() if cache is None else cache
        self._images: dict[int, np.ndarray] = {}

    def _fits_in_memory(self) -> bool:
        if not len(self.set):
            return False
        from hamedge.datasets import image_size

        try:
            h, w = image_size(self.set[0])
        except Exception:  # noqa: BLE001 - unreadable first image: decide without caching
            return False
        return len(self.set) * h * w * 4 <= CACHE_BUDGET_BYTES

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.set)

    def _image(self, index: int) -> np.ndarray:
        image = self._images.get(index)
        if image is None:
            image = read_image(self.set[index].path)
            if self.cache:
                self._images[index] = image
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        record = self.set[index]
        image = self._image(index)
        size = self.spec.input_size
        names = self.set.class_names
        full_masks = _mask_stack(record, names, image.shape[:2]) if record.boxes else None

        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            percent = int(rng.integers(0, MAX_RESIZE_PERCENT + 1))
            side = (int((1 + percent / 100) * size) if self.resize_factor == "dynamic"
                    else int(float(self.resize_factor) * size))
            top, left = (int(v) for v in rng.integers(0, side - size + 1, 2))
            flip = bool(rng.random() < 0.5)
        else:
            side, top, left, flip = size, 0, 0, False

        def geometry(resized: np.ndarray) -> np.ndarray:
            out = resized[top:top + size, left:left + size]
            return out[:, ::-1] if flip else out

        resized = geometry(resize(image, side))
        x = normalise(np.ascontiguousarray(resized), self.spec, self.channels)
        masks = np.zeros((len(names), size, size), np.float32)
        if full_masks is not None:
            for k in range(len(names)):
                if full_masks[k].any():
                    masks[k] = geometry(_resize_nearest(full_masks[k], side))
        labels = record.labels.astype(np.float32)
        has_box = np.array([1.0 if record.boxes.get(n) else 0.0 for n in names], np.float32)
        box_tags = has_box if has_box.any() else labels.copy()
        weights = (np.ones(len(names), np.float32) if record.label_weights is None
                   else record.label_weights.astype(np.float32))
        return {
            "image": torch.from_numpy(x),
            "label_weights": torch.from_numpy(weights),
            "epoch": torch.tensor(epoch, dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "labels": torch.from_numpy(labels),
            "box_flag": torch.tensor([1.0 if record.box_supervised else 0.0]),
            "box_tags": torch.from_numpy(box_tags),
            "index": torch.tensor(index, dtype=torch.int64),
        }
