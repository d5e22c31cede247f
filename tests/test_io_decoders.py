"""DICOM decoding out of the box: every transfer syntax radiographs use, on files this project did
not write (pydicom's own test files, and pydicom-data's when installed), and on the real NIH
X-rays encoded in each syntax. The same image in several encodings must give the same pixels
(lossless) or close ones (lossy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

import dicom_encodings
from hamedge import decoders
from hamedge.errors import DataError
from hamedge.io import read_image, read_image_with_notes

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _data_store() -> Path | None:
    try:
        import data_store  # pydicom-data's package
    except ImportError:
        return None
    return Path(data_store.__file__).parent / "data"


def _stored(path: Path) -> np.ndarray:
    """The stored values of frame 0, decoded by pydicom with hamedge's plugins installed."""
    decoders.install()
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(index=0)
    return ds.pixel_array.astype(np.float64)


def test_every_promised_syntax_has_a_decoder_here():
    rows = decoders.report()
    assert {r["uid"] for r in rows} == set(decoders.SYNTAX_PACKAGES)
    missing = [r["syntax"] for r in rows if not r["ok"]]
    assert not missing, f"no decoder installed for {missing}"
    by_uid = {r["uid"]: r for r in rows}
    assert "hamedge-gdcm12" in by_uid[uid.JPEGExtended12Bit]["plugins"]
    assert by_uid[uid.HTJ2KLossless]["plugins"] == ["pylibjpeg"]


@pytest.mark.parametrize("names", [
    ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
])
def test_pydicom_corpus_lossless_encodings_agree(names):
    ref = _stored(TEST_FILES / names[0])
    for name in names[1:]:
        assert np.array_equal(_stored(TEST_FILES / name), ref), name
    images = [read_image(TEST_FILES / name) for name in names]
    for name, image in zip(names, images):
        assert np.array_equal(image, images[0]), name


def test_jpeg_extended_12bit_matches_the_lossless_original():
    """JPGExtended.dcm (process 4, 12 bits, another writer) against the JPEG Lossless file of
    the same NM image in pydicom-data: close, as lossy JPEG is. Both decode through GDCM; the
    12-bit path was also checked bit for bit against libjpeg-turbo 3 (imagecodecs) when written."""
    lossy = _stored(TEST_FILES / "JPGExtended.dcm")
    assert lossy.shape == (1024, 256) and lossy.max() > 200
    assert list(lossy[500, 100:108]) == [31, 28, 24, 21, 24, 23, 23, 22]  # libjpeg-turbo's values
    store = _data_store()
    if store is None:
        pytest.skip("pydicom-data not installed (pip install pydicom-data)")
    lossless = _stored(store / "JPEG-LL.dcm")
    diff = np.abs(lossy - lossless)
    assert diff.mean() < 0.02 * lossless.max() and diff.max() < 0.2 * lossless.max()


@pytest.mark.parametrize("group,lossy_tolerance", [
    (["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"], 0.02),  # a real CR, 15 bit
    (["RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"], 0.02),  # CR, 10 bit
    (["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
      "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"], 0.0),
    (["SC_rgb.dcm", "../../pydicom/data/test_files/SC_rgb_jpeg_gdcm.dcm",
      "../../pydicom/data/test_files/SC_rgb_rle.dcm"], 0.0),  # JPEG Lossless process 14, RGB
    (["OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"], 0.0),
])
def test_pydicom_data_encodings_agree(group, lossy_tolerance):
    store = _data_store()
    if store is None:
        pytest.skip("pydicom-data not installed (pip install pydicom-data)")
    ref = _stored(store / group[0])
    for name in group[1:]:
        got = _stored(store / name)
        lossless = "J2KI" not in name and "UNCI" not in name
        if lossless:
            assert np.array_equal(got, ref), name
        else:  # lossy (the UNCI files are the decompressed lossy images)
            assert np.abs(got - ref).mean() <= lossy_tolerance * ref.max(), name
        read_image(store / name)  # and hamedge reads it


def test_corpus_reads_end_in_an_array_or_one_line_error():
    """Every file of pydicom's corpus (and pydicom-data's): ok, or a DataError on one line; no
    other exception, and no warning escapes (they come back as notes)."""
    store = _data_store()
    paths = sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix in (".dcm", ""))
    if store is not None:
        paths += sorted(store.glob("*.dcm"))
    ok = 0
    for path in paths:
        try:
            image, _ = read_image_with_notes(path)
        except DataError as exc:
            assert "\n" not in str(exc)
            continue
        assert image.ndim == 2 and (image.dtype == np.uint8 or np.isfinite(image).all())
        ok += 1
    assert ok >= 100


def test_truncated_jpeg2000_stream_is_reported_as_truncated(tmp_path):
    data = (TEST_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-300])
    with pytest.raises(DataError, match="truncated"):
        read_image(cut)
    store = _data_store()
    if store is not None:  # pydicom-data's own truncated J2K file
        with pytest.raises(DataError, match="truncated"):
            read_image(store / "emri_small_jpeg_2k_lossless_too_short.dcm")


@pytest.fixture(scope="module")
def nih_pixels(request):
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-samples" / "images" / "00000001_000.png"
    if not path.is_file():
        pytest.skip(f"real NIH X-ray not found at {path}")
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"))
    noise = (np.arange(img.size).reshape(img.shape) * 7919) % 16  # fills the low 4 bits
    return img, (img.astype(np.uint16) * 16 + noise).astype(np.uint16)


@pytest.mark.parametrize("bits", [8, 12])
def test_nih_xray_in_every_syntax_decodes_the_same(tmp_path, nih_pixels, bits):
    pixels = nih_pixels[0] if bits == 8 else nih_pixels[1]
    for name, (syntax, lossless) in dicom_encodings.ENCODINGS.items():
        if syntax == uid.JPEGBaseline8Bit and bits != 8:
            continue
        path = dicom_encodings.write(pixels, bits, name, tmp_path / f"{name}.dcm")
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        stored = _stored(path)
        if lossless:
            assert np.array_equal(stored, pixels), name
        else:
            assert np.abs(stored - pixels).mean() < 0.01 * (2 ** bits), name
        image, notes = read_image_with_notes(path)
        assert image.shape == pixels.shape and not notes, name


def test_a_syntax_without_decoder_names_syntax_and_package(tmp_path, monkeypatch):
    path = dicom_encodings.write(np.zeros((8, 8), np.uint8), 8, "jpeg_lossless", tmp_path / "l.dcm")
    from pydicom.pixels.decoders import JPEGLosslessDecoder

    monkeypatch.setattr(type(JPEGLosslessDecoder), "is_available", property(lambda self: False))
    with pytest.raises(DataError) as info:
        read_image(path)
    text = str(info.value)
    assert "JPEG Lossless" in text and "1.2.840.10008.1.2.4.57" in text and "python-gdcm" in text


def test_doctor_lists_decoders_and_stays_torch_free():
    code = ("import sys; from hamedge.cli import run_app; rc = run_app(['doctor', '--json']); "
            "assert 'torch' not in sys.modules, 'doctor imported torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["decoder_packages"]["python-gdcm"]["version"]
    assert info["decoder_packages"]["python-gdcm"]["licence"].startswith("BSD")
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    syntaxes = {row["uid"]: row for row in info["transfer_syntaxes"]}
    assert syntaxes[uid.JPEGLossless]["ok"] and syntaxes[uid.JPEGLSNearLossless]["ok"]
