"""INT8 Q/DQ graphs from ONE calibration pass (ONNX Runtime's quantiser). No torch.

One graph per target (hamedge.bundle.INT8_GRAPHS), written from the same tensor ranges:
- "tensorrt" (model.int8.onnx): int8 activations and weights, both symmetric (zero points 0),
  per-channel weights, no int32 bias quantisation: what TensorRT 8.5/10/11 builds.
- "cpu" (model.int8.cpu.onnx): uint8 asymmetric activations, int8 symmetric per-channel weights,
  int32 biases: the U8S8 layout ONNX Runtime fuses into fast integer kernels on x86 (there the
  symmetric graph runs slower than fp32, this one about 1.6x faster: benchmarks/export_bench.py).
Only Conv/MatMul/Gemm are quantised; every node of the float tail (names under
hamedge.bundle.FLOAT_TAIL_PREFIX: LSE pooling, sigmoids, CAM projection, refinement) is excluded.
The ranges are ONNX Runtime's calibration cache (JSON); its sha256 keys calibration.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hamedge.bundle import FLOAT_TAIL_PREFIX, TARGETS
from hamedge.errors import HamedgeError
from hamedge.fsutil import sha256_file

QUANT_OPS = ("Conv", "MatMul", "Gemm")
METHODS = ("max", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999


class QuantizationError(HamedgeError):
    """Calibration or quantisation could not produce a valid graph."""


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise QuantizationError(f"unknown calibration method {name!r}; one of {', '.join(METHODS)}")
    return table[name]


def _reader(batches: Iterable[np.ndarray], input_name: str):
    """A CalibrationDataReader over ``batches`` that supports ONNX Runtime's strided collection
    (``__len__`` + ``set_range``), so activations are gathered one batch at a time: the
    calibrators otherwise hold every intermediate tensor of every image in memory at once (GBs
    per image for resnet50 / stride 8 / 512 px)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = [{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
            self.set_range(0, len(self._items))

        def __len__(self) -> int:
            return len(self._items)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(self._items[start_index:end_index])

        def get_next(self):
            return next(self._it, None)

    return _Reader()


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantiser logs 'consider pre-processing' warnings on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def tail_nodes(model) -> list[str]:
    """Names of the nodes kept in floating point (the exporter's /head/ scope)."""
    return [n.name for n in model.graph.node if n.name.startswith(FLOAT_TAIL_PREFIX)]


def quantizable_nodes(model, exclude: Sequence[str] = ()) -> list[str]:
    """Nodes the quantiser may touch: Conv/MatMul/Gemm outside the float tail and ``exclude``."""
    skip = set(exclude)
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS
            and not n.name.startswith(FLOAT_TAIL_PREFIX) and n.name not in skip]


def _options(target: str) -> tuple[Any, Any, dict[str, Any]]:
    from onnxruntime.quantization import QuantType

    if target == "tensorrt":
        return QuantType.QInt8, QuantType.QInt8, {
            "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if target == "cpu":
        return QuantType.QUInt8, QuantType.QInt8, {
            "ActivationSymmetric": False, "WeightSymmetric": True}
    raise QuantizationError(f"unknown INT8 target {target!r}; one of {', '.join(TARGETS)}")


def calibrate(fp32_path: str | os.PathLike, batches: Iterable[np.ndarray], ranges_path: str | os.PathLike,
              method: str = "max", percentile: float = DEFAULT_PERCENTILE,
              input_name: str = "image") -> str:
    """Run the calibration pass once and store the tensor ranges (ONNX Runtime's calibration cache
    JSON) at ``ranges_path``; returns its sha256. Also writes nothing else."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    ranges_path = Path(ranges_path)
    if ranges_path.exists():
        ranges_path.unlink()  # never reuse ranges silently
    act, weight, extra = _options("tensorrt")
    # CalibStridedMinMax (despite its name: any method) collects one reader item at a time.
    # Asymmetric ranges for every method (ORT's percentile calibrator defaults to symmetric):
    # the "cpu" graph uses them as they are, the "tensorrt" graph symmetrises them.
    extra = dict(extra, CalibPercentile=percentile, CalibStridedMinMax=1,
                 CalibTensorRangeSymmetric=False)
    with tempfile.TemporaryDirectory(prefix="hamedge-calib-") as tmp, _quiet():
        # quantize_static computes the ranges, writes the cache, and a throwaway graph
        quantize_static(str(fp32_path), str(Path(tmp) / "throwaway.onnx"),
                        _reader(batches, input_name), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANT_OPS), per_channel=True,
                        activation_type=act, weight_type=weight, calibrate_method=_method(method),
                        extra_options=extra, calibration_cache_path=str(ranges_path))
    if not ranges_path.is_file():
        raise QuantizationError("ONNX Runtime wrote no calibration ranges")
    return sha256_file(ranges_path)


def quantize(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
             ranges_path: str | os.PathLike, target: str, method: str = "max",
             exclude: Sequence[str] = ()) -> list[str]:
    """Write the ``target``'s Q/DQ graph from stored ranges (no new calibration). Returns the names of
    the nodes left in floating point (tail + ``exclude``)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    model = onnx.load(str(fp32_path))
    keep_float = tail_nodes(model) + [n for n in exclude if not n.startswith(FLOAT_TAIL_PREFIX)]
    act, weight, extra = _options(target)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with _quiet():
        quantize_static(str(fp32_path), str(tmp), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANT_OPS), per_channel=True,
                        activation_type=act, weight_type=weight, nodes_to_exclude=keep_float,
                        calibrate_method=_method(method), extra_options=extra,
                        calibration_cache_path=str(ranges_path))
    os.replace(tmp, out_path)  # whole file or nothing
    return keep_float


def qdq_problems(model, target: str = "tensorrt") -> list[str]:
    """What in a Q/DQ graph breaks its target's constraints (empty: fine).

    tensorrt: every zero point int8 and 0, no int32 (bias) DequantizeLinear, no Q/DQ node in the
    float tail. cpu: activations uint8, weights int8 with zero point 0."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    problems = []
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("graph has no Q/DQ nodes")
    for node in qdq:
        if node.name.startswith(FLOAT_TAIL_PREFIX):
            problems.append(f"{node.name}: Q/DQ inside the float tail")
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: zero point missing or not a constant")
            continue
        zp = inits[node.input[2]]
        values = numpy_helper.to_array(zp)
        if target == "tensorrt":
            if zp.data_type != TensorProto.INT8:
                problems.append(f"{node.name}: zero point type "
                                f"{TensorProto.DataType.Name(zp.data_type)}, TensorRT needs INT8")
            elif np.any(values != 0):
                problems.append(f"{node.name}: non-zero zero point (TensorRT needs symmetric)")
        elif target == "cpu" and zp.data_type == TensorProto.INT8 and np.any(values != 0):
            problems.append(f"{node.name}: int8 tensor with a non-zero zero point")
    tail = set(tail_nodes(model))
    producers = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.name in tail:
            for name in node.input:
                src = producers.get(name)
                if src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits:
                    problems.append(f"{node.name}: takes quantised weights (tail must stay float)")
    return problems


def _with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` that also returns the tensors ``names`` (shapes left unknown)."""
    from onnx import TensorProto, helper

    copy = type(model)()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return copy


def layer_sensitivity(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                      batch: np.ndarray, exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
    """Rank the quantised nodes by the error each one adds: the relative L2 error (INT8 vs fp32,
    same inputs) of the node's output minus that of its input. Two runs of each graph, not one
    re-quantisation per layer. Returns [(node name, added error)], worst first."""
    import onnx
    import onnxruntime as ort

    ref_model, q_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    q_tensors = {t for n in q_model.graph.node for t in n.output}
    pairs = []
    for node in ref_model.graph.node:
        if node.name in quantizable_nodes(ref_model, exclude) and node.input[0] in q_tensors | {
                i.name for i in q_model.graph.input}:
            if node.output[0] in q_tensors:
                pairs.append((node.name, node.input[0], node.output[0]))
    names = sorted({t for _, a, b in pairs for t in (a, b)} - {i.name for i in ref_model.graph.input})
    feeds = {"image": np.ascontiguousarray(batch, dtype=np.float32)}
    runs = []
    for model in (ref_model, q_model):
        sess = ort.InferenceSession(_with_outputs(model, names).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        runs.append(dict(zip(names, sess.run(names, feeds))))
    ref, got = runs

    def rel(name: str) -> float:
        if name == "image":
            return 0.0
        a, b = ref[name], got[name]
        return float(np.linalg.norm(b - a) / (np.linalg.norm(a) + 1e-12))

    scores = [(node, rel(out) - rel(inp)) for node, inp, out in pairs]
    return sorted(scores, key=lambda item: -item[1])
