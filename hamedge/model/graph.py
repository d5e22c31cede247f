"""The exported graph of a HAM model: the contract every runtime backend runs (see hamedge.bundle).

Graph contract (ARCHITECTURE.md): input ``image`` (B, C, S, S) float32, already preprocessed;
outputs ``class_probs`` (B, K), ``anomaly_prob`` (B, 1), ``attention_maps`` (B, 1+K, h, w) raw ReLU
CAMs, anomaly first (default), or refined heatmaps (B, 1+K, S, S) with ``full_res=True``.

Two changes against the torch forward, both checked by the export's parity step (hamedge.export):
- grayscale folding: X-rays are replicated to three identical channels with one mean/std, so the
  first convolution's weights are summed over input channels and the graph takes one channel;
- the LSE pooling is written as max + log(sum(exp(x - max))), which cannot overflow in fp16
  (exp(6 * 15) already does), where ONNX's ReduceLogSumExp may be computed the naive way.
Everything after the classification features F lives under the ``head`` module, so its nodes are
named ``/head/...``: calibration keeps that tail (pooling, sigmoids, CAM projection, refinement)
in floating point by that prefix. Full-resolution graphs refine with hamedge.kernels.export_graph
(standard ops, exact extremes from the low-resolution map).
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamedge.bundle import DEFAULT_OPSET, FLOAT_TAIL_PREFIX, OUTPUT_NAMES, GraphInfo
from hamedge.errors import HamedgeError
from hamedge.kernels.export_graph import fused_refine_for_export
from hamedge.kernels.torch_refine import refine_maps_torch
from hamedge.spec import ModelSpec

TAIL_PREFIX = FLOAT_TAIL_PREFIX  # nodes of the _Head module below


class ExportError(HamedgeError):
    """The export failed a check (parity with torch, ONNX checker)."""


def fold_grayscale(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose first convolution takes one channel: the sum of its weights over
    input channels. Exact for inputs whose channels are identical (grayscale replicated with one
    mean/std), which ModelSpec.grayscale_foldable guarantees after preprocessing."""
    spec: ModelSpec = model.spec
    if not spec.grayscale_foldable:
        raise ExportError("cannot fold grayscale input: the spec normalises its channels "
                          "differently (use --no-fold-grayscale)")
    folded = copy.deepcopy(model)
    old = folded.conv1
    if old.in_channels == 1:
        return folded
    conv = nn.Conv2d(1, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                     dilation=old.dilation, bias=old.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    folded.conv1 = conv
    return folded


class _Head(nn.Module):
    """Features F -> (class_probs, anomaly_prob, attention_maps). Shares the model's classifiers."""

    def __init__(self, model: nn.Module, full_res: bool) -> None:
        super().__init__()
        self.anomaly_fc = model.anomaly_fc
        self.cls_fc = model.cls_fc
        spec: ModelSpec = model.spec
        self.r = float(spec.lse_r)
        self.log_positions = math.log(spec.feature_size ** 2)  # fixed: the input size is fixed
        self.full_res = full_res
        self.size = spec.input_size
        self.gain, self.center = float(spec.cam_gain), float(spec.cam_center)

    def forward(self, feats: torch.Tensor):
        z = self.r * feats.flatten(2)
        zmax = z.amax(dim=2, keepdim=True)
        lse = (zmax + torch.log(torch.exp(z - zmax).sum(dim=2, keepdim=True))).squeeze(2)
        pooled = (lse - self.log_positions) / self.r
        weights = torch.cat((self.anomaly_fc.weight, self.cls_fc.weight), dim=0)  # (1+K, 512)
        cams = F.relu(F.conv2d(feats, weights[:, :, None, None]))
        if self.full_res:
            cams = fused_refine_for_export(cams, (self.size, self.size), self.gain, self.center)
        return (torch.sigmoid(self.cls_fc(pooled)), torch.sigmoid(self.anomaly_fc(pooled)), cams)


class ExportWrapper(nn.Module):
    """image -> (class_probs, anomaly_prob, attention_maps), the bundle's graph contract."""

    def __init__(self, model: nn.Module, full_res: bool = False) -> None:
        super().__init__()
        self.model = model
        self.head = _Head(model, full_res)

    def forward(self, image: torch.Tensor):
        return self.head(self.model.features(image))


@dataclass
class ExportedGraph:
    model: Any  # onnx.ModelProto
    graph: GraphInfo
    simplified: bool


def export_onnx(model: nn.Module, *, fold: bool = True, full_res: bool = False,
                opset: int = DEFAULT_OPSET, simplify: bool = True) -> ExportedGraph:
    """Trace ``model`` (a HAM in eval mode) into a checked ONNX graph with a dynamic batch."""
    import onnx

    spec: ModelSpec = model.spec
    net = fold_grayscale(model) if fold else copy.deepcopy(model)
    net = net.eval().float().cpu()
    wrapper = ExportWrapper(net, full_res=full_res).eval()
    channels = 1 if fold else spec.in_channels
    example = torch.zeros(2, channels, spec.input_size, spec.input_size)
    buf = io.BytesIO()
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-side shape checks; input size is fixed by design
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # dynamo=False on purpose: the TorchScript tracer gives the plain graph TensorRT parses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper, (example,), buf, input_names=["image"], output_names=list(OUTPUT_NAMES),
            dynamic_axes={"image": batch, **{name: batch for name in OUTPUT_NAMES}},
            opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    simplified = False
    if simplify:
        import onnxsim

        candidate, ok = onnxsim.simplify(proto)
        if ok:
            proto, simplified = candidate, True
    proto.producer_name = "hamedge"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises several types; any means a graph we must not ship
        raise ExportError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    graph = GraphInfo(input_channels=channels, input_size=spec.input_size,
                      heatmaps="refined" if full_res else "raw", feature_size=spec.feature_size,
                      opset=opset)
    return ExportedGraph(proto, graph, simplified)


def torch_reference_outputs(model: nn.Module, batch: np.ndarray, full_res: bool
                            ) -> dict[str, np.ndarray]:
    """The unmodified torch forward (three-channel input, built-in LSE) in the graph's terms."""
    spec: ModelSpec = model.spec
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    if x.shape[1] != spec.in_channels:
        x = x.expand(-1, spec.in_channels, -1, -1)
    with torch.no_grad():
        probs, anomaly, maps = model.eval()(x, refine=False).graph_outputs()
        if full_res:
            maps = refine_maps_torch(maps, (spec.input_size,) * 2, spec.cam_gain, spec.cam_center)
    return {"class_probs": probs.numpy(), "anomaly_prob": anomaly.numpy(),
            "attention_maps": maps.numpy()}
