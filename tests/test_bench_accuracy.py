"""`hamedge bench` accuracy: the labelled set scored by hamedge.evaluation for every configuration,
agreement with the fp32 eager reference, and the budget verdict (tiny bundle, synthetic data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infer_helpers import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bench") / "tiny.hamedge", int8=True)


@pytest.fixture(scope="module")
def samples() -> Path:
    shared = Path(os.environ.get("HAMEDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (shared / "nih-samples" / "images").is_dir():
        pytest.skip("real X-rays for the overlays not found (../shared/data)")
    return shared / "nih-samples" / "images"


def test_accuracy_and_agreement_on_synthetic_data(bundle, samples, tmp_path):
    from hamedge.bench.runner import BenchOptions, run_bench, write_outputs

    opts = BenchOptions(model=bundle, samples=samples, batch_sizes=[2], warmup=0, iterations=2,
                        out=tmp_path, synthetic_count=12, backends=["onnxruntime"],
                        cache_dir=tmp_path / "cache", threads=1)
    res = run_bench(opts, log=lambda _t: None)
    write_outputs(res, tmp_path)
    acc = {(a["backend"], a["precision"]): a for a in res["accuracy"]}
    assert set(acc) == {("torch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    ref, fp32, int8 = acc["torch-eager", "fp32"], acc["onnxruntime", "fp32"], acc["onnxruntime", "int8"]
    assert ref["reference"] and ref["images"] == 12
    assert set(ref["tiou"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
    assert len(ref["class_auc"]) == 14
    # fp32 ONNX Runtime is the same network: near-identical outputs and heatmaps, no flips
    assert fp32["agreement"]["max_prob_diff"] < 1e-3
    assert fp32["agreement"]["mean_heatmap_iou"] > 0.99
    assert fp32["agreement"]["flips"] == 0 and fp32["within_budget"] is True
    assert fp32["delta"]["mean_auc"] == pytest.approx(0.0, abs=1e-3)
    # INT8 from random calibration: measured, not assumed; the verdict follows the budget rule
    d = int8["delta"]
    expected = ((d["mean_auc"] is None or d["mean_auc"] >= -0.005)
                and (d["tiou_0.3"] is None or d["tiou_0.3"] >= -0.01))
    assert int8["within_budget"] is expected
    assert 0 <= int8["agreement"]["mean_heatmap_iou"] <= 1
    assert (tmp_path / "accuracy_vs_speedup.png").is_file()
