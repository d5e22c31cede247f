"""The FusedRefine plugin's ONNX node (what `hamedge export --fused-plugin` writes), the TensorRT
availability report, and the Triton kernel compiled to PTX for a target GPU without a GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")

from hamedge.errors import BackendUnavailable  # noqa: E402
from hamedge.kernels import trt_plugin  # noqa: E402
from hamedge.kernels.export_graph import fused_refine_for_export  # noqa: E402
from hamedge.kernels.torch_refine import refine_maps_torch  # noqa: E402
from hamedge.kernels.onnx_plugin import (PLUGIN_NAME, PLUGIN_NAMESPACE,  # noqa: E402
                                     add_fused_plugin_node)
from hamedge.spec import ModelSpec  # noqa: E402

SPEC = ModelSpec(input_size=64, class_names=("A", "B", "C"))


class _Tiny(nn.Module):
    """The exported graph's contract in miniature: image -> class_probs, anomaly_prob,
    attention_maps (raw ReLU CAMs at 1/8 resolution, or refined at full resolution)."""

    def __init__(self, full_res):
        super().__init__()
        self.full_res = full_res
        self.feat = nn.Conv2d(1, 8, 3, stride=8, padding=1)
        self.cam = nn.Conv2d(8, 4, 1, bias=False)

    def forward(self, image):
        f = torch.relu(self.feat(image))
        pooled = f.mean(dim=(2, 3))
        logits = pooled @ self.cam.weight[:, :, 0, 0].t()
        cams = torch.relu(self.cam(f))
        if self.full_res:
            fn = refine_maps_torch if self.full_res == "naive" else fused_refine_for_export
            cams = fn(cams, (64, 64), SPEC.cam_gain, SPEC.cam_center)
        return torch.sigmoid(logits[:, 1:]), torch.sigmoid(logits[:, :1]), cams


def _export(full_res) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(_Tiny(full_res).eval(), (torch.rand(2, 1, 64, 64),), buf, opset_version=17,
                      input_names=["image"],
                      output_names=["class_probs", "anomaly_prob", "attention_maps"],
                      dynamic_axes={n: {0: "batch"} for n in
                                    ("image", "class_probs", "anomaly_prob", "attention_maps")},
                      dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _plugin_node(model):
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    assert len(nodes) == 1
    return nodes[0]


@pytest.mark.parametrize("full_res", [False, True, "naive"])
def test_plugin_node(full_res):
    model = _export(full_res)
    out = add_fused_plugin_node(model, SPEC)
    node = _plugin_node(out)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == PLUGIN_NAMESPACE and node.output[0] == "attention_maps"
    assert attrs["H"] == 64 and attrs["W"] == 64 and attrs["aot"] == 1
    assert attrs["gain"] == pytest.approx(100.0) and attrs["center"] == pytest.approx(0.4)
    assert attrs["plugin_namespace"] == b"hamedge" and attrs["plugin_version"] == b"1"
    assert any(o.domain == "hamedge" for o in out.opset_import)
    # The node consumes the raw maps: produced by the CAM ReLU, nothing of the refinement left.
    producer = {o: n for n in out.graph.node for o in n.output}
    assert producer[node.input[0]].op_type == "Relu"
    ops = [n.op_type for n in out.graph.node]
    assert "Resize" not in ops and "Sigmoid" in ops  # the probabilities' sigmoids stay
    assert ops.count("Sigmoid") == 2
    dims = [d.dim_value or d.dim_param for d in
            next(o for o in out.graph.output if o.name == "attention_maps").type.tensor_type.shape.dim]
    assert dims[2:] == [64, 64]
    onnx.checker.check_model(out)
    # The other outputs and the input are untouched; the source model is not modified.
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert PLUGIN_NAME not in [n.op_type for n in model.graph.node]


def test_onnxruntime_cannot_run_plugin_graph():
    ort = pytest.importorskip("onnxruntime")
    out = add_fused_plugin_node(_export(False), "attention_maps", 64, 100.0, 0.4)
    with pytest.raises(Exception):
        ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])


def test_without_tensorrt_says_why():
    ok, why = trt_plugin.plugin_available()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert not ok and "TensorRT" in why
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            trt_plugin.register()
    info = trt_plugin.describe()
    assert info["plugin"] == "hamedge::FusedRefine" and info["python_plugin"] == ok


@pytest.mark.parametrize("capability", [87, 90])
def test_triton_kernel_compiles_to_ptx_for_target(capability):
    pytest.importorskip("triton")
    name, ptx, meta, n_params, parts = trt_plugin.compile_ptx(
        16, 16, 512, 512, 100.0, 0.4, in_dtype="fp16", out_dtype="fp16", capability=capability)
    assert name == "fused_refine_kernel" and f".target sm_{capability}" in ptx
    assert ".entry fused_refine_kernel" in ptx and meta["num_warps"] == 4
    # (maps, n_maps, out) + the scratch pointers recent Triton versions append.
    assert n_params >= 3 and parts >= 1
