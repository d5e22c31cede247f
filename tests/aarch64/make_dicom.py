"""Write compressed DICOM copies of a real X-ray for the aarch64 job: a DX image (12 bits stored,
frontal chest) in every lossless transfer syntax the host's pydicom can encode (RLE always; JPEG
2000 with pylibjpeg-openjpeg; JPEG-LS with pyjpegls), so the arm64 run proves the slim runtime
installs and decodes them there. Prints one line per file written or skipped.

    python make_dicom.py SOURCE.png OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (JPEG2000Lossless, JPEGLSLossless, ExplicitVRLittleEndian, RLELossless,
                         generate_uid)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SYNTAXES = {"rle": RLELossless, "j2k": JPEG2000Lossless, "jpegls": JPEGLSLossless}


def dx_dataset(path: Path, pixels: np.ndarray) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientName, ds.PatientID = "Anonymous", "0"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def main(source: str, out_dir: str) -> None:
    gray = cv2.imread(source, cv2.IMREAD_GRAYSCALE)
    pixels = gray.astype(np.uint16) * 16  # the 8-bit X-ray as 12-bit detector values
    out = Path(out_dir)
    for name, syntax in SYNTAXES.items():
        path = out / f"{Path(source).stem}.{name}.dcm"
        ds = dx_dataset(path, pixels)
        try:
            ds.compress(syntax)
        except Exception as exc:  # no encoder for this syntax on the host
            print(f"DICOM {syntax.name}: skipped, the host cannot encode it ({str(exc).splitlines()[0][:160]})")
            continue
        ds.save_as(str(path), enforce_file_format=True)
        print(f"DICOM {syntax.name}: {path.name}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
