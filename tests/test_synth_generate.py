"""Synthetic X-ray generator: determinism, layout, labels and boxes that match what was drawn."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from hamedge.errors import DataError
from hamedge.synth import SYNTH_CLASSES, generate, render, split_indices


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_seed_dependent():
    a = render(5, seed=11, size=96)
    b = render(5, seed=11, size=96)
    c = render(5, seed=12, size=96)
    assert a[0].dtype == np.uint8 and a[0].shape == (96, 96)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_render_labels_boxes_and_normal_share():
    n_normal, seen = 0, set()
    for i in range(120):
        image, labels, boxes = render(i, seed=3, size=64)
        assert labels == [c for c in SYNTH_CLASSES if c in labels]  # fixed class order
        assert set(boxes) == set(labels)
        for name, bs in boxes.items():
            for x, y, w, h in bs:
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        n_normal += not labels
        seen.update(labels)
        assert 20 < image.mean() < 235  # an exposed image, neither blank nor saturated
    assert 0.28 <= n_normal / 120 <= 0.52
    assert seen == set(SYNTH_CLASSES)


def test_findings_change_the_image_inside_their_box():
    # The same picture drawn without its lesions differs from the real one inside the boxes,
    # and (almost) nowhere else: boxes match what was drawn.
    checked = set()
    for i in range(40):
        image, labels, boxes = render(i, seed=7, size=128)
        plain, _, _ = render(i, seed=7, size=128, draw_findings=False)
        diff = np.abs(image.astype(float) - plain.astype(float))
        lesions = [c for c in labels if c != "Cardiomegaly"]  # an enlarged heart is anatomy
        if not lesions:
            assert diff.max() == 0
            continue
        inside = np.zeros(diff.shape, bool)
        for name in lesions:
            for x, y, w, h in boxes[name]:
                inside[y:y + h, x:x + w] = True
            checked.add(name)
        assert diff[inside].mean() > 5 * max(diff[~inside].mean(), 0.05)
        assert diff[~inside].sum() < 0.2 * diff.sum()
    assert len(checked) >= 5


def test_generate_layout_and_byte_identical_by_seed(tmp_path):
    a = generate(tmp_path / "a", 40, seed=5, size=64, workers=2)
    b = generate(tmp_path / "b", 40, seed=5, size=64, workers=1)
    c = generate(tmp_path / "c", 40, seed=6, size=64, workers=2)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb  # same seed, any number of workers -> same bytes
    assert ha != hc
    assert a["splits"] == {"train": 28, "val": 6, "test": 6} and a["classes"] == list(SYNTH_CLASSES)

    root = tmp_path / "a"
    assert len(list((root / "images").glob("*.png"))) == 40
    tags = json.loads((root / "Annotations" / "Tags.json").read_text())
    boxes = json.loads((root / "Annotations" / "BBoxes.json").read_text())
    main = {s: (root / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    bbox = {s: (root / "ImageSets" / "bbox" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(main.values(), [])) == sorted(tags) and len(set(sum(main.values(), []))) == 40
    for split in ("val", "test"):  # every val/test image with findings has its boxes
        assert bbox[split] == [n for n in main[split] if tags[n]]
    assert set(bbox["train"]) <= {n for n in main["train"] if tags[n]}
    assert set(boxes) == set(sum(bbox.values(), []))
    for name, per_class in boxes.items():
        assert set(per_class) == set(tags[name])
    info = json.loads((root / "dataset.json").read_text())
    assert info["seed"] == 5 and info["size"] == 64 and info["count"] == 40
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_generate_refuses_non_empty_dir_unless_overwrite(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        generate(out, 5, seed=0, size=64)
    generate(out, 5, seed=0, size=64, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    with pytest.raises(DataError):
        generate(tmp_path / "bad", 0, seed=0)


def test_splits_are_disjoint_and_seeded():
    s = split_indices(100, 1, 0.15, 0.15)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(100))
    assert len(s["test"]) == 15 and len(s["val"]) == 15
    assert split_indices(100, 1, 0.15, 0.15) == s and split_indices(100, 2, 0.15, 0.15) != s
