"""The input gate: is a file a frontal chest radiograph that HAM may be run on? No torch.

HAM is trained on frontal chest radiographs only; on anything else it still answers, with
confident nonsense. The gate decides from the DICOM header alone (read with
``stop_before_pixels``), before any pixel is decoded. One definition, used by ``hamedge infer``
(hamedge.pipeline) and by ``hamedge.load(...).predict`` (hamedge.api).

DICOM rules, checked in this order; the first one broken is the refusal's reason:
1. SOP Class: Computed Radiography or Digital X-Ray (For Presentation) Image Storage; Secondary
   Capture (single-frame, or the grayscale multi-frame classes) only when asked for.
   Segmentation, SR, RT, presentation states, waveforms, CT, MR, US, mammography ... are refused.
2. Modality CR or DX.
3. Presentation Intent Type FOR PRESENTATION where present (FOR PROCESSING is raw detector data,
   before the vendor's processing that every training image went through).
4. Photometric Interpretation MONOCHROME1 or MONOCHROME2 (absent: no image pixel module, which
   the reader reports as an error).
5. One frame. A CR or DX image is a single frame by definition; a multi-frame object with these
   tags is something else (a tomosynthesis or cine series, a stack of exposures), and guessing
   which frame is the radiograph would hide that, so it is refused.
6. Body Part Examined CHEST where present.
7. View Position PA or AP where present (laterals and other views are refused).

Files without tags (PNG, JPEG, TIFF, BMP) carry no header to check: their verdict is "untagged".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import uid

from hamedge.errors import DataError, InputRefused

ACCEPTED = "accepted"
REFUSED = "refused"
OFF = "off"  # the gate was turned off (accept_any)
UNTAGGED = "untagged"  # no DICOM header to decide from

RADIOGRAPH_CLASSES = frozenset({
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
})
SECONDARY_CAPTURE_CLASSES = frozenset({
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
})
MODALITIES = ("CR", "DX")
BODY_PARTS = ("CHEST",)
VIEW_POSITIONS = ("PA", "AP")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
FOR_PRESENTATION = "FOR PRESENTATION"

# the header elements the rules read; each verdict records their values
TAGS = ("SOPClassUID", "Modality", "PresentationIntentType", "PhotometricInterpretation",
        "NumberOfFrames", "BodyPartExamined", "ViewPosition")


@dataclass(frozen=True)
class GateSettings:
    """``accept_any`` turns the gate off (research use); ``accept_secondary_capture`` lets
    Secondary Capture objects through the SOP class rule (every other rule still applies)."""

    accept_any: bool = False
    accept_secondary_capture: bool = False

    def to_dict(self) -> dict[str, Any]:
        """What a run records about its gate (results manifest): the switches and the rules."""
        return {
            "enabled": self.enabled,
            "accept_secondary_capture": self.accept_secondary_capture,
            "dicom": {
                "sop_classes": sorted(str(c) for c in self.sop_classes),
                "modalities": list(MODALITIES),
                "presentation_intent": FOR_PRESENTATION,
                "photometric": list(PHOTOMETRICS),
                "frames": 1,
                "body_parts": list(BODY_PARTS),
                "view_positions": list(VIEW_POSITIONS),
            },
        }

    @property
    def enabled(self) -> bool:
        return not self.accept_any

    @property
    def sop_classes(self) -> frozenset:
        return RADIOGRAPH_CLASSES | (SECONDARY_CAPTURE_CLASSES if self.accept_secondary_capture
                                     else frozenset())


@dataclass(frozen=True)
class Verdict:
    verdict: str  # ACCEPTED | REFUSED | OFF | UNTAGGED
    reason: str = ""  # one line, for a refusal
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.verdict == REFUSED

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"verdict": self.verdict, "tags": dict(self.tags)}
        if self.reason:
            data["reason"] = self.reason
        return data


def is_dicom_path(path: str | os.PathLike) -> bool:
    """The file is read as DICOM (the same test hamedge.io.read_image applies)."""
    from hamedge.io import DICOM_SUFFIXES, is_dicom

    return is_dicom(path) or Path(path).suffix.lower() in DICOM_SUFFIXES


def read_header(path: str | os.PathLike):
    """The DICOM header of ``path`` without its pixel data (pydicom Dataset), or None for a file
    that is not DICOM. An unreadable header is a DataError (an error row, not a refusal)."""
    if not Path(path).is_file() or not is_dicom_path(path):  # never open a FIFO or device:
        return None  # the reader reports what it is
    import zlib

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError,
            TypeError, IndexError, zlib.error) as exc:  # zlib: a corrupt deflated data set
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a readable DICOM header ({text[:200]})") from None


UNREADABLE = "<unreadable>"  # the recorded value of an element pydicom cannot parse


def _text(header, keyword: str) -> str | None:
    """A header value as one upper-case string, None when absent or empty."""
    try:
        value = header.get(keyword)
    except Exception:  # a malformed element (wrong VR, bad bytes) counts as unreadable text
        return UNREADABLE
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    text = " ".join(str(value).split()).upper()
    return text or None


def _tags(header) -> dict[str, Any]:
    tags: dict[str, Any] = {keyword: _text(header, keyword) for keyword in TAGS}
    sop = tags["SOPClassUID"]
    if sop and sop != UNREADABLE:
        tags["SOPClassName"] = uid.UID(sop).name
    return tags


def decide(header, settings: GateSettings = GateSettings()) -> Verdict:
    """The verdict for one DICOM header (None: a file without tags)."""
    if header is None:
        return Verdict(UNTAGGED)
    tags = _tags(header)
    if settings.accept_any:
        return Verdict(OFF, tags=tags)
    reason = _first_broken_rule(tags, settings)
    return Verdict(REFUSED, reason, tags) if reason else Verdict(ACCEPTED, tags=tags)


def _first_broken_rule(tags: dict[str, Any], settings: GateSettings) -> str:
    sop = tags.get("SOPClassUID")
    if not sop:
        return "no SOP Class UID in the DICOM header: not an identifiable image"
    if sop == UNREADABLE:
        return "the SOP Class UID in the DICOM header is malformed: not an identifiable image"
    name = tags["SOPClassName"]
    if sop not in settings.sop_classes:
        if sop == uid.DigitalXRayImageStorageForProcessing:
            return f"{name}: raw detector data, not a processed radiograph"
        if sop in SECONDARY_CAPTURE_CLASSES:
            return f"{name}: accepted only with --accept-secondary-capture"
        return f"{name} is not a CR or DX radiograph"
    modality = tags.get("Modality")
    if modality not in MODALITIES:
        return f"Modality {modality or 'absent'}, not CR or DX"
    intent = tags.get("PresentationIntentType")
    if intent is not None and intent != FOR_PRESENTATION:
        return f"Presentation Intent {intent}: raw detector data, not a processed radiograph"
    photometric = tags.get("PhotometricInterpretation")
    if photometric is not None and photometric not in PHOTOMETRICS:
        return f"Photometric Interpretation {photometric}, not MONOCHROME1/2"
    frames = tags.get("NumberOfFrames")
    if frames is not None:
        try:
            count = int(frames)
        except ValueError:
            return f"Number of Frames {frames!r} is not a number"
        if count != 1:
            return f"multi-frame object ({count} frames): a radiograph is one frame"
    body_part = tags.get("BodyPartExamined")
    if body_part is not None and body_part not in BODY_PARTS:
        return f"Body Part Examined {body_part}, not CHEST"
    view = tags.get("ViewPosition")
    if view is not None and view not in VIEW_POSITIONS:
        return f"View Position {view}, not a frontal view (PA or AP)"
    return ""


def check_file(path: str | os.PathLike, settings: GateSettings = GateSettings()) -> tuple[Verdict, Any]:
    """(verdict, header) for one file; header is None for a file without tags."""
    header = read_header(path)
    return decide(header, settings), header


def blank_reason(image) -> str:
    """The gate's one rule on pixels, for every input: an image whose pixels all have one value
    (a black or gray frame, a failed export) holds no radiograph. '' when it has contrast."""
    import numpy as np

    if image.size and float(np.max(image)) == float(np.min(image)):
        return f"blank image (every pixel has the value {float(np.min(image)):g})"
    return ""


def refuse(what, reason: str) -> InputRefused:
    """The one-line error the Python API raises for a refused input (a path, or 'array')."""
    return InputRefused(f"{what}: refused by the input gate: {reason} "
                        "(accept_any=True runs it anyway, for research)")
