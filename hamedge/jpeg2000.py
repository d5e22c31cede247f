"""JPEG 2000 codestream headers, read without decoding: size, precision, decomposition levels,
and how far a decode may be reduced. No torch, no decoder.

A JPEG 2000 codestream stores each image as a wavelet pyramid: a decoder asked to drop ``r``
resolution levels (OpenJPEG's ``cp_reduce``, Pillow's ``Jpeg2KImageFile.reduce``) does a
fraction of the work and returns the image at 1/2**r of its size. It cannot drop more levels
than the codestream's coding style (COD, per component COC) declares. Reads both a bare
codestream (.j2k, DICOM pixel data) and the JP2/JPX file format (the codestream in a 'jp2c' box).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOC, SIZ, COD, COC, SOT, EOC = 0xFF4F, 0xFF51, 0xFF52, 0xFF53, 0xFF90, 0xFFD9
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_MAX_HEADER_BYTES = 1 << 20  # a main header (markers before the first tile) larger than this is not read
_MAX_BOXES = 64


@dataclass(frozen=True)
class Header:
    width: int  # image area, Xsiz - XOsiz
    height: int
    x0: int  # image offset on the reference grid (XOsiz, YOsiz)
    y0: int
    precisions: tuple[int, ...]  # bits per component
    signed: tuple[bool, ...]
    subsampled: bool  # a component with XRsiz or YRsiz other than 1
    levels: int  # fewest decomposition levels the main header's COD / COC give any component

    @property
    def components(self) -> int:
        return len(self.precisions)


def is_jpeg2000(head: bytes) -> bool:
    """True when the first bytes are a codestream's SOC + SIZ or the JP2 signature box."""
    return head[:4] == b"\xff\x4f\xff\x51" or head[:12] == JP2_SIGNATURE


def read_header(stream) -> Header | None:
    """The main header of the codestream ``stream`` (a binary file object, read from its current
    position) holds, or None when it is not JPEG 2000 or the header is malformed."""
    try:
        start = stream.read(12)
        if start == JP2_SIGNATURE:
            if not _seek_to_codestream(stream):
                return None
            start = stream.read(2)
        elif start[:2] == b"\xff\x4f":
            stream.seek(2 - len(start), 1)
            start = start[:2]
        if start[:2] != b"\xff\x4f":
            return None
        return _main_header(stream)
    except (OSError, ValueError, struct.error):
        return None


def _seek_to_codestream(stream) -> bool:
    """Walk the JP2 file's top-level boxes (after the signature) to the contiguous codestream."""
    for _ in range(_MAX_BOXES):
        head = stream.read(8)
        if len(head) < 8:
            return False
        length, kind = struct.unpack(">I4s", head)
        header_bytes = 8
        if length == 1:  # the XLBox holds the length
            extended = stream.read(8)
            if len(extended) < 8:
                return False
            length, header_bytes = struct.unpack(">Q", extended)[0], 16
        if kind == b"jp2c":
            return True
        if length == 0 or length < header_bytes:  # 0: the box runs to the end of the file
            return False
        stream.seek(length - header_bytes, 1)
    return False


def _main_header(stream) -> Header | None:
    """Markers from after SOC up to the first tile-part (SOT)."""
    size = None
    levels: list[int] = []
    read = 0
    while read < _MAX_HEADER_BYTES:
        marker_bytes = stream.read(2)
        if len(marker_bytes) < 2 or marker_bytes[0] != 0xFF:
            return None
        marker = int.from_bytes(marker_bytes, "big")
        if marker in (SOT, EOC):
            break
        length_bytes = stream.read(2)
        if len(length_bytes) < 2:
            return None
        length = int.from_bytes(length_bytes, "big")
        segment = stream.read(length - 2) if length >= 2 else b""
        if length < 2 or len(segment) < length - 2:
            return None
        read += 2 + length
        if marker == SIZ:
            size = _siz(segment)
            if size is None:
                return None
        elif marker == COD and size is not None and len(segment) >= 6:
            levels.append(segment[5])  # Scod, progression, layers (2), MCT, then the levels
        elif marker == COC and size is not None:
            index_bytes = 2 if len(size[4]) >= 257 else 1
            if len(segment) >= index_bytes + 2:
                levels.append(segment[index_bytes + 1])
    else:
        return None
    if size is None:
        return None
    width, height, x0, y0, components = size
    return Header(width=width, height=height, x0=x0, y0=y0,
                  precisions=tuple((c[0] & 0x7F) + 1 for c in components),
                  signed=tuple(bool(c[0] & 0x80) for c in components),
                  subsampled=any(c[1] != 1 or c[2] != 1 for c in components),
                  levels=min(levels) if levels else 0)


def _siz(segment: bytes):
    if len(segment) < 36:
        return None
    _, xsiz, ysiz, xo, yo, _, _, _, _, count = struct.unpack_from(">HIIIIIIIIH", segment)
    if count < 1 or len(segment) < 36 + 3 * count or xsiz <= xo or ysiz <= yo:
        return None
    components = [tuple(segment[36 + 3 * i:39 + 3 * i]) for i in range(count)]
    return xsiz - xo, ysiz - yo, xo, yo, components


def reduced_side(side: int, reduction: int) -> int:
    """A side's length after dropping ``reduction`` levels (ISO 15444-1 B.5, image at the origin)."""
    return -(-side // (1 << reduction))


def reduction(header: Header, reduce_to: int) -> int:
    """The most resolution levels a decode may drop keeping both sides at least ``reduce_to``:
    never more than the codestream's decomposition levels; 0 for an image off the grid origin or
    with subsampled components. Pillow sizes a reduced image by rounding (size + 2**(r-1)) / 2**r
    and refuses tiles outside that size, while OpenJPEG's size is the ceiling: only reductions
    where the two agree are used."""
    if header.x0 or header.y0 or header.subsampled:
        return 0
    for r in range(header.levels, 0, -1):
        sides = (header.width, header.height)
        if all(reduced_side(s, r) >= reduce_to and reduced_side(s, r) == (s + (1 << (r - 1))) >> r
               for s in sides):
            return r
    return 0
