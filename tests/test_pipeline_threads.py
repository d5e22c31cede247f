"""The folder pipeline's throughput options: parallel heatmap writers give the same files and
rows as one writer; --reduced-decode decodes JPEGs smaller but reports full-size results; ONNX
Runtime's threads do not spin in folder runs (use="throughput")."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from infer_helpers import make_bundle

from hamedge.errors import HamedgeError
from hamedge.io import image_size, read_image
from hamedge.pipeline import InferOptions, run_inference
from hamedge.runtime import open_backend


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("threads") / "tiny.hamedge")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, nih_images):
    """Six 1024 px real X-rays (three, and the same shifted), as PNG and as JPEG."""
    root = tmp_path_factory.mktemp("xrays")
    (root / "png").mkdir()
    (root / "jpeg").mkdir()
    for i in range(6):
        gray = np.roll(cv2.imread(str(nih_images[i % 3]), cv2.IMREAD_GRAYSCALE), 11 * i, axis=1)
        cv2.imwrite(str(root / "png" / f"x{i}.png"), gray)
        cv2.imwrite(str(root / "jpeg" / f"x{i}.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


def _run(bundle, folder, out, **options):
    with open_backend(bundle, "onnxruntime", "fp32", "cpu") as backend:
        summary = run_inference([folder], backend, out, InferOptions(batch=4, **options))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return summary, records


def test_parallel_heatmap_writers_write_what_one_writer_writes(bundle, folders, tmp_path):
    one, rows_one = _run(bundle, folders / "png", tmp_path / "one", workers=1, writers=1,
                         heatmaps="png", all_heatmaps=True)
    many, rows_many = _run(bundle, folders / "png", tmp_path / "many", workers=3, writers=4,
                           heatmaps="png", all_heatmaps=True)
    assert one.ok == many.ok == 6
    assert rows_one == rows_many  # same rows, same order, same heatmap paths
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "heatmaps").rglob("*.png"))
    assert len(files) == 6 * 15
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "many" / rel).read_bytes()


def test_reduced_jpeg_decode_is_smaller_and_png_is_untouched(folders):
    jpeg, png = folders / "jpeg" / "x0.jpg", folders / "png" / "x0.png"
    small = read_image(jpeg, reduce_to=128)
    assert small.dtype == np.uint8 and small.shape == (128, 128)  # 1024 / 8, still >= 128
    assert read_image(jpeg, reduce_to=300).shape == (512, 512)  # 1/4 would be under 300
    assert image_size(jpeg) == (1024, 1024)
    assert np.array_equal(read_image(png, reduce_to=128), read_image(png))  # PNG cannot reduce
    assert image_size(folders / "missing.png") is None


def test_reduced_decode_reports_full_size_results(bundle, folders, tmp_path):
    _, full = _run(bundle, folders / "jpeg", tmp_path / "full", heatmaps="png")
    _, reduced = _run(bundle, folders / "jpeg", tmp_path / "reduced", heatmaps="png", all_heatmaps=True,
                      reduced_decode=True)
    assert [r["path"] for r in full] == [r["path"] for r in reduced]
    for a, b in zip(full, reduced):
        assert b["status"] == "ok" and (b["width"], b["height"]) == (1024, 1024)
        diff = max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"])
        assert 0 < diff < 0.05  # different pixels, close results (random tiny model)
        heat = cv2.imread(str(tmp_path / "reduced" / b["heatmaps"]["anomaly"]), cv2.IMREAD_UNCHANGED)
        assert heat.shape == (1024, 1024)


def test_reduced_decode_refuses_overlays():
    with pytest.raises(HamedgeError, match="reduced-decode"):
        InferOptions(reduced_decode=True, heatmaps="overlay").validate()
    with pytest.raises(HamedgeError, match="writers"):
        InferOptions(writers=0).validate()


def test_onnxruntime_threads_stop_spinning_for_throughput(bundle):
    key = "session.intra_op.allow_spinning"
    with open_backend(bundle, "onnxruntime", "fp32", "cpu", use="throughput") as backend:
        assert backend.session.get_session_options().get_session_config_entry(key) == "0"
    with open_backend(bundle, "onnxruntime", "fp32", "cpu") as backend:  # the default: ORT's own
        options = backend.session.get_session_options()
        with pytest.raises(Exception):  # onnxruntime raises when the entry was never set
            options.get_session_config_entry(key)
