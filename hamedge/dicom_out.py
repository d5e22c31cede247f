"""Results a PACS stores and a viewer shows, for DICOM inputs: a Structured Report and a
Secondary Capture of the heatmap overlay, made with highdicom. No torch.

For each source image (its header, without pixels, as hamedge.gate read it):

- ``<stem>.sr.dcm``: Comprehensive SR holding a TID 1500 Imaging Measurement Report. Observer:
  the device hamedge (AI; manufacturer, model name, software version, and the bundle's sha256 as
  device serial number and algorithm parameter). One measurement group per finding and one for
  "anomaly", each with the model's probability and, for the findings called positive, a
  qualitative evaluation; one planar-ROI group per box of a positive map, as a closed POLYLINE
  rectangle (SCOORD) on the source image.
- ``<stem>.overlay.dcm``: Secondary Capture (RGB) of the source image with the anomaly heatmap
  blended on top (hamedge.heatmap.overlay), referencing the source in its Source Image Sequence.

Both copy the source's patient and study modules (same Study Instance UID) and start new series.
UIDs are derived from the source instance and the bundle's identity, so running the same model on
the same image again gives the same UIDs (a PACS replaces rather than duplicates). Files are
written atomically (hamedge.fsutil).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from hamedge.errors import HamedgeError
from hamedge.fsutil import write_bytes

MANUFACTURER = "hamedge"
SCHEME = "99HAMEDGE"  # private coding scheme ("99" prefix, PS3.16 8.2) for the model's labels
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SUFFIX = ".sr.dcm"
SC_SUFFIX = ".overlay.dcm"


@dataclass(frozen=True)
class Device:
    """Who made the results: the AI device identification written into every object."""

    model_name: str  # e.g. "HAM resnet18"
    bundle_sha256: str  # identity of the model bundle (hamedge.pipeline.model_id)
    software_version: str = ""  # default: the installed hamedge's version

    def __post_init__(self) -> None:
        if not self.software_version:
            import importlib.metadata as md

            try:
                version = md.version("hamedge")
            except md.PackageNotFoundError:
                version = "unknown"
            object.__setattr__(self, "software_version", version)

    @property
    def uid(self) -> str:
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=["hamedge-device", self.bundle_sha256])


def require_highdicom():
    try:
        import highdicom
    except ImportError:
        raise HamedgeError("--dicom-out needs highdicom (pip install highdicom)") from None
    # highdicom warns (through the warnings module) about dubious values it copies from the
    # source header, such as a one-component person name; they are the source's, not ours, and
    # must not reach the terminal. A filter set once (catch_warnings is not thread-safe).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\.")
    return highdicom


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _code(label: str):
    """The model's own label as a code of the private scheme (its meaning is the label)."""
    import highdicom as hd

    return hd.sr.CodedConcept(label, SCHEME, label[:64])


def _algorithm(device: Device):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(
        name=f"hamedge {device.model_name}"[:64], version=device.software_version,
        parameters=[f"bundle sha256 {device.bundle_sha256}"], manufacturer=MANUFACTURER)


