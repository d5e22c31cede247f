"""The standard-op fused refinement traces to ONNX and ONNX Runtime matches the numpy reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hamedge.kernels.export_graph import fused_refine_for_export  # noqa: E402
from hamedge.ops.refine import refine_reference  # noqa: E402
from hamedge.kernels.torch_refine import refine_maps_torch  # noqa: E402


class _Refine(torch.nn.Module):
    def __init__(self, fn, size, gain=100.0, center=0.4):
        super().__init__()
        self.fn, self.size, self.gain, self.center = fn, size, gain, center

    def forward(self, cams):
        return self.fn(cams, self.size, self.gain, self.center)


def _export(fn, h, w, size) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(_Refine(fn, size), (torch.rand(2, 15, h, w),), buf, opset_version=17,
                      input_names=["cams"], output_names=["maps"],
                      dynamic_axes={"cams": {0: "batch"}, "maps": {0: "batch"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"cams": x})[0]


def _maps(rng, shape):
    m = rng.random(shape).astype(np.float32) ** 4 * 5
    m[m < 0.3] = 0
    return m


@pytest.mark.parametrize("h,w,size", [(16, 16, (512, 512)), (16, 16, (511, 511)),
                                      (7, 7, (100, 100)), (5, 9, (33, 70)), (4, 4, (128, 128))])
def test_onnx_fused_matches_reference(h, w, size):
    model = _export(fused_refine_for_export, h, w, size)
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # dynamic batch, including one not used when tracing
        x = _maps(rng, (batch, 15, h, w))
        x[0, 0] = 0.0  # zero-range map (a silent CAM)
        x[-1, 1] = 1.7  # constant non-zero map: zero range too
        got = _run(model, x)
        assert got.shape == (batch, 15, *size) and np.isfinite(got).all()
        assert np.abs(got - refine_reference(x, size)).max() < 1e-3


def test_torch_eager_matches_reference():
    rng = np.random.default_rng(1)
    x = _maps(rng, (2, 15, 16, 16))
    got = fused_refine_for_export(torch.from_numpy(x), (512, 512)).numpy()
    assert np.abs(got - refine_reference(x, 512)).max() < 1e-3


def test_graph_is_cheaper_than_naive_chain():
    """One full-resolution Resize + Sigmoid, no full-resolution reductions."""
    fused = _export(fused_refine_for_export, 16, 16, (512, 512))
    naive = _export(refine_maps_torch, 16, 16, (512, 512))
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Resize") == 1 and ops.count("Sigmoid") == 1
    assert ops[-1] == "Sigmoid" and ops[-2] == "Resize"  # nothing else at full resolution
    # In the naive chain the reductions and the normalisation run on the Resize output.
    naive_ops = [n.op_type for n in naive.graph.node]
    after = naive_ops[naive_ops.index("Resize") + 1:]
    assert {"ReduceMin", "ReduceMax"} <= set(after) or "Reshape" in after
