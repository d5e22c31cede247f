"""Reading X-ray files into arrays, and finding them in folders. No torch.

``read_image(path)`` always returns a 2-D array:
- ``uint8`` for 8-bit sources (8-bit PNG/JPEG/TIFF/BMP, plain 8-bit DICOM), unchanged pixel values,
  so the reference's PIL pipeline is reproduced bit for bit by hamedge.preprocess;
- ``float32`` in [0, 1] for everything else (16-bit PNG/TIFF: value / 65535; DICOM after its
  modality and VOI transforms, see ``_read_dicom``).
Colour files become gray with ITU-R 601 luma (Pillow's convert("L") for 8-bit). An X-ray saved
as RGB has three equal channels and so keeps its exact values; alpha is ignored. DICOM is
recognised by its "DICM" preamble as well as by its extension.
Unreadable files (corrupt, truncated, empty, not an image) raise DataError with a one-line reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hamedge.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
_LUMA = (0.299, 0.587, 0.114)


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM preamble (b'DICM' at offset 128)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_image(path: str | os.PathLike, reduce_to: int | None = None) -> np.ndarray:
    """Read an X-ray file into a 2-D array (uint8 for 8-bit sources, else float32 in [0, 1]).

    ``reduce_to``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (the decoder's DCT
    scaling, far less work) while both sides stay at least this many pixels. Those pixels differ
    from a full decode followed by the resize, so callers opt in (``hamedge infer
    --reduced-decode``) and take the file's full size from ``image_size``. Other formats, and
    None, decode in full."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if is_dicom(path) or path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path)
    return _read_raster(path, reduce_to)


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of a PNG/JPEG/TIFF/BMP from its header without decoding it; None for
    files Pillow cannot open (DICOM)."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            return int(pil.size[1]), int(pil.size[0])
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as handle:
        head = handle.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 26:
        return head[24]
    return None


def _gray(array: np.ndarray) -> np.ndarray:
    """Luma of an HxWxC float array (channels already in RGB order)."""
    return (array[..., 0] * _LUMA[0] + array[..., 1] * _LUMA[1] + array[..., 2] * _LUMA[2]).astype(np.float32)


