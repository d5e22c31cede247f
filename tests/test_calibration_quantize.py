"""Q/DQ graphs from one calibration pass: TensorRT's constraints, the "cpu" target, the float tail."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hamedge.calibration.quantize import (QuantizationError, calibrate, layer_sensitivity,  # noqa: E402
                                  qdq_problems, quantizable_nodes, quantize, tail_nodes)
from hamedge.compare import run_onnx  # noqa: E402
from hamedge.model.graph import export_onnx  # noqa: E402
from hamedge.model.network import HAM  # noqa: E402
from hamedge.spec import ModelSpec  # noqa: E402

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B", "C"))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("q")
    model = HAM(SPEC).eval()
    fp32 = d / "model.onnx"
    onnx.save(export_onnx(model).model, str(fp32))
    x = np.random.default_rng(0).normal(size=(16, 1, 64, 64)).astype(np.float32)
    ranges = d / "ranges.json"
    digest = calibrate(fp32, [x[:8], x[8:]], ranges, method="max")
    out = {"fp32": fp32, "ranges": ranges, "digest": digest, "x": x, "dir": d}
    for target in ("tensorrt", "cpu"):
        out[target] = d / f"{target}.onnx"
        quantize(fp32, out[target], ranges, target)
    return out


def zero_points(model):
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_tensorrt_form_is_symmetric_int8_with_float_tail(graphs):
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(graphs["tensorrt"]))
    assert qdq_problems(m, "tensorrt") == []
    zps = zero_points(m)
    assert zps and all(z.data_type == TensorProto.INT8 for z in zps)
    assert all(not numpy_helper.to_array(z).any() for z in zps)
    # no int32 bias quantisation (TensorRT wants float biases)
    assert not any(z.data_type == TensorProto.INT32 for z in zps)
    # the tail kept its float nodes and no Q/DQ was put inside it
    tail = tail_nodes(m)
    assert any(n.endswith("Sigmoid") for n in tail) and any("Exp" in n for n in tail)
    assert not [n for n in m.graph.node if n.name in tail and n.op_type.endswith("Linear")]
    convs = [n for n in m.graph.node if n.op_type == "Conv" and not n.name.startswith("/head/")]
    producers = {o: n for n in m.graph.node for o in n.output}
    assert all(producers[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    head_conv = next(n for n in m.graph.node if n.name == "/head/Conv")
    assert head_conv.input[1] not in producers or producers[head_conv.input[1]].op_type != "DequantizeLinear"


def test_cpu_form_uses_uint8_activations(graphs):
    from onnx import TensorProto

    m = onnx.load(str(graphs["cpu"]))
    assert qdq_problems(m, "cpu") == []
    kinds = {z.data_type for z in zero_points(m)}
    assert TensorProto.UINT8 in kinds and TensorProto.INT8 in kinds
    assert qdq_problems(m, "tensorrt")  # and it is *not* a valid TensorRT graph


def test_both_forms_track_fp32(graphs):
    x = graphs["x"][:4]
    ref = run_onnx(graphs["fp32"].read_bytes(), x)
    for target in ("tensorrt", "cpu"):
        got = run_onnx(graphs[target].read_bytes(), x)
        assert np.abs(got["class_probs"] - ref["class_probs"]).max() < 0.1
        corr = np.corrcoef(got["attention_maps"].ravel(), ref["attention_maps"].ravel())[0, 1]
        assert corr > 0.95


def test_ranges_depend_on_data_and_method(graphs, tmp_path):
    other = calibrate(graphs["fp32"], [graphs["x"][:8] * 2], tmp_path / "r2.json", method="max")
    assert other != graphs["digest"]
    pct = calibrate(graphs["fp32"], [graphs["x"][:8]], tmp_path / "r3.json", method="percentile")
    assert len(pct) == 64
    with pytest.raises(QuantizationError, match="unknown calibration method"):
        calibrate(graphs["fp32"], [graphs["x"][:8]], tmp_path / "r4.json", method="mse")


def test_excluded_nodes_stay_float_and_sensitivity_ranks_quantised_nodes(graphs):
    fp32 = onnx.load(str(graphs["fp32"]))
    candidates = quantizable_nodes(fp32)
    assert "/conv1/Conv" in candidates and not any(c.startswith("/head/") for c in candidates)
    ranked = layer_sensitivity(graphs["fp32"], graphs["cpu"], graphs["x"][:4])
    assert {name for name, _ in ranked} <= set(candidates) and len(ranked) >= len(candidates) - 2
    worst = ranked[0][0]
    out = graphs["dir"] / "excl.onnx"
    kept = quantize(graphs["fp32"], out, graphs["ranges"], "tensorrt", exclude=[worst])
    assert worst in kept
    m = onnx.load(str(out))
    producers = {o: n for n in m.graph.node for o in n.output}
    node = next(n for n in m.graph.node if n.name == worst)
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
               for i in node.input)
    assert qdq_problems(m, "tensorrt") == []
