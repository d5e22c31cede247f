"""Reading X-ray files into arrays, and finding them in folders. No torch.

``read_image(path)`` always returns a 2-D array:
- ``uint8`` for 8-bit sources (8-bit PNG/JPEG/JPEG 2000/TIFF/BMP, plain 8-bit DICOM), unchanged values,
  so the reference's PIL pipeline is reproduced bit for bit by hamedge.preprocess;
- ``float32`` in [0, 1] for everything else (16-bit PNG/TIFF/JPEG 2000: value / 65535; DICOM after its
  modality and VOI transforms, see ``_read_dicom``).
Colour files become gray with ITU-R 601 luma (Pillow's convert("L") for 8-bit). An X-ray saved
as RGB has three equal channels and so keeps its exact values; alpha is ignored. DICOM is
recognised by its "DICM" preamble as well as by its extension.
Unreadable files (corrupt, truncated, empty, not an image, too large, non-finite pixels) raise
DataError with a one-line reason.

Safety rules every path follows: only regular files are opened (a FIFO or device never blocks a
read); image dimensions are read from the header and checked against ``MAX_PIXELS`` before any
pixel is decoded; a DICOM object's first frame only is decoded; a float image with NaN or
infinity is refused; library warnings raised while reading are collected per call (see
``read_image_with_notes``), never printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from hamedge import jpeg2000
from hamedge.errors import DataError

# Largest image decoded, in pixels (width x height of the one frame read): twice the largest
# radiograph detectors (about 4300 x 4300). Decoded bytes are limited to 8 bytes a pixel
# (16-bit RGBA), and a DICOM object's pixel data, all frames as declared, to MAX_DICOM_BYTES
# (pydicom holds the whole element in memory before one frame is decoded).
MAX_PIXELS = 40_000_000
MAX_DICOM_BYTES = 1 << 30
_log = logging.getLogger("hamedge.io")

JPEG2000_SUFFIXES = frozenset({".jp2", ".j2k", ".j2c", ".jpc", ".jpx", ".jpf"})  # Pillow's names
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | JPEG2000_SUFFIXES
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
_LUMA = (0.299, 0.587, 0.114)


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (or a link to one); False for FIFOs, devices, sockets, folders."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike):
    """Open a regular file for binary reading, or raise DataError. Opened non-blocking and then
    checked with fstat, so a FIFO swapped in after a stat can still never block."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
            raise DataError(f"{path}: not a regular file ({kind})")
    except BaseException:
        os.close(fd)
        raise
    handle = os.fdopen(fd, "rb")
    handle.raw.name = os.fspath(path)  # readers quote the name in messages; an fd number breaks them
    return handle


