"""Test helpers for the runtime / pipeline / infer / api tests: a tiny exported bundle and a
DICOM writer.

A resnet18 / stride 32 / 64 px HAM with random weights, exported through hamedge.model.graph and
written with hamedge.bundle.BundleWriter (what `hamedge export` does, minus INT8 and engines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hamedge.spec import ModelSpec

TINY_SPEC = ModelSpec(arch="resnet18", output_stride=32, input_size=64,
                      class_thresholds=(0.45,) * 14, anomaly_threshold=0.5)


def make_bundle(target: Path, spec: ModelSpec = TINY_SPEC, seed: int = 0, fold: bool = True,
                full_res: bool = False, int8: bool = False, int8_targets=("cpu",)) -> Path:
    """A tiny random-weight bundle; with ``int8`` the Q/DQ graphs named in ``int8_targets``:
    "cpu" (U8S8, model.int8.cpu.onnx) and/or "tensorrt" (symmetric S8S8, model.int8.onnx)."""
    import onnx

    from hamedge.bundle import BundleWriter
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.graph import export_onnx
    from hamedge.model.network import random_model

    model = random_model(spec, seed)
    exported = export_onnx(model, fold=fold, full_res=full_res, simplify=False)
    with BundleWriter(target, force=True) as writer:
        writer.write_bytes("model.onnx", exported.model.SerializeToString())
        if int8 and "cpu" in int8_targets:
            writer.write_bytes("model.int8.cpu.onnx", _quantize(exported.model, spec, fold))
        if int8 and "tensorrt" in int8_targets:
            writer.write_bytes("model.int8.onnx", _quantize(exported.model, spec, fold,
                                                            symmetric=True))
        save_checkpoint(model, spec, writer.path("weights.safetensors"))
        writer.write_spec(spec, exported.graph, {"test": "tiny random HAM", "seed": seed,
                                                 "checkpoint_sha256": f"seed{seed}"})
        writer.commit()
    del onnx
    return target


def _quantize(proto, spec: ModelSpec, fold: bool, symmetric: bool = False) -> bytes:
    """A U8S8 (or symmetric S8S8) Q/DQ graph from onnxruntime's quantiser, random calibration."""
    import tempfile

    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    channels = 1 if fold else spec.in_channels
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": rng.standard_normal((1, channels, spec.input_size,
                                                               spec.input_size)).astype(np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "m.onnx"), Path(tmp, "q.onnx")
        src.write_bytes(proto.SerializeToString())
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        extra_options={"ActivationSymmetric": True} if symmetric else {})
        return dst.read_bytes()


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
                sop_class: str | None = None, **tags) -> Path:
    """A DX For Presentation image (what the input gate accepts) unless ``sop_class`` says
    otherwise; ``tags`` set or override header elements (None deletes one)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "Test^Patient", "HAMEDGE-TEST-1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
