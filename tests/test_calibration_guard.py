"""The INT8 accuracy guard: deltas, heatmap agreement, fallback rounds, the budget's refusal."""

from __future__ import annotations

import numpy as np
import pytest

from hamedge.calibration.guard import Budget, compare, heatmap_agreement
from hamedge.spec import ModelSpec

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))


def result(aucs, tiou):
    return {"classification": {"auc": dict(zip(SPEC.class_names, aucs)),
                               "mean_auc": float(np.mean(aucs)), "anomaly_auc": 0.8},
            "localisation": {"tiou_thresholds": [0.1, 0.3, 0.5], "mean": {"tiou": [0.9, tiou, 0.1]},
                             "per_class": {}},
            "summary": {}}


def test_heatmap_agreement():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 3, 4, 4)).astype(np.float32)
    same = heatmap_agreement(maps, maps.copy(), SPEC)
    assert same["mean_iou"] == pytest.approx(1.0) and same["maps"] == 9
    moved = heatmap_agreement(maps, np.roll(maps, 2, axis=-1), SPEC)
    assert moved["mean_iou"] < 0.9


def test_compare_flags_budget_failures():
    maps = np.random.default_rng(1).random((2, 3, 4, 4)).astype(np.float32)
    ok = compare(result([0.80, 0.70], 0.5), maps, result([0.799, 0.699], 0.495), maps, SPEC, Budget())
    assert ok["passed"] and ok["mean_auc_delta"] == pytest.approx(-0.001)
    assert ok["auc_delta"]["A"] == pytest.approx(-0.001)
    assert ok["mean_tiou@0.3_delta"] == pytest.approx(-0.005)
    bad = compare(result([0.80, 0.70], 0.5), maps, result([0.78, 0.70], 0.45), maps, SPEC, Budget())
    assert not bad["passed"] and len(bad["failures"]) == 2
    assert "mean AUC drop 0.0100" in bad["failures"][0]


@pytest.mark.slow
def test_fallback_rounds_then_refusal(tmp_path):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from hamedge.calibration import Int8BudgetError, build_int8
    from hamedge.calibration.data import load_calibration_set, synthetic_heldout
    from hamedge.datasets import load_dataset
    from hamedge.model.graph import export_onnx
    from hamedge.model.network import HAM
    from hamedge.synth import SYNTH_CLASSES

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=SYNTH_CLASSES)
    exported = export_onnx(HAM(spec).eval())
    fp32 = tmp_path / "model.onnx"
    onnx.save(exported.model, str(fp32))
    calib_root = synthetic_heldout(spec, 12, 5, tmp_path / "calib", size=64)
    val = load_dataset(synthetic_heldout(spec, 16, 6, tmp_path / "val", size=64), split="test",
                       class_names=spec.class_names)
    with pytest.warns(UserWarning):
        calib = load_calibration_set(calib_root, spec, 1, count=12)
    impossible = Budget(max_mean_auc_drop=-1.0, max_tiou_drop=1.0)  # can never pass
    logs: list[str] = []
    record = build_int8(fp32, tmp_path, spec, exported.graph, calib, "ab" * 32, val_set=val,
                        budget=impossible, max_rounds=1, enforce_budget=False, log=logs.append,
                        targets=("cpu",))
    assert record["passed"] is False and len(record["rounds"]) == 2
    assert len(record["excluded_nodes"]) == 1 and record["rounds"][1]["excluded"]
    assert any("keeping 1 more layer" in line for line in logs)
    assert record["accuracy"]["cpu"]["heatmap_agreement"]["maps"] > 0
    assert record["checkpoint_sha256"] == "ab" * 32 and record["count"] == 12
    assert not (tmp_path / ".calibration.ranges.json").exists()
    with pytest.raises(Int8BudgetError, match="outside the accuracy budget"):
        build_int8(fp32, tmp_path, spec, exported.graph, calib, "ab" * 32, val_set=val,
                   budget=impossible, max_rounds=0, log=logs.append, targets=("cpu",))


def test_heatmap_agreement_accepts_binarised_maps():
    rng = np.random.default_rng(3)
    maps = rng.random((2, 1 + len(SPEC.class_names), 4, 4)).astype(np.float32)
    from hamedge.evaluation import binarise

    masks = binarise(maps, SPEC)
    assert masks.dtype == bool
    assert heatmap_agreement(masks, maps, SPEC) == heatmap_agreement(maps, maps, SPEC)