def is_dicom(path: str | os.PathLike) -> bool:
    """True when a regular file carries the DICOM preamble (b'DICM' at offset 128)."""
    if not is_regular_file(path):
        return False
    try:
        with open_regular(path) as handle:
            head = handle.read(132)
    except (OSError, DataError):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def check_size(path, width: int, height: int, samples: int = 1, bits: int = 8) -> None:
    """The one pixel limit, checked from header values before anything is decoded."""
    if width < 1 or height < 1:
        raise DataError(f"{path}: image header gives {width}x{height} pixels")
    pixels = width * height
    if pixels > MAX_PIXELS or pixels * samples * ((bits + 7) // 8) > 8 * MAX_PIXELS:
        raise DataError(f"{path}: image of {width}x{height} pixels x {samples} sample(s) x {bits} bit(s) "
                        f"is over the {MAX_PIXELS}-pixel safety limit (decompression bomb?)")


# ---------------------------------------------------------------------------------------------
# Library warnings, per call and thread-safe: warnings.catch_warnings swaps process-wide state
# and is unsafe across reader threads. One process-wide hook instead hands each warning to the
# collector of the thread that raised it; warnings from other threads are shown as before, or go
# to the log while `warnings_to_log` is active (the CLI, for every thread of a run).

_local = threading.local()
_router_lock = threading.Lock()
_previous_showwarning = None
_to_log = 0
# Warnings attributed to these modules are shown every time (not once per code location), so
# each file's row gets its own: they all pass through the router, never to the terminal.
_LIBRARIES = r"(pydicom|PIL|numpy|cv2|gdcm|pylibjpeg|openjpeg|rle|jpeg_ls|hamedge)(\.|$)"


def _route_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sink = getattr(_local, "sink", None)
    text = f"{category.__name__}: {' '.join(str(message).split())}"
    if sink is not None:
        sink.append(text[:200])
    elif _to_log or _previous_showwarning is None:
        _log.info("%s", text)
    else:
        _previous_showwarning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def warnings_to_log():
    """Every Python warning, from any thread, goes to the 'hamedge.io' log while active."""
    global _to_log
    _install_warning_router()
    _to_log += 1
    try:
        yield
    finally:
        _to_log -= 1


def _install_warning_router() -> None:
    global _previous_showwarning
    if warnings.showwarning is _route_warning and _has_always_filter():
        return
    with _router_lock:  # another tool (pytest, an application) may have reset either
        if warnings.showwarning is not _route_warning:
            _previous_showwarning = warnings.showwarning
            warnings.showwarning = _route_warning
        if not _has_always_filter():
            warnings.filterwarnings("always", module=_LIBRARIES)


def _has_always_filter() -> bool:
    return any(f[0] == "always" and f[3] is not None and getattr(f[3], "pattern", None) == _LIBRARIES
               for f in warnings.filters)


@contextlib.contextmanager
def collect_warnings():
    """Collect the warnings this thread raises into a list (and numpy floating-point errors
    are silenced: every result is checked for finiteness instead)."""
    _install_warning_router()
    outer = getattr(_local, "sink", None)
    notes: list[str] = []
    _local.sink = notes
    try:
        with np.errstate(all="ignore"):
            yield notes
    finally:
        _local.sink = outer


def read_image_with_notes(path: str | os.PathLike,
                          reduce_to: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``read_image`` plus the library warnings raised while reading (one line each)."""
    with collect_warnings() as notes:
        try:
            image = _read(Path(path), reduce_to)
        except DataError as exc:
            if notes and "truncated" not in str(exc) and any("End of file" in n for n in notes):
                raise DataError(f"{path}: file is truncated ({notes[0]})") from None
            raise
    return image, list(dict.fromkeys(notes))


def read_image(path: str | os.PathLike, reduce_to: int | None = None) -> np.ndarray:
    """Read an X-ray file into a 2-D array (uint8 for 8-bit sources, else float32 in [0, 1]).

    ``reduce_to``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (the decoder's DCT
    scaling, far less work), and a JPEG 2000 file or DICOM JPEG 2000 / HTJ2K frame at 1/2**r
    (only the wavelet levels needed, at most the codestream's decomposition levels), while both
    sides stay at least this many pixels. Those pixels differ from a full decode followed by the
    resize, so callers opt in (``hamedge infer --reduced-decode``) and take the file's full size
    from ``image_size``. Other formats, and None, decode in full."""
    image, notes = read_image_with_notes(path, reduce_to)
    for note in notes:
        _log.info("%s: %s", path, note)
    return image


def _read(path: Path, reduce_to: int | None = None) -> np.ndarray:
    with open_regular(path) as handle:
        head = handle.read(132)
        if not head:
            raise DataError(f"{path}: empty file")
        handle.seek(0)
        if (len(head) == 132 and head[128:132] == b"DICM") or path.suffix.lower() in DICOM_SUFFIXES:
            image = _read_dicom(path, handle, reduce_to)
        else:
            image = _read_raster(path, handle, head, reduce_to)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise DataError(f"{path}: image has non-finite pixel values (NaN or infinity)")
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of the file's image from its header, without decoding pixels: DICOM from
    Rows and Columns, other formats through Pillow; None when the header cannot be read."""
    if is_dicom(path) or Path(path).suffix.lower() in DICOM_SUFFIXES:
        return _dicom_size(path)
    from PIL import Image

    try:
        with Image.open(path) as pil:
            return int(pil.size[1]), int(pil.size[0])
    except Exception:
        return None


def _dicom_size(path) -> tuple[int, int] | None:
    import pydicom

    try:
        with collect_warnings(), open_regular(path) as handle:  # read_image reported them already
            ds = pydicom.dcmread(handle, force=True, stop_before_pixels=True,
                                 specific_tags=["Rows", "Columns"])
            rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception:
        return None
    return (rows, columns) if rows > 0 and columns > 0 else None


# ---------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP


_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> samples decoded (palette -> RGB)


def _png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR, or None when not a PNG."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26 or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24], head[25]


def _gray(array: np.ndarray) -> np.ndarray:
    """Luma of an HxWxC float array (channels already in RGB order)."""
    return (array[..., 0] * _LUMA[0] + array[..., 1] * _LUMA[1] + array[..., 2] * _LUMA[2]).astype(np.float32)


def _read_raster(path: Path, handle, head: bytes, reduce_to: int | None = None) -> np.ndarray:
    levels = 0
    if reduce_to and jpeg2000.is_jpeg2000(head):
        header = jpeg2000.read_header(handle)
        handle.seek(0)
        levels = jpeg2000.reduction(header, reduce_to) if header is not None else 0
    if levels:
        try:
            return _decode_raster(path, handle, head, reduce_to, levels)
        except DataError:  # e.g. a tile-part header with fewer levels than the main header's
            handle.seek(0)
    return _decode_raster(path, handle, head, reduce_to, 0)


def _decode_raster(path: Path, handle, head: bytes, reduce_to: int | None, j2k_levels: int) -> np.ndarray:
    """Decode through Pillow; ``j2k_levels``: resolution levels a JPEG 2000 decode drops."""
    from PIL import Image, UnidentifiedImageError

    png = _png_header(head)
    if png is not None:
        width, height, depth, colour = png
        check_size(path, width, height, _PNG_SAMPLES.get(colour, 4), depth)
        if depth == 16 and colour != 0:  # Pillow cuts 16-bit colour to 8 bits; OpenCV keeps 16
            return _read_png16(path, handle)
    try:
        with Image.open(handle) as pil:  # reads the header only
            check_size(path, pil.size[0], pil.size[1], len(pil.getbands()),
                       16 if pil.mode.startswith("I;16") else 32 if pil.mode in ("I", "F") else 8)
            if reduce_to and pil.format == "JPEG":
                pil.draft(pil.mode, (reduce_to, reduce_to))  # DCT scaling; both sides stay >= reduce_to
            if j2k_levels and pil.format == "JPEG2000":
                pil.reduce = j2k_levels
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
                data = np.asarray(pil).astype(np.float64)
                if not np.isfinite(data).all():
                    raise DataError(f"{path}: image has non-finite pixel values (NaN or infinity)")
                return _minmax(data)
            raise DataError(f"{path}: unsupported image mode {mode}")
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, MemoryError,
            struct.error, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({_one_line(exc)})") from None


def _read_png16(path: Path, handle) -> np.ndarray:
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        data = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # a corrupt stream
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# DICOM



def _read_dicom(path: Path, handle, reduce_to: int | None = None) -> np.ndarray:
    """DICOM -> 2-D array.

    The header is read first (without the pixel data) and its size checked; then the first
    frame only is decoded (with ``reduce_to``, a JPEG 2000 frame at reduced resolution where
    `_reduced_j2k_frame` can, else in full). Colour (RGB/YBR) -> luma; modality LUT (Rescale Slope/Intercept or
    Modality LUT Sequence); VOI LUT sequence or window centre/width when present (first
    window), giving [0, 1] through the window; otherwise a min-max stretch of the stored range
    actually used; MONOCHROME1 inverted so that bone is always bright. A plain 8-bit
    MONOCHROME2 image without any transform is returned as uint8 unchanged.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from hamedge import decoders

    decoders.install()
    errors = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError,
              IndexError, OverflowError, struct.error, NotImplementedError)
    try:
        header = pydicom.dcmread(handle, force=True, stop_before_pixels=True)
    except errors as exc:
        raise DataError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    frame_bytes = _check_dicom_header(path, header)
    handle.seek(0)
    try:
        ds = pydicom.dcmread(handle, force=True)
    except errors as exc:
        raise DataError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if frame_bytes and not any(k in header for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) \
                and len(ds) < len(header):
            raise DataError(f"{path}: file is truncated (it ends inside its pixel data)")
        raise DataError(f"{path}: DICOM file has no pixel data")
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # Files without meta information: assume the DICOM default (implicit VR little endian).
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    syntax = ds.file_meta.TransferSyntaxUID
    if not getattr(syntax, "is_transfer_syntax", False):
        raise DataError(f"{path}: unknown DICOM transfer syntax {str(syntax)[:64]!r}")
    if "PixelData" in ds and getattr(syntax, "is_compressed", False):
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DataError(f"{path}: {decoders.missing_hint(syntax)}")
    pixels = _reduced_j2k_frame(ds, syntax, reduce_to) if reduce_to else None
    try:
        if pixels is None:
            ds.pixel_array_options(index=0)  # the first frame only: never all frames of a multi-frame
            pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot decode {getattr(syntax, 'name', syntax)} pixel data "
                        f"({_decoder_failure(exc)})") from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError, OSError, IndexError,
            OverflowError, MemoryError, struct.error) as exc:
        text = _one_line(exc)
        if "fewer bytes" in text or "less than expected" in text or "end of" in text.lower():
            raise DataError(f"{path}: pixel data is truncated ({text})") from None
        raise DataError(f"{path}: cannot decode DICOM pixel data ({text})") from None
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise DataError(f"{path}: DICOM float pixel data holds non-finite values (NaN or infinity)")

    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
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
        slope = float(ds.RescaleSlope) if "RescaleSlope" in ds else 1.0
        intercept = float(ds.RescaleIntercept) if "RescaleIntercept" in ds else 0.0
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: invalid DICOM rescale slope/intercept ({_one_line(exc)})") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise DataError(f"{path}: invalid DICOM RescaleSlope {slope:g} / RescaleIntercept {intercept:g} "
                        "(must be finite, slope non-zero)")
    has_rescale = slope != 1.0 or intercept != 0.0 or "ModalityLUTSequence" in ds
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if pixels.dtype == np.uint8 and photometric == "MONOCHROME2" and not has_rescale and not has_voi:
        return np.ascontiguousarray(pixels)

    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        data = apply_modality_lut(pixels, ds).astype(np.float64)
        if not np.isfinite(data).all():
            raise DataError(f"{path}: rescaled pixel values overflow (RescaleSlope {slope:g}, "
                            f"RescaleIntercept {intercept:g})")
        if "VOILUTSequence" in ds:
            item = ds.VOILUTSequence[0]
            data = apply_voi_lut(pixels if not has_rescale else data, ds, index=0).astype(np.float64)
            bits = int(item.LUTDescriptor[2]) or 16
            out = np.clip(data / float(2 ** bits - 1), 0, 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center = _first(ds.WindowCenter)
            width = max(_first(ds.WindowWidth), 1.0)
            if not (np.isfinite(center) and np.isfinite(width)):
                raise DataError(f"{path}: invalid DICOM window (centre {center:g}, width {width:g})")
            # DICOM PS3.3 C.11.2.1.2.1 linear window, mapped to [0, 1].
            out = np.clip((data - (center - 0.5)) / (width - 1.0) + 0.5, 0, 1) if width > 1 else \
                (data >= center).astype(np.float64)
        else:
            out = _minmax(data).astype(np.float64)
    except DataError:
        raise
    except Exception as exc:  # any malformed LUT/window/rescale value: one-line DataError
        raise DataError(f"{path}: invalid DICOM LUT or window ({_one_line(exc)})") from None
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _reduced_j2k_frame(ds, syntax, reduce_to: int) -> np.ndarray | None:
    """The first frame of a JPEG 2000 / HTJ2K DICOM decoded at reduced resolution (Pillow's
    OpenJPEG, dropping wavelet levels), with the values and dtype ``ds.pixel_array`` gives; None
    where the full decode must be used instead: the syntax is not JPEG 2000, the image is
    signed, colour or subsampled, the codestream disagrees with the DICOM header (size,
    components, BitsStored against its precision), no reduction applies, or decoding fails."""
    import io

    from pydicom import encaps

    from hamedge.decoders import JPEG2000_SYNTAXES

    if syntax not in JPEG2000_SYNTAXES or "PixelData" not in ds:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_stored, allocated = int(ds.BitsStored), int(ds.BitsAllocated)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0 \
                or str(ds.get("PhotometricInterpretation", "")).upper() not in ("MONOCHROME1", "MONOCHROME2"):
            return None
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) \
            if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds else None
        frame = encaps.get_frame(ds.PixelData, 0, extended_offsets=extended, number_of_frames=frames)
    except Exception:  # anything odd: the full decode reports it
        return None
    header = jpeg2000.read_header(io.BytesIO(frame))
    if header is None or header.components != 1 or header.signed[0] \
            or (header.height, header.width) != (rows, columns) or header.precisions[0] != bits_stored \
            or allocated not in (8, 16) or bits_stored > allocated:
        return None
    levels = jpeg2000.reduction(header, reduce_to)
    if not levels:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(frame), formats=["JPEG2000"]) as pil:
            pil.reduce = levels
            pil.load()
            data = np.asarray(pil)
    except Exception:
        return None
    expected = (jpeg2000.reduced_side(rows, levels), jpeg2000.reduced_side(columns, levels))
    if data.shape != expected or data.dtype not in (np.uint8, np.uint16):
        return None
    # Pillow scales samples up to its mode's 8 or 16 bits (left shift): undo it, exactly.
    data = data >> (8 * data.dtype.itemsize - bits_stored)
    return np.ascontiguousarray(data, dtype=np.uint8 if allocated == 8 else np.uint16)


def _check_dicom_header(path: Path, ds) -> int:
    """Size checks from the header alone; returns the declared bytes of one frame (0: no image)."""
    def number(keyword: str, default: int | None) -> int | None:
        value = ds.get(keyword, None)
        value = getattr(value, "value", value)
        if value is None or _is_empty(value):
            return default
        try:
            return int(value[0] if isinstance(value, (list, tuple)) else value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: DICOM {keyword} is not a number ({str(value)[:40]!r})") from None

    rows, columns = number("Rows", None), number("Columns", None)
    if rows is None and columns is None:
        return 0
    samples = number("SamplesPerPixel", 1)
    bits = number("BitsAllocated", 16)
    frames = number("NumberOfFrames", 1)
    if not rows or not columns or rows < 0 or columns < 0:
        raise DataError(f"{path}: DICOM Rows x Columns is {rows}x{columns}")
    if samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64) or frames < 1:
        raise DataError(f"{path}: DICOM header out of range (SamplesPerPixel {samples}, BitsAllocated "
                        f"{bits}, NumberOfFrames {frames})")
    check_size(path, columns, rows, samples, bits)
    frame_bytes = rows * columns * samples * bits // 8
    if frame_bytes * frames > MAX_DICOM_BYTES:
        raise DataError(f"{path}: DICOM pixel data of {frames} frame(s) of {columns}x{rows} would take "
                        f"{frame_bytes * frames / 2**20:.0f} MiB, over the {MAX_DICOM_BYTES >> 20} MiB limit")
    return frame_bytes


def _decoder_failure(exc: BaseException) -> str:
    """pydicom lists each plugin's failure on its own line: join them into one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    text = "; ".join(lines) or type(exc).__name__
    return text[:300]


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


def find_images(root: str | os.PathLike, glob: str | None = None, recursive: bool = True,
                exclude: Iterable[str | os.PathLike] = (),
                prune: Callable[[str], bool] | None = None) -> tuple[list[Path], dict[str, int]]:
    """Image files under ``root`` (a folder, or one file), sorted.

    Hidden files and folders (leading '.') are skipped; so are files whose suffix is not an image
    suffix unless they carry the DICOM preamble, and anything that is not a regular file (FIFOs,
    devices, sockets: never opened). Folders in ``exclude`` (e.g. the results folder), and those
    for which ``prune(path)`` is true, are not entered. ``glob`` (e.g. '*.png') restricts the names. Returns (paths, skipped) where skipped
    counts {'hidden': n, 'not_image': n, 'not_a_file': n}.
    """
    root = Path(root)
    skipped = {"hidden": 0, "not_image": 0, "not_a_file": 0}
    if root.is_file():
        return [root], skipped
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    excluded = {os.path.realpath(e) for e in exclude}
    found: list[Path] = []
    walker: Iterable = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)
                                                                          if not e.is_dir()])]
    for folder, dirs, files in walker:
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        skipped["hidden"] += len(hidden_dirs)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) not in excluded
                         and not (prune is not None and prune(os.path.join(folder, d))))
        for name in files:
            if name.startswith("."):
                skipped["hidden"] += 1
                continue
            path = Path(folder) / name
            if glob is not None and not path.match(glob):
                continue
            if not is_regular_file(path):
                skipped["not_a_file"] += 1
            elif path.suffix.lower() in SUFFIXES or is_dicom(path):
                found.append(path)
            else:
                skipped["not_image"] += 1
    return sorted(found), skipped
