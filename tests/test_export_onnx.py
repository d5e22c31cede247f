"""ONNX export: contract names, dynamic batch, exact grayscale folding, parity with torch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hamedge.compare import run_onnx  # noqa: E402
from hamedge.export import check_parity  # noqa: E402
from hamedge.model.graph import (ExportError, export_onnx, fold_grayscale,  # noqa: E402
                                 torch_reference_outputs)
from hamedge.model.network import HAM  # noqa: E402
from hamedge.spec import ModelSpec  # noqa: E402

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B", "C"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HAM(SPEC).eval()
    with torch.no_grad():  # a non-zero gamma so the FA position branch is exercised
        m.fa_layer.fa.gamma.fill_(0.5)
    return m


@pytest.fixture(scope="module")
def exported(model):
    return export_onnx(model)


def inputs(batch: int, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(batch).normal(size=(batch, channels, 64, 64)).astype(np.float32)


def test_graph_contract(exported):
    g = exported.model.graph
    assert [i.name for i in g.input] == ["image"]
    assert [o.name for o in g.output] == ["class_probs", "anomaly_prob", "attention_maps"]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 64, 64]
    assert exported.model.opset_import[0].version == 17
    assert exported.graph.input_channels == 1 and exported.graph.heatmaps == "raw"
    assert exported.graph.heatmap_size == SPEC.feature_size == 4
    # the float tail is findable by name for calibration
    tail = {n.op_type for n in g.node if n.name.startswith("/head/")}
    assert {"Sigmoid", "Exp", "ReduceMax", "Conv", "MatMul"} <= tail


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_parity(model, exported, batch):
    x = inputs(batch)
    report = check_parity(model, exported, x)
    assert report["ok"] and report["max_prob_diff"] < 1e-5
    out = run_onnx(exported.model.SerializeToString(), x)
    assert out["class_probs"].shape == (batch, 3)
    assert out["anomaly_prob"].shape == (batch, 1)
    assert out["attention_maps"].shape == (batch, 4, 4, 4)
    assert (out["attention_maps"] >= 0).all()


def test_folding_is_exact_for_replicated_channels(model):
    folded = fold_grayscale(model)
    assert folded.conv1.weight.shape[1] == 1 and model.conv1.weight.shape[1] == 3
    x1 = torch.from_numpy(inputs(2))
    with torch.no_grad():
        a = model(x1.expand(-1, 3, -1, -1), refine=False)
        b = folded(x1, refine=False)
    assert torch.allclose(a.class_logits, b.class_logits, atol=1e-5)
    assert torch.allclose(a.class_cams, b.class_cams, atol=1e-5)


def test_unfolded_three_channel_graph(model):
    e = export_onnx(model, fold=False, simplify=False)
    assert e.graph.input_channels == 3
    x = inputs(2, channels=3)
    report = check_parity(model, e, x)
    assert report["ok"]


def test_full_resolution_heatmaps(model):
    e = export_onnx(model, full_res=True)
    assert e.graph.heatmaps == "refined" and e.graph.heatmap_size == 64
    x = inputs(2)
    out = run_onnx(e.model.SerializeToString(), x)
    assert out["attention_maps"].shape == (2, 4, 64, 64)
    ref = torch_reference_outputs(model, x, full_res=True)
    assert np.abs(ref["attention_maps"] - out["attention_maps"]).max() < 2e-3


def test_parity_failure_reports_numbers(model, exported):
    other = HAM(SPEC).eval()  # different random weights: must not pass as the same model
    with pytest.raises(ExportError, match="max prob diff"):
        check_parity(other, exported, inputs(2))


def test_fold_refused_for_unequal_normalisation():
    spec = SPEC.replace(mean=(0.4, 0.5, 0.6))
    with pytest.raises(ExportError, match="fold"):
        fold_grayscale(HAM(spec))


def test_parity_on_real_xrays(model, exported, nih_images):
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess

    batch = np.stack([preprocess(read_image(p), SPEC, 1) for p in nih_images])
    report = check_parity(model, exported, batch)
    assert report["ok"] and report["images"] == len(nih_images) == 3