def _read_raster(path: Path, reduce_to: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if _png_bit_depth(path) == 16:
        return _read_png16(path)
    try:
        # The size check replaces warnings.catch_warnings, which is not thread-safe (readers
        # are threads).
        with Image.open(path) as pil:
            limit = Image.MAX_IMAGE_PIXELS  # PIL only warns below twice this: refuse at it
            if limit and pil.size[0] * pil.size[1] > limit:
                raise DataError(f"{path}: image of {pil.size[0]}x{pil.size[1]} pixels is larger "
                                f"than the {limit}-pixel safety limit (decompression bomb?)")
            if reduce_to and pil.format == "JPEG":
                pil.draft(pil.mode, (reduce_to, reduce_to))  # DCT scaling; both sides stay >= reduce_to
            pil.load()  # decode now: truncated or corrupt data fails here
            if getattr(pil, "n_frames", 1) > 1:
                pil.seek(0)
            mode = pil.mode
            if mode == "L":
                return np.asarray(pil).copy()
            if mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr", "1", "RGBX"):
                return np.asarray(pil.convert("L")).copy()
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return (np.asarray(pil).astype(np.float32) / 65535.0).astype(np.float32)
            if mode == "I":
                data = np.asarray(pil).astype(np.float64)
                top = 65535.0 if data.max() <= 65535 and data.min() >= 0 else None
                return _minmax(data) if top is None else (data / top).astype(np.float32)
            if mode == "F":
                return _minmax(np.asarray(pil).astype(np.float64))
            raise DataError(f"{path}: unsupported image mode {mode}")
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({_one_line(exc)})") from None


def _read_png16(path: Path) -> np.ndarray:
    # Pillow truncates 16-bit colour PNGs to 8 bits; OpenCV keeps all 16.
    import cv2

    try:
        data = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header beyond CV_IO_MAX_IMAGE_PIXELS, or a corrupt stream
        raise DataError(f"{path}: cannot decode 16-bit PNG ({_one_line(exc)})") from None
    if data is None:
        raise DataError(f"{path}: cannot decode 16-bit PNG (corrupt or truncated)")
    data = data.astype(np.float32) / np.float32(65535.0)
    if data.ndim == 3:
        channels = data.shape[2]
        if channels == 2:  # gray + alpha
            data = data[:, :, 0]
        else:
            data = _gray(data[:, :, 2::-1] if channels >= 3 else data)  # OpenCV gives BGR(A)
    return np.ascontiguousarray(data, dtype=np.float32)


def _minmax(data: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(data)), float(np.max(data))
    if hi <= lo:
        return np.zeros(data.shape, np.float32)
    return ((data - lo) / (hi - lo)).astype(np.float32)


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# DICOM


def _read_dicom(path: Path) -> np.ndarray:
    """DICOM -> 2-D array.

    Steps: first frame of a multi-frame file; colour (RGB/YBR) -> luma; modality LUT
    (Rescale Slope/Intercept or Modality LUT Sequence); VOI LUT sequence or window centre/width
    when present (first window), giving [0, 1] through the window; otherwise a min-max stretch
    of the stored range actually used; MONOCHROME1 inverted so that bone is always bright.
    A plain 8-bit MONOCHROME2 image without any transform is returned as uint8 unchanged.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # Files without meta information: assume the DICOM default (implicit VR little endian).
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        text = str(exc).lower()
        if getattr(syntax, "is_compressed", False) and ("missing" in text or "no pixel data decoders" in text
                                                        or "not supported" in text):
            raise DataError(f"{path}: compressed DICOM ({syntax.name}) needs a decoder that is not installed "
                            "(e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or "
                            "python-gdcm)") from None
        raise DataError(f"{path}: cannot decode DICOM pixel data ({_one_line(exc).rstrip(':')}: "
                        f"{_last_line(exc)})") from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot decode DICOM pixel data ({_one_line(exc)})") from None

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples > 1:  # pydicom converts YBR to RGB by default
        if pixels.ndim != 3:
            raise DataError(f"{path}: unexpected colour DICOM pixel shape {pixels.shape}")
        gray = _gray(pixels.astype(np.float32))
        top = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
        return np.clip(gray / top, 0, 1).astype(np.float32)
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, DICOM pixel shape is {pixels.shape}")

    # Present-but-empty elements count as absent: slope 1, intercept 0, no window.
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds and _is_empty(ds[keyword].value):
            del ds[keyword]
    if any(k in ds and _is_empty(ds[k].value) for k in ("WindowCenter", "WindowWidth")):
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in ds:
                del ds[keyword]
    try:
        has_rescale = ("RescaleSlope" in ds and float(ds.RescaleSlope) != 1.0) or \
                      ("RescaleIntercept" in ds and float(ds.RescaleIntercept) != 0.0) or "ModalityLUTSequence" in ds
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: invalid DICOM rescale slope/intercept ({_one_line(exc)})") from None
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if pixels.dtype == np.uint8 and photometric == "MONOCHROME2" and not has_rescale and not has_voi:
        return np.ascontiguousarray(pixels)

    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        data = apply_modality_lut(pixels, ds).astype(np.float64)
        if "VOILUTSequence" in ds:
            item = ds.VOILUTSequence[0]
            data = apply_voi_lut(pixels if not has_rescale else data, ds, index=0).astype(np.float64)
            bits = int(item.LUTDescriptor[2]) or 16
            out = np.clip(data / float(2 ** bits - 1), 0, 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center = _first(ds.WindowCenter)
            width = max(_first(ds.WindowWidth), 1.0)
            # DICOM PS3.3 C.11.2.1.2.1 linear window, mapped to [0, 1].
            out = np.clip((data - (center - 0.5)) / (width - 1.0) + 0.5, 0, 1) if width > 1 else \
                (data >= center).astype(np.float64)
        else:
            out = _minmax(data).astype(np.float64)
    except Exception as exc:  # any malformed LUT/window/rescale value: one-line DataError
        raise DataError(f"{path}: invalid DICOM LUT or window ({_one_line(exc)})") from None
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return not value.strip()
    try:
        return len(value) == 0
    except TypeError:
        return False


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


# ---------------------------------------------------------------------------------------------
# Finding files


def find_images(root: str | os.PathLike, glob: str | None = None,
                recursive: bool = True) -> tuple[list[Path], dict[str, int]]:
    """Image files under ``root`` (a folder, or one file), sorted.

    Hidden files and folders (leading '.') are skipped; so are files whose suffix is not an image
    suffix unless they carry the DICOM preamble. ``glob`` (e.g. '*.png') restricts the names.
    Returns (paths, skipped) where skipped counts {'hidden': n, 'not_image': n}.
    """
    root = Path(root)
    skipped = {"hidden": 0, "not_image": 0}
    if root.is_file():
        return [root], skipped
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    found: list[Path] = []
    walker: Iterable = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)
                                                                          if e.is_file()])]
    for folder, dirs, files in walker:
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        skipped["hidden"] += len(hidden_dirs)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                skipped["hidden"] += 1
                continue
            path = Path(folder) / name
            if glob is not None and not path.match(glob):
                continue
            if path.suffix.lower() in SUFFIXES or is_dicom(path):
                found.append(path)
            else:
                skipped["not_image"] += 1
    return sorted(found), skipped
