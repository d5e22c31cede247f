"""hamedge.load(...).predict(...): paths, arrays, lists; typed results; same numbers as infer."""

from __future__ import annotations

import numpy as np
import pytest

import hamedge
from infer_helpers import make_bundle
from hamedge.errors import BundleError, DataError
from hamedge.heatmap import Box
from hamedge.pipeline import Prediction


RAMP = np.tile(np.arange(80, dtype=np.uint8), (80, 1))  # not blank: the gate refuses constant images


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("api") / "tiny.hamedge")
    with hamedge.load(bundle, backend="onnxruntime") as opened:
        yield opened


def test_predict_path_array_and_list_agree(model, nih_images):
    from hamedge.io import read_image

    by_path = model.predict(nih_images[0])
    assert isinstance(by_path, Prediction)
    assert by_path.path == str(nih_images[0]) and by_path.image_size == (1024, 1024)
    assert set(by_path.probabilities) == set(model.class_names)
    by_array = model.predict(read_image(nih_images[0]))
    assert by_array.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    many = model.predict([nih_images[0], nih_images[1], np.tile(np.arange(60, dtype=np.uint8), (90, 1))], batch_size=2)
    assert len(many) == 3 and many[2].image_size == (90, 60)
    assert many[0].probabilities == pytest.approx(by_path.probabilities, abs=1e-5)
    t = model.spec.thresholds
    assert by_path.findings == [c for c, th in zip(model.class_names, t)
                                if by_path.probabilities[c] >= th]


def test_heatmaps_and_boxes_are_lazy_and_scaled(model):
    pred = model.predict(np.random.default_rng(0).integers(0, 255, (200, 300), dtype=np.uint8))
    assert pred._cache == {}  # nothing refined until asked
    name = pred.map_names[3]
    heat = pred.heatmap(name)
    assert heat.shape == (64, 64) and heat.dtype == np.float32 and set(pred._cache) == {name}
    assert pred.heatmap(name, size="image").shape == (200, 300)
    boxes = pred.boxes(name)
    assert boxes and all(isinstance(b, Box) for b in boxes)
    assert all(0 <= b.x and b.x + b.w <= 300 and b.y + b.h <= 200 for b in boxes)
    # the mask follows HAM's rule: refined >= cam_threshold (up to float32 rounding at the edge)
    agree = (pred.mask(name) == (heat >= model.spec.cam_threshold)).mean()
    assert agree > 0.99
    with pytest.raises(KeyError):
        pred.heatmap("Nope")


def test_bad_inputs(model, tmp_path):
    with pytest.raises(DataError):
        model.predict(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(DataError):
        model.predict(12)
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(DataError):
        model.predict(tmp_path / "x.png")
    with pytest.raises(BundleError):
        hamedge.load(tmp_path / "missing")


def test_checkpoint_is_exported_once_and_cached(tmp_path, monkeypatch):
    import torch

    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import build_model
    from infer_helpers import TINY_SPEC

    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(TINY_SPEC).eval(), TINY_SPEC, tmp_path / "m.safetensors")
    with hamedge.load(ckpt, backend="onnxruntime") as first:
        root = first.bundle.root
        p1 = first.predict(RAMP)
    assert root.parent == tmp_path / "cache" / "bundles"
    stamp = (root / "model.onnx").stat().st_mtime_ns
    with hamedge.load(ckpt, backend="onnxruntime") as again:  # cached: not exported again
        assert again.bundle.root == root
        assert again.predict(RAMP).probabilities == p1.probabilities
    assert (root / "model.onnx").stat().st_mtime_ns == stamp
