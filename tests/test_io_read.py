"""hamedge.io: PNG/JPEG 8 and 16 bit, colour, DICOM transforms, broken files, folder walking."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hamedge.errors import DataError
from hamedge.io import find_images, is_dicom, read_image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage,  # noqa: E402
                         generate_uid)


def write_dicom(path: Path, arr: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                syntax=ExplicitVRLittleEndian, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
        if syntax == ExplicitVRLittleEndian:
            ds.PixelData = arr.tobytes()
        else:
            from pydicom.encaps import encapsulate
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 40])
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP12 = np.array([[0, 1000, 2000], [3000, 4000, 4095]], np.uint16)


def test_png_8bit_gray_rgb_rgba_and_16bit(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and np.array_equal(out, gray)
    # an X-ray saved as RGB(A): three equal channels -> the exact gray values
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 9)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), gray)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), gray)
    colour = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "c.png"), np.asarray(Image.fromarray(colour).convert("L")))
    # 16 bit: float32 value / 65535 (gray and colour)
    g16 = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out16 = read_image(tmp_path / "g16.png")
    assert out16.dtype == np.float32 and np.allclose(out16, g16 / 65535.0, atol=1e-7)
    cv2.imwrite(str(tmp_path / "c16.png"), np.dstack([g16] * 3))  # BGR, equal channels
    assert np.allclose(read_image(tmp_path / "c16.png"), g16 / 65535.0, atol=1e-6)


def test_jpeg_and_tiff(tmp_path):
    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (50, 1))
    Image.fromarray(gray).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.dtype == np.uint8 and out.shape == gray.shape
    assert np.array_equal(out, np.asarray(Image.open(tmp_path / "x.jpg")))
    assert np.abs(out.astype(int) - gray).max() <= 6
    t16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(t16).save(tmp_path / "x.tif")
    assert np.allclose(read_image(tmp_path / "x.tif"), t16 / 65535.0, atol=1e-7)


def test_real_xrays_match_pil(nih_images):
    for path in nih_images:
        out = read_image(path)
        assert out.dtype == np.uint8 and out.shape == (1024, 1024)
        assert np.array_equal(out, np.asarray(Image.open(path).convert("RGB"))[:, :, 0])


def test_dicom_monochrome_and_bits_stored(tmp_path):
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", RAMP12))
    assert m2.dtype == np.float32 and np.allclose(m2, RAMP12 / 4095.0)  # min-max of the used range
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", RAMP12, "MONOCHROME1"))
    assert np.allclose(m1, 1 - RAMP12 / 4095.0)
    noisy = RAMP12 | np.uint16(0xF000)  # garbage above BitsStored must be ignored
    assert np.allclose(read_image(write_dicom(tmp_path / "hb.dcm", noisy)), RAMP12 / 4095.0)
    frames = np.stack([RAMP12, 4095 - RAMP12])
    assert np.allclose(read_image(write_dicom(tmp_path / "mf.dcm", frames)), RAMP12 / 4095.0)  # first frame
    eight = np.array([[0, 7], [200, 255]], np.uint8)
    out8 = read_image(write_dicom(tmp_path / "u8.dcm", eight, bits_stored=8))
    assert out8.dtype == np.uint8 and np.array_equal(out8, eight)


def test_dicom_rescale_and_window(tmp_path):
    # Hounsfield-like: value = 2 * stored - 1000; window 1000 +- 500 (PS3.3 linear window)
    path = write_dicom(tmp_path / "w.dcm", RAMP12, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=1001)
    hu = RAMP12 * 2.0 - 1000
    expected = np.clip((hu - 999.5) / 1000.0 + 0.5, 0, 1)
    assert np.allclose(read_image(path), expected, atol=1e-6)
    # multi-valued window: the first one is used; MONOCHROME1 inverts after windowing
    path = write_dicom(tmp_path / "w1.dcm", RAMP12, "MONOCHROME1", WindowCenter=[2048, 100], WindowWidth=[4096, 10])
    assert np.allclose(read_image(path), 1 - np.clip((RAMP12 - 2047.5) / 4095 + 0.5, 0, 1), atol=1e-6)
    # rescale without window: min-max of the rescaled values
    path = write_dicom(tmp_path / "r.dcm", RAMP12, RescaleSlope=1, RescaleIntercept=-1024)
    assert np.allclose(read_image(path), RAMP12 / 4095.0, atol=1e-6)


def test_dicom_detected_by_content_and_errors(tmp_path):
    path = write_dicom(tmp_path / "noext", RAMP12)
    assert is_dicom(path) and np.allclose(read_image(path), RAMP12 / 4095.0)
    with pytest.raises(DataError, match="no pixel data"):
        read_image(write_dicom(tmp_path / "empty.dcm", None))
    with pytest.raises(DataError, match="needs a decoder|cannot decode"):
        read_image(write_dicom(tmp_path / "ls.dcm", RAMP12, syntax=JPEGLSLossless))
    (tmp_path / "fake.dcm").write_bytes(b"hello, not dicom at all" * 3)
    with pytest.raises(DataError):
        read_image(tmp_path / "fake.dcm")


@pytest.mark.parametrize("content,suffix", [(b"", ".png"), (b"not an image at all", ".png"),
                                            (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, ".png"), (b"GIF89a", ".jpg")])
def test_broken_files_raise_one_line_data_error(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_png_and_jpeg(tmp_path, nih_images):
    data = nih_images[0].read_bytes() if nih_images else None
    if data is None:
        pytest.skip("no real X-ray")
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot decode|truncated"):
        read_image(tmp_path / "t.png")
    Image.open(nih_images[0]).save(tmp_path / "full.jpg")
    jpg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(jpg[: len(jpg) // 3])
    with pytest.raises(DataError):
        read_image(tmp_path / "t.jpg")
    with pytest.raises(DataError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_find_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("x.png", "a/y.JPG", "a/b/z.dcm", ".hidden/h.png", ".dot.png", "notes.txt", "a/readme.md"):
        (tmp_path / rel).write_bytes(b"x")
    write_dicom(tmp_path / "a" / "b" / "scan0001", RAMP12)  # DICOM without an extension
    found, skipped = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/scan0001", "a/b/z.dcm", "a/y.JPG", "x.png"]
    assert skipped == {"hidden": 2, "not_image": 2, "not_a_file": 0}
    flat, _ = find_images(tmp_path, recursive=False)
    assert [p.name for p in flat] == ["x.png"]
    only, _ = find_images(tmp_path, glob="*.dcm")
    assert [p.name for p in only] == ["z.dcm"]
    assert find_images(tmp_path / "x.png")[0] == [tmp_path / "x.png"]
    with pytest.raises(DataError):
        find_images(tmp_path / "nope")


def test_dicom_rle_compressed_round_trip(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", RAMP12)
    ds = pydicom.dcmread(path)
    try:
        ds.compress(pydicom.uid.RLELossless)
    except Exception as exc:  # encoder plugins vary between pydicom installs
        pytest.skip(f"RLE encoder unavailable: {exc}")
    ds.save_as(tmp_path / "rle.dcm")
    assert np.allclose(read_image(tmp_path / "rle.dcm"), RAMP12 / 4095.0)


def test_png16_huge_header_raises_one_line_data_error(tmp_path):
    import struct
    import zlib
    ok, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint16))
    data = bytearray(buf.tobytes())
    assert ok and data[24] == 16
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width/height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "huge16.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("empty", [None, ""])
def test_dicom_empty_rescale_and_window(tmp_path, empty):
    path = write_dicom(tmp_path / "r.dcm", RAMP12, RescaleSlope=empty, RescaleIntercept=empty)
    out = read_image(path)
    assert out.ndim == 2 and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and np.allclose(out, RAMP12 / 4095.0, atol=1e-6)
    path = write_dicom(tmp_path / "w.dcm", RAMP12, WindowCenter=empty, WindowWidth=empty)
    out = read_image(path)
    assert out.ndim == 2 and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.allclose(out, RAMP12 / 4095.0, atol=1e-6)


def test_image_over_the_pixel_limit_is_refused_in_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from hamedge.errors import DataError
    from hamedge.io import read_image

    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr("hamedge.io.MAX_PIXELS", 3000)  # the one limit of every reader
    with pytest.raises(DataError, match="safety limit") as info:
        read_image(path)
    assert "\n" not in str(info.value)
