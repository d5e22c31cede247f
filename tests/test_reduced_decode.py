"""--reduced-decode on JPEG 2000: .jp2/.j2k files and DICOM JPEG 2000 frames are decoded with
only the wavelet levels needed (Pillow's OpenJPEG ``reduce``), never more levels than the
codestream has; frames the reduced path cannot reproduce exactly in the DICOM conventions
(signed, colour, BitsStored unlike the codestream's precision) decode in full; results stay at
the file's full size; corrupt files stay one-line errors.

Tolerances were measured on the three real NIH X-rays (1024 px), reduced decode against the full
decode area-resized to the same size, in [0, 1] units: at 1/2 size mean |difference| 0.003-0.007
(p99 0.022-0.031), at 1/8 size mean 0.012-0.022 (p99 0.07-0.13), lossless and lossy, file and
DICOM (8 and 12 bit); the maxima (0.2-0.7) sit on the burnt-in text and the image border, where
the wavelet's low-pass and an area average differ most. The real 1955x1841 MONOCHROME1 15-bit
radiograph of pydicom-data (RG1_J2KR) at 1/2 size: mean 0.0025, p99 0.011.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image

import dicom_encodings
from dicom_corpus import corpus_file
from infer_helpers import make_bundle

from hamedge import jpeg2000
from hamedge.errors import DataError
from hamedge.io import find_images, image_size, read_image, read_image_with_notes


def _gray(nih_images) -> np.ndarray:
    if not nih_images:
        pytest.skip("no real NIH X-rays")
    return cv2.imread(str(nih_images[0]), cv2.IMREAD_GRAYSCALE)


def _close(full: np.ndarray, reduced: np.ndarray) -> tuple[float, float]:
    """(mean, p99) |reduced - full area-resized to reduced's size|, in [0, 1] units."""
    scale = 255.0 if full.dtype == np.uint8 else 1.0
    h, w = reduced.shape
    ref = cv2.resize(full.astype(np.float64) / scale, (w, h), interpolation=cv2.INTER_AREA)
    diff = np.abs(ref - reduced.astype(np.float64) / scale)
    return float(diff.mean()), float(np.quantile(diff, 0.99))


@pytest.fixture(scope="module")
def xray(nih_images):
    return _gray(nih_images)


@pytest.fixture(scope="module")
def files(tmp_path_factory, xray):
    """The X-ray as .jp2 (Pillow, lossless), .j2k (bare codestream), .jp2 by OpenCV, and as
    DICOM JPEG 2000 lossless and lossy (8 bit) and lossless 12 bit, MONOCHROME1 with a window."""
    root = tmp_path_factory.mktemp("j2k")
    Image.fromarray(xray).save(root / "pil.jp2")
    Image.fromarray(xray).save(root / "bare.j2k")
    cv2.imwrite(str(root / "cv.jp2"), xray)
    dicom_encodings.write(xray, 8, "j2k_lossless", root / "lossless8.dcm")
    dicom_encodings.write(xray, 8, "j2k_lossy", root / "lossy8.dcm")
    ds = dicom_encodings.dx_dataset((xray.astype(np.uint16) << 4) | 7, 12)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.compress(pydicom.uid.JPEG2000Lossless)
    ds.save_as(root / "lossless12_mono1.dcm", enforce_file_format=True)
    return root


def test_header_gives_size_precision_and_levels(files):
    for name in ("pil.jp2", "bare.j2k", "cv.jp2"):
        with open(files / name, "rb") as handle:
            header = jpeg2000.read_header(handle)
        assert (header.width, header.height, header.precisions, header.signed) == (1024, 1024, (8,), (False,))
        assert header.levels == 5  # OpenJPEG's default: 6 resolutions
    assert jpeg2000.read_header(io.BytesIO(b"\xff\x4f\xff\x51\x00\x05garbage")) is None
    assert jpeg2000.read_header(io.BytesIO(b"\x89PNG\r\n\x1a\n")) is None


@pytest.mark.parametrize("name", ["pil.jp2", "bare.j2k", "cv.jp2"])
def test_jpeg2000_file_decodes_the_levels_needed(files, name):
    path = files / name
    full = read_image(path)
    assert full.dtype == np.uint8 and full.shape == (1024, 1024)
    assert read_image(path, reduce_to=512).shape == (512, 512)
    assert read_image(path, reduce_to=300).shape == (512, 512)  # 1/4 would be under 300
    assert read_image(path, reduce_to=100).shape == (128, 128)  # 1/16 would be under 100
    assert image_size(path) == (1024, 1024)  # the file's size, for boxes and heatmaps
    for reduce_to, mean, p99 in ((512, 0.01, 0.04), (128, 0.03, 0.16)):
        small = read_image(path, reduce_to=reduce_to)
        assert small.dtype == np.uint8
        got = _close(full, small)
        assert got[0] < mean and got[1] < p99, (reduce_to, got)


