"""The static TensorRT ONNX-parser check (hamedge.trt.compat): small graphs that break one rule of
one parser version each, and the real exported graphs, which must pass where the parser can."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hamedge.trt.compat import PARSERS, check_model, summary_lines  # noqa: E402


def model(nodes, inputs, outputs, inits=(), opset=17, extra_domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
    return helper.make_model(graph, opset_imports=opsets)


def tensor(name, dtype=TensorProto.FLOAT, shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def verdicts(m) -> dict[str, list[str]]:
    return {v: check_model(m, rules).problems for v, rules in PARSERS.items()}


def test_resize_modes():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    ok = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                                 coordinate_transformation_mode="align_corners")],
               [tensor("x")], [tensor("y", shape=(1, 3, 16, 16))], [scales])
    assert all(not p for p in verdicts(ok).values())
    cubic = model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")],
                  [tensor("x")], [tensor("y", shape=(1, 3, 16, 16))], [scales])
    assert all(any("cubic" in p for p in problems) for problems in verdicts(cubic).values())


def test_qdq_rules():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    shifted = numpy_helper.from_array(np.array(3, np.int8), "z3")
    unsigned = numpy_helper.from_array(np.array(0, np.uint8), "zu")

    def qdq(zp):
        return model([helper.make_node("QuantizeLinear", ["x", "s", zp], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", zp], ["y"])],
                     [tensor("x")], [tensor("y")], [scale, zero, shifted, unsigned])

    assert all(not p for p in verdicts(qdq("z")).values())
    assert all(any("zero point must be zero" in p for p in ps) for ps in verdicts(qdq("z3")).values())
    assert all(any("UINT8" in p for p in ps) for ps in verdicts(qdq("zu")).values())


def test_opset_range_and_computed_axes():
    # opset 18: ReduceMax takes axes as an input; computed here, not an initializer.
    shape = helper.make_node("Shape", ["x"], ["s"], start=0, end=1)
    reduce = helper.make_node("ReduceMax", ["x", "s"], ["y"], keepdims=1)
    m = model([shape, reduce], [tensor("x")], [tensor("y", shape=(1, 1, 1, 1))], opset=18)
    result = verdicts(m)
    assert any("opset 18 outside" in p for p in result["8.5"])
    assert any("`axes` must be an initializer" in p for p in result["10.3"])
    assert not any("opset" in p for p in result["10.3"] + result["11"])


def test_pooling_dilations_are_refused_from_10():
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])
    result = verdicts(model([pool], [tensor("x")], [tensor("y", shape=(1, 3, 6, 6))]))
    assert not result["8.5"] and result["10.3"] and result["11"]


def test_plugin_node_needs_tensorrt_10():
    node = helper.make_node("FusedRefine", ["x"], ["y"], domain="hamedge", H=16, W=16, gain=1.0,
                            center=0.5, zero_range=1e-5, plugin_namespace="hamedge",
                            plugin_version="1")
    m = model([node], [tensor("x")], [tensor("y", shape=(1, 3, 16, 16))],
              extra_domains=("hamedge",))
    result = {v: check_model(m, rules) for v, rules in PARSERS.items()}
    assert not result["8.5"].ok and "IPluginV3" in result["8.5"].problems[0]
    assert result["10.3"].ok and "library" in result["10.3"].notes[0]
    assert result["11"].ok and "tensorrt.plugin" in result["11"].notes[0]


def test_exported_graphs_pass_every_parser_and_are_recorded(tmp_path):
    pytest.importorskip("torch")
    from hamedge.model.graph import export_onnx
    from hamedge.model.network import random_model
    from hamedge.kernels.onnx_plugin import add_fused_plugin_node
    from hamedge.spec import ModelSpec
    from hamedge.trt.compat import check_graphs

    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))
    paths = []
    for full_res in (False, True):
        exported = export_onnx(random_model(spec), fold=True, full_res=full_res, opset=17)
        path = tmp_path / f"model{'.full' if full_res else ''}.onnx"
        path.write_bytes(exported.model.SerializeToString())
        paths.append(path)
        if not full_res:
            plugin = tmp_path / "model.plugin.onnx"
            plugin.write_bytes(add_fused_plugin_node(exported.model, spec).SerializeToString())
            paths.append(plugin)
    results = check_graphs(paths)
    for graph in ("model.onnx", "model.full.onnx"):
        assert all(r["ok"] for r in results[graph].values()), results[graph]
        assert not any("not in hamedge's table" in n for r in results[graph].values()
                       for n in r["notes"])
    assert not results["model.plugin.onnx"]["8.5"]["ok"] and results["model.plugin.onnx"]["10.3"]["ok"]
    lines = summary_lines(results)
    assert lines[0].startswith("TensorRT 8.5 ONNX parser:") and any("11 ONNX" in x for x in lines)
