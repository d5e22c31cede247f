"""DICOM pixel decoders: which package decodes which transfer syntax. No torch.

hamedge relies on pydicom's pixel-data plugins, installed with the slim runtime (all have
manylinux wheels for x86_64 and aarch64, Python 3.10 and 3.11):

- python-gdcm (BSD): JPEG baseline/extended/lossless (process 14, SV1), JPEG-LS, JPEG 2000.
  The only non-GPL decoder pydicom can use for JPEG Lossless and 12-bit JPEG Extended
  (pylibjpeg-libjpeg is GPLv3 and not used).
- pylibjpeg + pylibjpeg-openjpeg (MIT): JPEG 2000 and HTJ2K (HTJ2K has no other decoder).
- pylibjpeg-rle (MIT): RLE Lossless, faster than pydicom's numpy decoder.
- pyjpegls (CharLS, BSD): JPEG-LS, a second decoder beside GDCM (GDCM mishandles some
  bit depths) and the JPEG-LS encoder.

pydicom refuses GDCM for 12-bit JPEG Extended although GDCM decodes it correctly (it first
tries its 8-bit codec, then retries with the 12-bit one); `_decode_jpeg12` registers that path
as a plugin of our own, tried after pydicom's.

GDCM crashes the process (a segmentation fault, found by the mutation fuzzer) when a frame's
own header disagrees with the DICOM header it is given (it sizes its buffer from DICOM, decodes
by the frame). So GDCM is always tried last, and only on a frame whose JPEG / JPEG-LS / JPEG 2000
header matches the DICOM Rows, Columns, Samples per Pixel and bit depth (`_frame_fits`).
"""

from __future__ import annotations

import threading

from pydicom import uid

# Transfer syntax -> the packages (pip names) that decode it, in the order pydicom tries them.
NATIVE = ("pydicom",)
SYNTAX_PACKAGES: dict[str, tuple[str, ...]] = {
    uid.ImplicitVRLittleEndian: NATIVE,
    uid.ExplicitVRLittleEndian: NATIVE,
    uid.DeflatedExplicitVRLittleEndian: NATIVE,
    uid.ExplicitVRBigEndian: NATIVE,
    uid.RLELossless: ("pylibjpeg-rle", "pydicom"),
    uid.JPEGBaseline8Bit: ("pillow", "python-gdcm"),
    uid.JPEGExtended12Bit: ("python-gdcm",),
    uid.JPEGLossless: ("python-gdcm",),
    uid.JPEGLosslessSV1: ("python-gdcm",),
    uid.JPEGLSLossless: ("pyjpegls", "python-gdcm"),
    uid.JPEGLSNearLossless: ("pyjpegls", "python-gdcm"),  # pyjpegls first: GDCM fails some depths
    uid.JPEG2000Lossless: ("pylibjpeg-openjpeg", "python-gdcm"),
    uid.JPEG2000: ("pylibjpeg-openjpeg", "python-gdcm"),
    uid.HTJ2KLossless: ("pylibjpeg-openjpeg",),
    uid.HTJ2KLosslessRPCL: ("pylibjpeg-openjpeg",),
    uid.HTJ2K: ("pylibjpeg-openjpeg",),
}

# The JPEG 2000 family: one codestream syntax, so a frame can also be decoded at reduced
# resolution (hamedge.io, through Pillow's OpenJPEG).
JPEG2000_SYNTAXES = frozenset({uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless,
                               uid.HTJ2KLosslessRPCL, uid.HTJ2K})

LICENCES = {
    "pydicom": "MIT", "python-gdcm": "BSD-3-Clause", "pylibjpeg": "MIT",
    "pylibjpeg-openjpeg": "MIT", "pylibjpeg-rle": "MIT", "pyjpegls": "BSD-3-Clause (CharLS)",
    "pillow": "MIT-CMU",
}

_PLUGIN_LABEL = "hamedge-gdcm12"
_lock = threading.Lock()
_installed = False

# pydicom plugin protocol (pydicom.pixels.common.CoderBase.add_plugin)
_GDCM_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
                  uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000)
DECODER_DEPENDENCIES = {syntax: ("gdcm>=3.0.10",) for syntax in _GDCM_SYNTAXES}
DECODER_DEPENDENCIES[uid.RLELossless] = ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")
_CHECKED_LABEL = "gdcm-checked"
_RLE_LABEL = "pylibjpeg-rle-guarded"


def is_available(syntax: str) -> bool:
    import importlib.util

    if syntax == uid.RLELossless:
        return importlib.util.find_spec("rle") is not None and importlib.util.find_spec("pylibjpeg") is not None
    return syntax in _GDCM_SYNTAXES and importlib.util.find_spec("gdcm") is not None


def _rle_guarded(src: bytes, runner) -> bytes:
    """pylibjpeg-rle, whose Rust core panics on some corrupt segments with a PanicException that
    is not an Exception (pydicom would not fall back): turned into a ValueError, so pydicom's own
    RLE decoder gets its turn."""
    from pydicom.pixels.decoders.pylibjpeg import _decode_frame

    try:
        return _decode_frame(src, runner)
    except Exception:
        raise
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"pylibjpeg-rle failed: {str(exc).splitlines()[0][:120]}") from None


