"""training.data.HAMDataset: shapes, masks that follow the image geometry, reference bbox_tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hamedge.errors import DataError  # noqa: E402
from hamedge.datasets import LabelledSet, Record, box_mask, load_nih_layout  # noqa: E402
from hamedge.preprocess import preprocess  # noqa: E402
from hamedge.io import read_image  # noqa: E402
from hamedge.spec import ModelSpec  # noqa: E402
from hamedge.synth import generate  # noqa: E402
from hamedge.training.data import HAMDataset  # noqa: E402


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthtrain") / "set"
    generate(root, 60, seed=4, size=96, workers=1, box_fraction=1.0)
    return root


def _spec(labelled, size=64):
    return ModelSpec(input_size=size, class_names=labelled.class_names)


def test_validation_items_match_preprocess_and_box_mask(synth_root):
    s = load_nih_layout(synth_root, "test")
    spec = _spec(s)
    d = HAMDataset(s, spec, train=False)
    for i, r in enumerate(s):
        item = d[i]
        assert item["image"].shape == (3, 64, 64) and item["masks"].shape == (7, 64, 64)
        assert np.array_equal(item["image"].numpy(), preprocess(read_image(r.path), spec))
        assert item["labels"].tolist() == r.labels.tolist()
        for k, name in enumerate(s.class_names):
            expected = box_mask(r, name, 64, image_size_hw=(96, 96))
            assert np.array_equal(item["masks"][k].numpy(), expected.astype(np.float32))
        assert item["box_flag"].tolist() == [1.0 if r.box_supervised else 0.0]
        if r.boxes:
            assert item["box_tags"].tolist() == [1.0 if r.boxes.get(n) else 0.0 for n in s.class_names]
        else:
            assert item["box_tags"].tolist() == r.labels.tolist()  # reference: no boxes -> labels


def test_training_augmentation_is_seeded_and_masks_follow_the_image(tmp_path):
    # A bright square with its box: after random resize/crop/flip the mask still covers it.
    img = np.zeros((100, 100), np.uint8)
    img[30:60, 10:40] = 255
    Image = pytest.importorskip("PIL.Image")
    path = tmp_path / "sq.png"
    Image.fromarray(img).save(path)
    rec = Record("sq.png", path, np.array([1.0], np.float32), {"Mass": [(10, 30, 30, 30)]}, True)
    s = LabelledSet(tmp_path, ("Mass",), [rec] * 8)
    d = HAMDataset(s, ModelSpec(input_size=64, class_names=("Mass",)), train=True, seed=3)
    items = [d[i] for i in range(8)]
    flips = 0
    for it in items:
        x, m = it["image"][0].numpy(), it["masks"][0].numpy()
        assert set(np.unique(m)) <= {0.0, 1.0} and 330 <= m.sum() <= 500  # 30 % of 64..71 px, squared
        bright = x > 0.9  # normalised white
        assert (bright & (m == 1)).sum() >= 0.9 * bright.sum()  # the square lies inside its mask
        flips += m[:, 32:].sum() > m[:, :32].sum()
    assert 0 < flips < 8  # some flipped, some not
    again = HAMDataset(s, ModelSpec(input_size=64, class_names=("Mass",)), train=True, seed=3)
    assert all(torch.equal(a["image"], again[i]["image"]) for i, a in enumerate(items))
    again.set_epoch(1)
    assert not all(torch.equal(a["image"], again[i]["image"]) for i, a in enumerate(items))


def test_loader_batches_and_class_mismatch(synth_root):
    s = load_nih_layout(synth_root, "train")
    d = HAMDataset(s, _spec(s), train=True)
    batch = next(iter(torch.utils.data.DataLoader(d, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["box_flag"].shape == (4, 1)
    assert batch["labels"].dtype == torch.float32
    assert sum(r.box_supervised for r in s) == sum(1 for r in s if not r.is_normal)  # box_fraction 1
    with pytest.raises(DataError, match="class names"):
        HAMDataset(s, ModelSpec(input_size=64), train=False)