def test_guard_runs_a_graph_on_the_backend_that_will_deploy_it(tmp_path):
    """The same graph scored through ONNX Runtime and (where installed) OpenVINO: one evaluation
    each, through each backend's from_graph."""
    from infer_helpers import make_bundle
    from hamedge.bundle import Bundle
    from hamedge.calibration.data import synthetic_heldout
    from hamedge.calibration.guard import evaluate_graph
    from hamedge.datasets import load_dataset
    from hamedge.errors import HamedgeError

    bundle = Bundle.open(make_bundle(tmp_path / "b.hamedge"))
    spec = bundle.spec
    val = load_dataset(synthetic_heldout(spec, 4, 6, tmp_path / "val", size=64), split="test",
                       class_names=spec.class_names)
    ort, ort_maps = evaluate_graph(bundle.root / "model.onnx", val, spec, 1)
    assert ort["num_images"] == len(val.records) and ort_maps.shape[0] == len(val.records)
    with pytest.raises(HamedgeError, match="cannot run a graph file"):
        evaluate_graph(bundle.root / "model.onnx", val, spec, 1, backend="torch")
    pytest.importorskip("openvino", reason="openvino is not installed")
    ov, ov_maps = evaluate_graph(bundle.root / "model.onnx", val, spec, 1, backend="openvino")
    assert ov["classification"]["mean_auc"] == pytest.approx(ort["classification"]["mean_auc"], abs=1e-6)
    np.testing.assert_allclose(ov_maps, ort_maps, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_graph_rejected_for_one_backend_is_refused_there_only(tmp_path, monkeypatch):
    """OpenVINO's results on the U8S8 graph forced outside the budget at export: calibration.json
    records the verdict per backend, ONNX Runtime still runs that graph, OpenVINO runs the other
    one (the fallback), and with no graph left OpenVINO refuses with the guard's reason."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    import hamedge.calibration as calibration
    from hamedge.bundle import Bundle, BundleWriter
    from hamedge.calibration.data import load_calibration_set, synthetic_heldout
    from hamedge.datasets import load_dataset
    from hamedge.errors import HamedgeError
    from hamedge.model.graph import export_onnx
    from hamedge.model.network import random_model
    from hamedge.runtime.onnxruntime import OnnxRuntimeBackend
    from hamedge.runtime.openvino import OpenVINOBackend
    from hamedge.synth import SYNTH_CLASSES

    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=SYNTH_CLASSES)
    exported = export_onnx(random_model(spec, 0), simplify=False)
    calib_root = synthetic_heldout(spec, 8, 5, tmp_path / "calib", size=spec.input_size)
    val = load_dataset(synthetic_heldout(spec, 12, 6, tmp_path / "val", size=spec.input_size),
                       split="test", class_names=spec.class_names)
    with pytest.warns(UserWarning):
        calib = load_calibration_set(calib_root, spec, 1, count=8)
    real = calibration.evaluate_graph

    def openvino_worse_on_cpu_graph(path, *args, backend="onnxruntime", **kwargs):
        result, maps = real(path, *args, backend=backend, **kwargs)
        if backend == "openvino" and str(path).endswith("model.int8.cpu.onnx"):
            cls = dict(result["classification"])
            cls["mean_auc"] = cls["mean_auc"] - 2.0  # far outside any budget
            result = {**result, "classification": cls}
        return result, maps

    monkeypatch.setattr(calibration, "evaluate_graph", openvino_worse_on_cpu_graph)
    with BundleWriter(tmp_path / "b.hamedge") as writer:
        fp32 = writer.path("model.onnx")
        fp32.write_bytes(exported.model.SerializeToString())
        record = calibration.build_int8(fp32, writer.tmp, spec, exported.graph, calib, "seed0",
                                        val_set=val, budget=Budget(1.0, 1.0), max_rounds=0,
                                        enforce_budget=False, log=lambda line: None)
        writer.write_json("calibration.json", record)
        writer.write_spec(spec, exported.graph, {"checkpoint_sha256": "seed0"})
        writer.commit()

    cpu, trt = record["accuracy"]["cpu"], record["accuracy"]["tensorrt"]
    assert record["guard_backends"] == ["onnxruntime", "openvino"]
    assert cpu["backends"]["onnxruntime"]["passed"] and not cpu["backends"]["openvino"]["passed"]
    assert cpu["passed"] is False and record["passed"] is False
    assert trt["passed"] and set(trt["backends"]) == {"onnxruntime", "openvino"}
    assert 0 <= cpu["backends"]["openvino"]["max_prob_diff"] < 1
    assert "mean_auc_delta" in cpu and "mean_tiou@0.3_delta" in cpu  # the old keys stay
    assert record["bf16"]["backend"] == "openvino"
    assert record["bf16"]["measured"] or record["bf16"]["reason"]

    bundle = Bundle.open(tmp_path / "b.hamedge")
    assert bundle.guard_refusal("onnxruntime", "int8", "model.int8.cpu.onnx") is None
    reason = bundle.guard_refusal("openvino", "int8", "model.int8.cpu.onnx")
    assert "rejected model.int8.cpu.onnx on openvino" in reason and "mean AUC drop" in reason
    with OnnxRuntimeBackend(bundle, "int8", device="cpu") as ort:
        assert ort.model_path.name == "model.int8.cpu.onnx"
    with OpenVINOBackend(bundle, "int8", device="cpu") as ov:
        assert ov.model_path.name == "model.int8.onnx"

    # the other graph rejected as well: OpenVINO refuses in one line, ONNX Runtime still runs
    monkeypatch.setattr(Bundle, "guard_refusal", lambda self, backend, precision, rel=None:
                        "rejected" if backend == "openvino" else None)
    with pytest.raises(HamedgeError, match="rejected"):
        OpenVINOBackend(bundle, "int8", device="cpu")
    with OnnxRuntimeBackend(bundle, "int8", device="cpu") as ort:
        assert ort.model_path.name == "model.int8.cpu.onnx"