def _jpeg_frame(src: bytes) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) from a JPEG / JPEG-LS frame's SOF segment."""
    if src[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(src):
        if src[pos] != 0xFF:
            return None
        marker = src[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(src[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(src) or marker == 0xDA:  # SOS before any SOF
            return None
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            seg = src[pos + 4:pos + 2 + length]
            if len(seg) < 6:
                return None
            return seg[0], int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
        pos += 2 + length
    return None


def _j2k_frame(src: bytes) -> tuple[int, int, int, int] | None:
    """(max precision, height, width, components) from a JPEG 2000 codestream's SIZ segment."""
    import io

    from hamedge import jpeg2000

    header = jpeg2000.read_header(io.BytesIO(src))  # a bare codestream, or one in a JP2 file
    if header is None:
        return None
    return max(header.precisions), header.height, header.width, header.components


def _frame_fits(src: bytes, runner) -> None:
    """Raise unless the frame's own header matches the DICOM header (GDCM's precondition)."""
    syntax = runner.transfer_syntax
    frame = _j2k_frame(src) if syntax in (uid.JPEG2000Lossless, uid.JPEG2000) else _jpeg_frame(src)
    if frame is None:
        raise ValueError("the frame has no readable JPEG header")
    precision, height, width, components = frame
    allocated = 8 if precision <= 8 else 16 if precision <= 16 else 32
    if (height, width) != (runner.rows, runner.columns) or components != runner.samples_per_pixel \
            or runner.bits_allocated != allocated:
        raise ValueError(f"the frame's header ({width}x{height}, {components} component(s), "
                         f"{precision} bit) does not match the DICOM header ({runner.columns}x"
                         f"{runner.rows}, {runner.samples_per_pixel}, {runner.bits_allocated} bit)")


def _gdcm_checked(src: bytes, runner) -> bytes:
    """pydicom's GDCM plugin, on frames that pass `_frame_fits` only."""
    from pydicom.pixels.decoders.gdcm import _decode_frame

    _frame_fits(src, runner)
    return _decode_frame(src, runner)


def _decode_jpeg12(src: bytes, runner) -> bytes:
    """One 12-bit JPEG Extended frame through GDCM (a pydicom decoding-plugin function)."""
    import gdcm

    _frame_fits(src, runner)

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(uid.JPEGExtended12Bit))))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(runner.samples_per_pixel, runner.bits_allocated, bits,
                                          bits - 1, runner.pixel_representation))
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM gives char* as str
    expected = runner.rows * runner.columns * runner.samples_per_pixel * (runner.bits_allocated // 8)
    if len(frame) < expected:
        raise ValueError("GDCM could not decode the 12-bit JPEG frame")
    return frame


def install() -> None:
    """Register our plugins with pydicom once (pydicom's add_plugin is not thread-safe)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from pydicom.pixels import get_decoder

        for syntax in _GDCM_SYNTAXES:  # GDCM last, behind its header check
            decoder = get_decoder(syntax)
            known = set(decoder._available) | set(decoder._unavailable)
            if "gdcm" in known:
                decoder.remove_plugin("gdcm")
            if _CHECKED_LABEL not in known:
                decoder.add_plugin(_CHECKED_LABEL, ("hamedge.decoders", "_gdcm_checked"))
            if syntax == uid.JPEGExtended12Bit and _PLUGIN_LABEL not in known:
                decoder.add_plugin(_PLUGIN_LABEL, ("hamedge.decoders", "_decode_jpeg12"))
        rle = get_decoder(uid.RLELossless)
        known = set(rle._available) | set(rle._unavailable)
        if _RLE_LABEL not in known:  # first, pydicom's numpy decoder behind it
            if "pylibjpeg" in known:
                rle.remove_plugin("pylibjpeg")
            native = rle._available.pop("pydicom", None)
            rle.add_plugin(_RLE_LABEL, ("hamedge.decoders", "_rle_guarded"))
            if native is not None:
                rle._available["pydicom"] = native
        _installed = True


def missing_hint(syntax) -> str:
    """What to install for a syntax that has no working decoder here."""
    packages = SYNTAX_PACKAGES.get(str(syntax))
    name = getattr(syntax, "name", str(syntax))
    if packages is None:
        return f"{name} ({syntax}) is not a transfer syntax hamedge decodes (no still-image decoder exists for it)"
    return f"no decoder for {name} ({syntax}) is installed here: pip install {' '.join(packages[:1])}"


def report() -> list[dict]:
    """For `hamedge doctor`: each promised syntax with the pydicom plugins available for it."""
    from pydicom.pixels import get_decoder

    install()
    rows = []
    for syntax, packages in SYNTAX_PACKAGES.items():
        decoder = get_decoder(syntax)
        native = not syntax.is_compressed or syntax == uid.DeflatedExplicitVRLittleEndian
        plugins = ["pydicom"] if native else list(decoder.available_plugins)
        rows.append({"syntax": syntax.name, "uid": str(syntax), "plugins": plugins,
                     "packages": list(packages), "ok": bool(plugins)})
    return rows


def package_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in LICENCES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out