# Type 2 elements of the Patient and General Study modules: highdicom copies them from the source
# and needs them present; a source that omits them gets them empty ("unknown"), as PS3.3 allows.
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                        "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _reference(source):
    """A copy of the source header that highdicom can build from."""
    import copy

    ds = copy.deepcopy(source)
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _rectangle(box) -> np.ndarray:
    """A box (x, y, w, h in whole pixels) as a closed polyline of SCOORD image coordinates:
    column/row, with (0, 0) the top-left corner of the top-left pixel (PS3.3 C.18.6.1.2)."""
    x0, y0, x1, y1 = float(box.x), float(box.y), float(box.x + box.w), float(box.y + box.h)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def build_sr(source, pred, device: Device):
    """A highdicom ComprehensiveSR (TID 1500) of one prediction on ``source`` (a header)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _reference(source)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid, name="hamedge", manufacturer_name=MANUFACTURER,
            model_name=device.model_name[:64], serial_number=device.bundle_sha256[:64]))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    algorithm = _algorithm(device)
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    instance = str(source.SOPInstanceUID)
    groups: list = []

    def probability(value: float):
        return hd.sr.Measurement(name=codes.DCM.Probability, value=float(value),
                                 unit=codes.UCUM.NoUnits)

    scores = [("anomaly", pred.anomaly, pred.anomalous)] + [
        (name, pred.probabilities[name], name in pred.findings) for name in pred.probabilities]
    for name, value, positive in scores:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(instance, device.bundle_sha256,
                                                                 "score", name),
                                                         identifier=f"{name} score"[:64]),
            finding_type=_code(name), algorithm_id=algorithm, source_images=[source_image],
            measurements=[probability(value)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                _code(name), codes.SCT.Present if positive else codes.SCT.Absent)]))
    for name in pred.positive:
        for number, box in enumerate(pred.boxes(name), 1):
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_rectangle(box),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source))
            value = pred.anomaly if name == "anomaly" else pred.probabilities[name]
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid(instance, device.bundle_sha256, "box", name, number),
                    identifier=f"{name} region {number}"[:64]),
                referenced_region=region, finding_type=_code(name), algorithm_id=algorithm,
                measurements=[probability(value)]))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.SCT.ChestImaging,
                                     imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0],
        series_instance_uid=_uid(getattr(source, "SeriesInstanceUID", instance),
                                 device.bundle_sha256, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(instance, device.bundle_sha256, "sr"),
        instance_number=int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    _identify(sr, device, "AI findings (hamedge, not verified)")
    return sr


def build_overlay(source, pred, image: np.ndarray, device: Device, colormap: str = "jet"):
    """A highdicom SCImage: the source image with the anomaly heatmap blended on, RGB 8-bit."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    from hamedge.heatmap import overlay

    pixels = overlay(image, pred.heatmap("anomaly", size="image"), colormap)
    source = _reference(source)
    instance = str(source.SOPInstanceUID)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=_uid(getattr(source, "SeriesInstanceUID", instance),
                                 device.bundle_sha256, "overlay-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid(instance, device.bundle_sha256, "overlay"),
        instance_number=int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer=MANUFACTURER,
        # highdicom wants an orientation from its enumerations; the overlay has the source's
        # pixel grid, so the source's value (verbatim, or empty when unknown) replaces it below
        patient_orientation=("L", "F"))
    sc.PatientOrientation = source.get("PatientOrientation") or None
    sc.Laterality = source.get("Laterality") or None  # type 2C in General Series: empty if unknown
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("hamedge anomaly heatmap blended over the source image "
                                "(AI output, not verified)")
    sc.BurnedInAnnotation = "NO"
    _identify(sc, device, "AI anomaly heatmap overlay (hamedge)")
    return sc


def _identify(ds, device: Device, description: str) -> None:
    """General Equipment and series description: what made this object."""
    ds.ManufacturerModelName = device.model_name[:64]
    ds.SoftwareVersions = f"hamedge {device.software_version}"[:64]
    ds.DeviceSerialNumber = device.bundle_sha256[:64]
    ds.SeriesDescription = description[:64]


def _encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_results(out_dir: str | os.PathLike, stem: str, source, pred, image: np.ndarray,
                  device: Device, colormap: str = "jet") -> dict[str, str]:
    """Write ``<stem>.sr.dcm`` and ``<stem>.overlay.dcm`` under ``out_dir`` (atomically);
    returns their paths."""
    require_highdicom()
    out = Path(out_dir)
    sr_path, sc_path = out / (stem + SR_SUFFIX), out / (stem + SC_SUFFIX)
    write_bytes(sr_path, _encode(build_sr(source, pred, device)))
    write_bytes(sc_path, _encode(build_overlay(source, pred, image, device, colormap)))
    return {"sr": str(sr_path), "overlay": str(sc_path)}

