"""The torch Dataset that feeds HAM training and validation from a hamedge LabelledSet.

Images go through hamedge.preprocess (the one resize/normalise rule). Training augmentation is
the reference's: resize to a random side int((1 + randint(0, 12) / 100) * S), a random S x S
crop, a random horizontal flip; the image and its box masks get the same geometry (masks
resized nearest). Validation/test: a plain resize to S. Randomness comes from
(seed, epoch, index) only, so a given epoch is the same whatever the number of loader workers.
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
                 seed: int = 0, channels: int | None = None, cache: bool | None = None) -> None:
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
        # Keeping decoded images in memory pays off for small (synthetic) sets trained many epochs.
        self.cache = (len(labelled_set) <= 4000) if cache is None else cache
        self._images: dict[int, np.ndarray] = {}

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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.set[index]
        image = self._image(index)
        size = self.spec.input_size
        names = self.set.class_names
        full_masks = _mask_stack(record, names, image.shape[:2]) if record.boxes else None

        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            side = int((1 + int(rng.integers(0, MAX_RESIZE_PERCENT + 1)) / 100) * size)
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
        return {
            "image": torch.from_numpy(x),
            "masks": torch.from_numpy(masks),
            "labels": torch.from_numpy(labels),
            "box_flag": torch.tensor([1.0 if record.box_supervised else 0.0]),
            "box_tags": torch.from_numpy(box_tags),
            "index": torch.tensor(index, dtype=torch.int64),
        }