def test_a_file_with_fewer_levels_reduces_as_far_as_it_allows(tmp_path, xray):
    path = tmp_path / "two_levels.jp2"
    Image.fromarray(xray).save(path, num_resolutions=3)  # 2 decomposition levels
    with open(path, "rb") as handle:
        assert jpeg2000.read_header(handle).levels == 2
    assert read_image(path, reduce_to=100).shape == (256, 256)  # 1/4, not the 1/8 asked for
    none = tmp_path / "no_levels.j2k"
    Image.fromarray(xray).save(none, num_resolutions=1)
    assert np.array_equal(read_image(none, reduce_to=100), read_image(none))


def test_sizes_pillow_rounds_unlike_openjpeg_use_a_smaller_reduction(tmp_path, xray):
    # 1021 / 4: OpenJPEG gives 256 columns, Pillow sizes the image 255 and refuses the tile.
    path = tmp_path / "odd.jp2"
    Image.fromarray(np.ascontiguousarray(xray[:1021, :1021])).save(path)
    with open(path, "rb") as handle:
        header = jpeg2000.read_header(handle)
    assert jpeg2000.reduction(header, 200) == 1
    with Image.open(path) as pil, pytest.raises(OSError):
        pil.reduce = 2
        pil.load()
    assert read_image(path, reduce_to=200).shape == (511, 511)


