"""Static TensorRT compatibility of an ONNX graph: what the ONNX parsers of TensorRT 8.5, 10.3 and
11 accept, for the operators hamedge's graphs use, checked node by node without TensorRT.

The table below is ours: for each parser, the opset range and, per operator, the element types
and the restrictions its operator support matrix states. Sources (onnx/onnx-tensorrt,
docs/operators.md): 8.5 from branch 8.5-GA ("TensorRT 8.5 supports operators up to Opset 17");
10.3 from branch 10.1-GA ("inclusive range of opset 9 to opset 20"; the stored sources have no
10.3 copy of the file; NVIDIA/TensorRT CHANGELOG.md 10.3.0 adds tensor ``axes`` to Slice, applied
here); 11 from the TensorRT 10.15 file (opset 9 to 24), the newest stored, with NVIDIA/TensorRT
CHANGELOG.md 11.0 / 11.1 adding only operators hamedge does not use. The fused-refinement node
(domain ``hamedge``) goes through the parser's fallback plugin importer (onnxOpImporters.cpp
FallbackPluginImporter): it needs a registered creator, which for our IPluginV3 plugin means
TensorRT >= 10 (the C++ library), and tensorrt.plugin from 10.6.

An operator missing from the table is reported as unknown (a note, not an error): the table
covers what hamedge exports, and grows with it. torch-free; onnx is imported when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

F32, F16, BF16, I8, U8, I32, I64, BOOL = "FP32", "FP16", "BF16", "INT8", "UINT8", "INT32", "INT64", "BOOL"
_FLOAT = {F32, F16}
_FLOAT10 = {F32, F16, BF16}

# Restrictions (names used in the table, checked by _restriction_problems):
#   axes_const    the ``axes`` input must be an initializer (or a Constant node's output)
#   pool_2d_3d    2-D or 3-D pooling only
#   no_dilations  ``dilations`` empty or all ones
#   no_indices    MaxPool's second output (Indices) unsupported
#   resize        modes nearest/linear; the listed coordinate transformation and nearest modes
#   resize10      + no antialiasing, keep_aspect_ratio_policy "stretch"
#   zero_point    Q/DQ zero point must be zero
#   int8_qdq      the quantized type must be INT8 (8.5: "QuantizeLinear is not UINT8")
#   constant10    no sparse_value / value_string(s) attribute


@dataclass(frozen=True)
class OpRule:
    types: frozenset
    restrictions: tuple[str, ...] = ()


def _rule(types, *restrictions) -> OpRule:
    return OpRule(frozenset(types), tuple(restrictions))


@dataclass(frozen=True)
class ParserRules:
    version: str
    opset_min: int | None
    opset_max: int
    source: str
    ops: dict[str, OpRule]
    plugin: str  # "unsupported" | "library" | "library or tensorrt.plugin"
    int64_note: bool = False  # 8.5 casts INT64 down to INT32


def _ops_85() -> dict[str, OpRule]:
    num = _FLOAT | {I32}
    every = _FLOAT | {I32, I8, BOOL}
    return {
        "Add": _rule(num), "Sub": _rule(num), "Mul": _rule(num), "Div": _rule(num),
        "Max": _rule(num), "Min": _rule(num), "Abs": _rule(num), "Neg": _rule(num),
        "Conv": _rule(_FLOAT | {I8}), "ConvTranspose": _rule(_FLOAT | {I8}),
        "Relu": _rule(_FLOAT | {I8}), "Sigmoid": _rule(_FLOAT | {I8}), "Tanh": _rule(_FLOAT | {I8}),
        "LeakyRelu": _rule(_FLOAT | {I8}), "Clip": _rule(_FLOAT | {I8}),
        "MaxPool": _rule(_FLOAT | {I8}, "pool_2d_3d", "no_indices"),
        "AveragePool": _rule(_FLOAT | {I8, I32}, "pool_2d_3d"),
        "GlobalAveragePool": _rule(_FLOAT | {I8}), "GlobalMaxPool": _rule(_FLOAT | {I8}),
        "BatchNormalization": _rule(_FLOAT), "Gemm": _rule(_FLOAT | {I8}), "MatMul": _rule(_FLOAT),
        "Softmax": _rule(_FLOAT), "LogSoftmax": _rule(_FLOAT), "Exp": _rule(_FLOAT),
        "Log": _rule(_FLOAT), "Sqrt": _rule(_FLOAT), "Pow": _rule(_FLOAT),
        "Reciprocal": _rule(_FLOAT), "Floor": _rule(_FLOAT), "Ceil": _rule(_FLOAT),
        "ReduceMax": _rule(_FLOAT), "ReduceMin": _rule(_FLOAT), "ReduceSum": _rule(_FLOAT),
        "ReduceMean": _rule(_FLOAT),
        "Resize": _rule(_FLOAT, "resize"),
        "Shape": _rule(every), "Reshape": _rule(every), "Transpose": _rule(every),
        "Concat": _rule(every), "Identity": _rule(every), "Cast": _rule(every),
        "Constant": _rule(every), "ConstantOfShape": _rule({F32}),
        "Slice": _rule(every, "axes_const"), "Squeeze": _rule(every, "axes_const"),
        "Unsqueeze": _rule(every, "axes_const"), "Flatten": _rule(_FLOAT | {I32, BOOL}),
        "Gather": _rule(_FLOAT | {I8, I32, BOOL}), "Expand": _rule(_FLOAT | {I32, BOOL}),
        "Where": _rule(_FLOAT | {I32, BOOL}), "Equal": _rule(num),
        "Pad": _rule(_FLOAT | {I8, I32}),
        "QuantizeLinear": _rule(_FLOAT | {I8}, "zero_point", "int8_qdq"),
        "DequantizeLinear": _rule(_FLOAT | {I8}, "zero_point", "int8_qdq"),
    }


def _ops_10(slice_tensor_axes: bool) -> dict[str, OpRule]:
    num = _FLOAT10 | {I32, I64}
    every = _FLOAT10 | {I32, I64, BOOL}
    ops = {
        "Add": _rule(num), "Sub": _rule(num), "Mul": _rule(num), "Div": _rule(num),
        "Max": _rule(num), "Min": _rule(num), "Abs": _rule(num), "Neg": _rule(num),
        "Relu": _rule(num), "Conv": _rule(_FLOAT10), "ConvTranspose": _rule(_FLOAT10),
        "Sigmoid": _rule(_FLOAT10), "Tanh": _rule(_FLOAT10), "LeakyRelu": _rule(_FLOAT10),
        "Clip": _rule(_FLOAT10),
        "MaxPool": _rule(_FLOAT10, "pool_2d_3d", "no_indices", "no_dilations"),
        "AveragePool": _rule(_FLOAT10, "pool_2d_3d", "no_dilations"),
        "GlobalAveragePool": _rule(_FLOAT10), "GlobalMaxPool": _rule(_FLOAT10),
        "BatchNormalization": _rule(_FLOAT10), "Gemm": _rule(_FLOAT10), "MatMul": _rule(_FLOAT10),
        "Softmax": _rule(_FLOAT10), "LogSoftmax": _rule(_FLOAT10), "Exp": _rule(_FLOAT10),
        "Log": _rule(_FLOAT10), "Sqrt": _rule(_FLOAT10), "Pow": _rule(_FLOAT10),
        "Reciprocal": _rule(_FLOAT10), "Floor": _rule(_FLOAT10), "Ceil": _rule(_FLOAT10),
        "ReduceMax": _rule(num, "axes_const"), "ReduceMin": _rule(num, "axes_const"),
        "ReduceSum": _rule(num, "axes_const"), "ReduceMean": _rule(num, "axes_const"),
        "Resize": _rule(_FLOAT10, "resize", "resize10"),
        "Shape": _rule(every), "Reshape": _rule(every), "Transpose": _rule(every),
        "Concat": _rule(every), "Identity": _rule(every), "Cast": _rule(every | {U8}),
        "Constant": _rule(every, "constant10"), "ConstantOfShape": _rule(every),
        "Slice": _rule(every) if slice_tensor_axes else _rule(every, "axes_const"),
        "Squeeze": _rule(every, "axes_const"), "Unsqueeze": _rule(every, "axes_const"),
        "Flatten": _rule(every), "Gather": _rule(every), "Expand": _rule(every),
        "Where": _rule(every), "Equal": _rule(num), "Pad": _rule(num),
        "QuantizeLinear": _rule(_FLOAT10 | {I8}, "zero_point", "int8_qdq"),
        "DequantizeLinear": _rule(_FLOAT10 | {I8}, "zero_point", "int8_qdq"),
    }
    return ops


PARSERS: dict[str, ParserRules] = {
    "8.5": ParserRules("8.5", None, 17, "onnx-tensorrt 8.5-GA docs/operators.md", _ops_85(),
                       plugin="unsupported", int64_note=True),
    "10.3": ParserRules("10.3", 9, 20, "onnx-tensorrt 10.1-GA docs/operators.md + TensorRT "
                        "CHANGELOG 10.3.0 (Slice tensor axes)", _ops_10(slice_tensor_axes=True),
                        plugin="library"),
    "11": ParserRules("11", 9, 24, "onnx-tensorrt docs/operators.md of TensorRT 10.15 + TensorRT "
                      "CHANGELOG 11.0/11.1", _ops_10(slice_tensor_axes=True),
                      plugin="library or tensorrt.plugin"),
}
PLUGIN_DOMAIN = "hamedge"
_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceMax": 1, "ReduceMin": 1,
               "ReduceSum": 1, "ReduceMean": 1}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "MatMul", "Pow", "Gemm"}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                 "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@dataclass
class GraphReport:
    graph: str
    version: str
    problems: list[str] = field(default_factory=list)  # the parser would refuse these
    notes: list[str] = field(default_factory=list)  # accepted with a condition

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "notes": self.notes}


def _dtype_names() -> dict[int, str]:
    from onnx import TensorProto as T

    return {T.FLOAT: F32, T.FLOAT16: F16, T.BFLOAT16: BF16, T.INT8: I8, T.UINT8: U8,
            T.INT32: I32, T.INT64: I64, T.BOOL: BOOL, T.DOUBLE: "DOUBLE"}


def check_model(model, rules: ParserRules, name: str = "model") -> GraphReport:
    """Every node of ``model`` (an onnx.ModelProto) against one parser's rules."""
    import onnx
    from onnx import numpy_helper

    report = GraphReport(name, rules.version)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and (opset > rules.opset_max or
                              (rules.opset_min is not None and opset < rules.opset_min)):
        low = rules.opset_min if rules.opset_min is not None else "..."
        report.problems.append(f"opset {opset} outside the parser's range {low}-{rules.opset_max}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - custom-domain nodes can stop inference; types then partial
        inferred = model
    names = _dtype_names()
    types: dict[str, str] = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = names.get(vi.type.tensor_type.elem_type, "OTHER")
    constants: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in model.graph.initializer:
        types[t.name] = names.get(t.data_type, "OTHER")
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
                    types[node.output[0]] = names.get(attr.t.data_type, "OTHER")
    unknown: set[str] = set()
    int64_seen = False
    for node in model.graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if node.domain == PLUGIN_DOMAIN:
            if rules.plugin == "unsupported":
                report.problems.append(f"{where}: the FusedRefine plugin is an IPluginV3; "
                                       f"TensorRT {rules.version} cannot load it (needs >= 10)")
            else:
                report.notes.append(f"{where}: needs hamedge::FusedRefine registered before "
                                    f"parsing ({rules.plugin})")
            continue
        if node.domain not in ("", "ai.onnx"):
            report.problems.append(f"{where}: domain {node.domain!r} has no importer")
            continue
        rule = rules.ops.get(node.op_type)
        if rule is None:
            unknown.add(node.op_type)
            continue
        data_inputs = node.input[:2] if node.op_type in _BINARY else node.input[:1]
        for tensor in data_inputs:  # the "Supported Types" column: the data the op works on
            kind = types.get(tensor)
            if not tensor or kind is None:
                continue
            if kind == I64 and rules.int64_note:
                int64_seen = True
                continue
            if kind not in rule.types and not (node.op_type == "DequantizeLinear"
                                               and kind in (I8, U8)):  # int8_qdq says why
                report.problems.append(f"{where}: tensor {tensor} is {kind}; the parser takes "
                                       f"{', '.join(sorted(rule.types))}")
        report.problems.extend(f"{where}: {p}" for p in
                               _restriction_problems(node, rule, constants, types))
    if unknown:
        report.notes.append(f"not in hamedge's table (check {rules.source}): "
                            f"{', '.join(sorted(unknown))}")
    if int64_seen:
        report.notes.append("INT64 tensors are cast down to INT32 by this parser")
    return report


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _restriction_problems(node, rule: OpRule, constants: dict, types: dict) -> list[str]:
    import numpy as np

    attrs = _attrs(node)
    problems = []
    for restriction in rule.restrictions:
        if restriction == "axes_const":
            index = _AXES_INPUT.get(node.op_type)
            if index is not None and len(node.input) > index and node.input[index] \
                    and node.input[index] not in constants:
                problems.append("`axes` must be an initializer (it is computed in the graph)")
        elif restriction == "pool_2d_3d":
            if len(attrs.get("kernel_shape", [])) not in (2, 3):
                problems.append("2-D or 3-D pooling only")
        elif restriction == "no_dilations":
            if any(d != 1 for d in attrs.get("dilations", [])):
                problems.append("`dilations` must be empty or all ones")
        elif restriction == "no_indices":
            if len([o for o in node.output if o]) > 1:
                problems.append("the Indices output is unsupported")
        elif restriction == "resize":
            mode = attrs.get("mode", "nearest")
            coord = attrs.get("coordinate_transformation_mode", "half_pixel")
            nearest = attrs.get("nearest_mode", "round_prefer_floor")
            if mode not in ("nearest", "linear"):
                problems.append(f"resize mode {mode!r} (nearest or linear only)")
            if coord not in _RESIZE_COORD:
                problems.append(f"coordinate_transformation_mode {coord!r} unsupported")
            if mode == "nearest" and nearest not in _RESIZE_NEAREST:
                problems.append(f"nearest_mode {nearest!r} unsupported")
        elif restriction == "resize10":
            if attrs.get("antialias", 0):
                problems.append("antialiasing is not supported")
            if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
                problems.append("keep_aspect_ratio_policy must be 'stretch'")
        elif restriction == "zero_point":
            if len(node.input) > 2 and node.input[2]:
                zp = constants.get(node.input[2])
                if zp is None:
                    problems.append("the zero point must be a constant")
                elif np.any(np.asarray(zp) != 0):
                    problems.append("the zero point must be zero (symmetric quantization only)")
        elif restriction == "int8_qdq":
            quantized = node.input[0] if node.op_type == "DequantizeLinear" else (
                node.input[2] if len(node.input) > 2 and node.input[2] else None)
            if quantized is not None and types.get(quantized) not in (None, I8):
                problems.append(f"quantized type {types.get(quantized)} (INT8 only)")
        elif restriction == "constant10":
            if {"sparse_value", "value_string", "value_strings"} & set(attrs):
                problems.append("sparse or string constants are unsupported")
    return problems


def check_graphs(paths, versions=tuple(PARSERS)) -> dict[str, dict[str, dict[str, Any]]]:
    """{graph file name: {parser version: report dict}} for ONNX files ``paths``."""
    import onnx

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        path = Path(path)
        model = onnx.load(str(path), load_external_data=False)
        out[path.name] = {v: check_model(model, PARSERS[v], path.name).to_dict() for v in versions}
    return out


def summary_lines(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per parser version (every graph), then one per problem."""
    lines = []
    from hamedge.trt.engines import version_tuple

    versions = sorted({v for per in results.values() for v in per}, key=version_tuple)
    for version in versions:
        verdicts = []
        for graph, per in results.items():
            report = per.get(version)
            if report is None:
                continue
            verdicts.append(f"{graph} {'ok' if report['ok'] else 'REFUSED'}"
                            f"{' (' + str(len(report['notes'])) + ' note(s))' if report['notes'] else ''}")
        lines.append(f"TensorRT {version} ONNX parser: {', '.join(verdicts)}")
        for graph, per in results.items():
            for problem in per.get(version, {}).get("problems", [])[:5]:
                lines.append(f"  {graph}: {problem}")
    return lines
