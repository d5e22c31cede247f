"""Write one X-ray as a DX DICOM file in each transfer syntax radiographs are stored in.

Encoders: pydicom's own (RLE, deflate, byte order) and its plugins (JPEG-LS: pyjpegls; JPEG 2000:
pylibjpeg-openjpeg); JPEG baseline and lossless through GDCM's ImageChangeTransferSyntax, the
only encoder for them installed. Not here: 12-bit JPEG Extended (GDCM writes 16-bit-precision
lossy JPEG instead, which no standard decoder reads; the tests use pydicom's corpus files of
another writer for it) and HTJ2K (no encoder installed).
Used by the decoder tests and benchmarks/dicom_decode.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import FileDataset, FileMetaDataset

# name -> (transfer syntax, lossless?)
ENCODINGS = {
    "explicit_le": (uid.ExplicitVRLittleEndian, True),
    "implicit_le": (uid.ImplicitVRLittleEndian, True),
    "explicit_be": (uid.ExplicitVRBigEndian, True),
    "deflated": (uid.DeflatedExplicitVRLittleEndian, True),
    "rle": (uid.RLELossless, True),
    "jpeg_baseline": (uid.JPEGBaseline8Bit, False),
    "jpeg_lossless": (uid.JPEGLossless, True),
    "jpeg_lossless_sv1": (uid.JPEGLosslessSV1, True),
    "jpegls_lossless": (uid.JPEGLSLossless, True),
    "jpegls_near": (uid.JPEGLSNearLossless, False),
    "j2k_lossless": (uid.JPEG2000Lossless, True),
    "j2k_lossy": (uid.JPEG2000, False),
}

_GDCM = {
    uid.JPEGBaseline8Bit: "JPEGBaselineProcess1",
    uid.JPEGLossless: "JPEGLosslessProcess14", uid.JPEGLosslessSV1: "JPEGLosslessProcess14_1",
}


def dx_dataset(pixels: np.ndarray, bits_stored: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientName, ds.PatientID = "Test^Encodings", "0"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16).tobytes()
    return ds


def write(pixels: np.ndarray, bits_stored: int, name: str, path: Path) -> Path:
    """``pixels`` (uint8/uint16, values < 2**bits_stored) as ``path`` in encoding ``name``."""
    syntax, _ = ENCODINGS[name]
    if syntax == uid.JPEGBaseline8Bit and bits_stored > 8:
        raise ValueError("JPEG baseline holds 8-bit samples only")
    ds = dx_dataset(pixels, bits_stored)
    if syntax in _GDCM:
        plain = path.with_suffix(".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        _gdcm_transcode(plain, path, _GDCM[syntax])
        plain.unlink()
        return path
    if syntax == uid.ExplicitVRBigEndian:
        from pydicom import dcmwrite

        ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder(">")).tobytes()
        ds["PixelData"].VR = "OB" if bits_stored <= 8 else "OW"  # OW would swap 8-bit pairs
        ds.file_meta.TransferSyntaxUID = syntax
        dcmwrite(path, ds, implicit_vr=False, little_endian=False,
                 force_encoding=True)
        return path
    if syntax in (uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != uid.ExplicitVRLittleEndian:
        options = {"jls_error": 2} if syntax == uid.JPEGLSNearLossless else \
            {"j2k_cr": [15]} if syntax == uid.JPEG2000 else {}
        ds.compress(syntax, **options)
    ds.save_as(path, enforce_file_format=True)
    return path


def _gdcm_transcode(src: Path, dst: Path, ts_name: str) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, ts_name)))
    change.SetInput(reader.GetImage())
    if ts_name == "JPEGBaselineProcess1":
        codec = change.GetJPEGCodec() if hasattr(change, "GetJPEGCodec") else None
        if codec is not None:
            codec.SetQuality(95)
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {ts_name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {dst}")
