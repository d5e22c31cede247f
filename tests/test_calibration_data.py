"""Calibration image selection: folders, labelled sets, sampling, hashes, refusals."""

from __future__ import annotations

import hashlib
import warnings

import cv2
import numpy as np
import pytest

from hamedge.calibration.data import (MIN_IMAGES, CalibrationWarning, load_calibration_set,
                              select_images)
from hamedge.errors import DataError
from hamedge.spec import ModelSpec

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))


def write_pngs(folder, count, size=80):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), rng.integers(0, 255, (size, size), np.uint8))
    return folder


def test_plain_folder_seeded_sample(tmp_path):
    root = write_pngs(tmp_path / "x", 30)
    a, how = select_images(root, count=12, seed=3)
    b, _ = select_images(root, count=12, seed=3)
    c, _ = select_images(root, count=12, seed=4)
    assert how == "seeded-sample" and len(a) == 12 and a == b and a != c
    every, how = select_images(root, count=100)
    assert how == "all" and len(every) == 30
    rest, _ = select_images(root, count=100, exclude=every[:5])  # the guard's images
    assert rest == every[5:]


def test_loaded_set_matches_the_inference_preprocessing(tmp_path):
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess

    root = write_pngs(tmp_path / "x", 10)
    with pytest.warns(CalibrationWarning, match="only 10 calibration images"):
        cs = load_calibration_set(root, SPEC, channels=1, count=10)
    assert cs.inputs.shape == (10, 1, 64, 64) and cs.inputs.dtype == np.float32
    first = cs.paths[0]
    assert np.array_equal(cs.inputs[0], preprocess(read_image(first), SPEC, 1))
    assert cs.sha256[0] == hashlib.sha256(first.read_bytes()).hexdigest()
    desc = cs.describe()
    assert desc["count"] == 10 and desc["images"][0] == {"name": first.name, "sha256": cs.sha256[0]}


def test_labelled_set_is_stratified(tmp_path):
    from hamedge import synth

    root = tmp_path / "s"
    synth.generate(root, 24, seed=1, size=64, workers=1)
    paths, how = select_images(root, count=10, seed=0)
    assert how == "stratified" and len(paths) == 10
    assert all(p.parent.name == "images" for p in paths)
    others, _ = select_images(root, count=10, seed=0, exclude=paths)
    assert len(others) == 10 and not set(others) & set(paths)


def test_refusals(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        select_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no PNG/JPEG/DICOM"):
        select_images(tmp_path / "empty")
    root = write_pngs(tmp_path / "x", 20)
    with pytest.raises(DataError, match="too few"):
        select_images(root, count=MIN_IMAGES - 1)


def test_unreadable_files_are_skipped_then_too_few_is_an_error(tmp_path):
    root = write_pngs(tmp_path / "x", MIN_IMAGES)
    (root / "broken.png").write_bytes(b"not a png at all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cs = load_calibration_set(root, SPEC, channels=1, count=MIN_IMAGES + 1)
    assert len(cs) == MIN_IMAGES and cs.skipped[0][0] == "broken.png"
    assert any(issubclass(w.category, CalibrationWarning) for w in caught)
    (root / "img_000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="at least"):
        load_calibration_set(root, SPEC, channels=1, count=MIN_IMAGES + 1)


def test_calibration_bundle_and_trt_modules_never_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['torch'] = None\n"
            "import hamedge.calibration, hamedge.calibration.data, hamedge.calibration.quantize, hamedge.calibration.guard\n"
            "import hamedge.bundle, hamedge.trt, hamedge.trt.build, hamedge.trt.engines, hamedge.trt.cuda, hamedge.trt.compat\n"
            "import hamedge.cli.export_cmds\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