def test_corrupt_and_truncated_jpeg2000_give_one_line_errors(tmp_path, files):
    data = (files / "pil.jp2").read_bytes()
    for name, payload in (("cut.jp2", data[: len(data) // 2]), ("head.jp2", data[:300]),
                          ("junk.j2k", b"\xff\x4f\xff\x51" + bytes(range(256)) * 4)):
        (tmp_path / name).write_bytes(payload)
        for reduce_to in (None, 512):
            with pytest.raises(DataError) as caught:
                read_image(tmp_path / name, reduce_to=reduce_to)
            assert "\n" not in str(caught.value) and name in str(caught.value)


def test_found_in_folders(files):
    found, _ = find_images(files)
    assert {p.name for p in found} >= {"pil.jp2", "bare.j2k", "cv.jp2", "lossless8.dcm"}


@pytest.mark.parametrize("name,dtype", [("lossless8.dcm", np.uint8), ("lossy8.dcm", np.uint8),
                                        ("lossless12_mono1.dcm", np.float32)])
def test_dicom_jpeg2000_reduced_keeps_the_dicom_conventions(files, name, dtype):
    path = files / name
    full = read_image(path)
    small = read_image(path, reduce_to=512)
    assert full.dtype == small.dtype == dtype and small.shape == (512, 512)
    assert read_image(path, reduce_to=128).shape == (128, 128)
    assert image_size(path) == (1024, 1024)
    mean, p99 = _close(full, small)
    assert mean < 0.01 and p99 < 0.04, (mean, p99)  # a wrong shift, window or inversion is ~0.3


def test_dicom_reduced_frame_is_the_pixel_array_downscaled(files):
    """The reduced frame has pixel_array's dtype and stored values (not Pillow's 16-bit scale)."""
    from hamedge.io import _reduced_j2k_frame

    ds = pydicom.dcmread(files / "lossless12_mono1.dcm")
    frame = _reduced_j2k_frame(ds, ds.file_meta.TransferSyntaxUID, 512)
    stored = ds.pixel_array
    assert frame.dtype == stored.dtype == np.uint16 and frame.shape == (512, 512)
    assert frame.max() <= 4095
    ref = cv2.resize(stored.astype(np.float64), (512, 512), interpolation=cv2.INTER_AREA)
    assert np.abs(ref - frame).mean() < 0.01 * 4095


@pytest.mark.parametrize("name,why", [
    ("JPEG2000.dcm", "signed pixels"), ("MR_small_jp2klossless.dcm", "signed pixels"),
    ("J2K_pixelrep_mismatch.dcm", "DICOM signed, codestream unsigned"),
    ("US1_J2KR.dcm", "colour"), ("GDCMJ2K_TextGBR.dcm", "colour, JP2-wrapped"),
    ("emri_small_jpeg_2k_lossless.dcm", "BitsStored 12, codestream 16 bit"),
])
def test_unusual_dicom_jpeg2000_decodes_in_full(name, why):
    path = corpus_file(name)
    ds = pydicom.dcmread(path)
    from hamedge.io import _reduced_j2k_frame

    assert _reduced_j2k_frame(ds, ds.file_meta.TransferSyntaxUID, 16) is None, why
    assert np.array_equal(read_image(path, reduce_to=16), read_image(path))


@pytest.mark.parametrize("name,shape", [("RG1_J2KR.dcm", (978, 921)), ("RG1_J2KI.dcm", (978, 921)),
                                        ("RG3_J2KI.dcm", (440, 440)), ("MR2_J2KI.dcm", (256, 256))])
def test_corpus_radiographs_reduce(name, shape):
    """Files no one here wrote: MONOCHROME1 15- and 10-bit radiographs, a 12-bit MR."""
    path = corpus_file(name)
    full, small = read_image(path), read_image(path, reduce_to=256)
    assert small.dtype == full.dtype == np.float32 and small.shape == shape
    assert image_size(path) == full.shape
    mean, _ = _close(full, small)
    assert mean < 0.02, mean


def test_truncated_dicom_jpeg2000_stays_a_truncation_error(tmp_path, files):
    data = (files / "lossless8.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-20000])
    with pytest.raises(DataError, match="truncated|cannot decode") as caught:
        read_image(cut, reduce_to=128)
    assert "\n" not in str(caught.value)
    _, notes = read_image_with_notes(files / "lossless8.dcm", reduce_to=128)
    assert notes == []


def test_pipeline_results_are_at_full_size(tmp_path, files):
    from hamedge.pipeline import InferOptions, run_inference
    from hamedge.runtime import open_backend

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("pil.jp2", "lossless8.dcm", "lossless12_mono1.dcm"):
        (folder / name).write_bytes((files / name).read_bytes())
    (folder / "broken.jp2").write_bytes((files / "pil.jp2").read_bytes()[:5000])
    bundle = make_bundle(tmp_path / "tiny.hamedge")  # input 64: reduce_to 128, 1/8 of 1024

    def run(out, reduced):
        with open_backend(bundle, "onnxruntime", "fp32", "cpu") as backend:
            run_inference([folder], backend, out, InferOptions(batch=2, heatmaps="png", all_heatmaps=True,
                                                               reduced_decode=reduced))
        return {Path(r["path"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}

    full, reduced = run(tmp_path / "full", False), run(tmp_path / "reduced", True)
    assert reduced["broken.jp2"]["status"] == "error" and "\n" not in reduced["broken.jp2"]["reason"]
    for name in ("pil.jp2", "lossless8.dcm", "lossless12_mono1.dcm"):
        row = reduced[name]
        assert row["status"] == "ok" and (row["width"], row["height"]) == (1024, 1024), row
        heat = cv2.imread(str(tmp_path / "reduced" / row["heatmaps"]["anomaly"]), cv2.IMREAD_UNCHANGED)
        assert heat.shape == (1024, 1024)
        boxes = [b for found in row.get("boxes", {}).values() for b in found]
        assert boxes, row  # the tiny random model finds something in every image
        assert all(b["x"] + b["w"] <= 1024 and b["y"] + b["h"] <= 1024 for b in boxes)
        assert max(b["x"] + b["w"] for b in boxes) > 128  # at the file's scale, not the decoded 128 px
        diff = max(abs(full[name]["probabilities"][k] - row["probabilities"][k]) for k in row["probabilities"])
        assert diff < 0.05, (name, diff)


def test_htj2k_dicom_reduces(tmp_path, xray):
    """HTJ2K (.4.201) through the same path: Pillow's OpenJPEG (>= 2.5) decodes it. No HTJ2K
    encoder is a dependency here; imagecodecs (OpenJPH) writes the codestream where installed."""
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs (an HTJ2K encoder) not installed")
    from pydicom.encaps import encapsulate

    ds = dicom_encodings.dx_dataset(xray, 8)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(xray)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    full, small = read_image(path), read_image(path, reduce_to=512)
    assert np.array_equal(full, xray) and small.dtype == np.uint8 and small.shape == (512, 512)
    mean, p99 = _close(full, small)
    assert mean < 0.01 and p99 < 0.04, (mean, p99)


def test_16bit_jpeg2000_file_reduces_as_float(tmp_path, xray):
    path = tmp_path / "x16.jp2"
    cv2.imwrite(str(path), (xray.astype(np.uint16) << 8) | xray)
    full, small = read_image(path), read_image(path, reduce_to=256)
    assert full.dtype == small.dtype == np.float32 and small.shape == (256, 256)
    assert full.max() == small.max() == 1.0  # value / 65535, as the full decode
    mean, p99 = _close(full, small)
    assert mean < 0.02 and p99 < 0.1, (mean, p99)
