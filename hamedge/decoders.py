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
    uid.JPEGBaseline8Bit: ("python-gdcm", "pillow"),
    uid.JPEGExtended12Bit: ("python-gdcm",),
    uid.JPEGLossless: ("python-gdcm",),
    uid.JPEGLosslessSV1: ("python-gdcm",),
    uid.JPEGLSLossless: ("pyjpegls", "python-gdcm"),
    uid.JPEGLSNearLossless: ("pyjpegls", "python-gdcm"),
    uid.JPEG2000Lossless: ("pylibjpeg-openjpeg", "python-gdcm"),
    uid.JPEG2000: ("pylibjpeg-openjpeg", "python-gdcm"),
    uid.HTJ2KLossless: ("pylibjpeg-openjpeg",),
    uid.HTJ2KLosslessRPCL: ("pylibjpeg-openjpeg",),
    uid.HTJ2K: ("pylibjpeg-openjpeg",),
}

LICENCES = {
    "pydicom": "MIT", "python-gdcm": "BSD-3-Clause", "pylibjpeg": "MIT",
    "pylibjpeg-openjpeg": "MIT", "pylibjpeg-rle": "MIT", "pyjpegls": "BSD-3-Clause (CharLS)",
    "pillow": "MIT-CMU",
}

_PLUGIN_LABEL = "hamedge-gdcm12"
_lock = threading.Lock()
_installed = False

# pydicom plugin protocol (pydicom.pixels.common.CoderBase.add_plugin)
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(syntax: str) -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return syntax in DECODER_DEPENDENCIES


def _decode_jpeg12(src: bytes, runner) -> bytes:
    """One 12-bit JPEG Extended frame through GDCM (a pydicom decoding-plugin function)."""
    import gdcm

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
        from pydicom.pixels.decoders import JPEGExtended12BitDecoder

        if _PLUGIN_LABEL not in JPEGExtended12BitDecoder._available and \
                _PLUGIN_LABEL not in JPEGExtended12BitDecoder._unavailable:
            JPEGExtended12BitDecoder.add_plugin(_PLUGIN_LABEL, ("hamedge.decoders", "_decode_jpeg12"))
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
