"""benchmarks/_common.py: the run record every benchmark script writes, and its timer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402


def test_run_record_says_where_and_when():
    rec = _common.run_record(note="x")
    assert rec["date"].endswith("+00:00") and rec["note"] == "x"
    assert rec["machine"]["cpu"] and rec["machine"]["cores"] >= 1
    assert "numpy" in rec["versions"]
    line = _common.record_line(rec)
    assert rec["machine"]["cpu"] in line and "load average" in line and "shared" in line


def test_time_calls_warms_up_then_times_at_least_min_calls():
    calls = []
    times = _common.time_calls(lambda: calls.append(1), seconds=0.0, min_calls=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6 and (times >= 0).all()


@pytest.mark.parametrize("script", ["export_bench", "fused_refine", "infer_pipeline", "infer_bound",
                                    "openvino_yardstick"])
def test_scripts_use_the_shared_record(script):
    text = (Path(_common.__file__).parent / f"{script}.py").read_text()
    assert "run_record(" in text and "rev-parse" not in text and "/proc/cpuinfo" not in text


def test_yardstick_reads_openvinos_own_benchmark_and_measures_hamedge_the_same_way(tmp_path):
    """benchmark_app (the real one, from the openvino wheel) on a bundle graph, and hamedge's
    configurations on the same bundle; the report compares the best of each side per batch."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'hamedge[openvino]')")
    from infer_helpers import make_bundle

    import openvino_yardstick as ys
    from hamedge.bundle import Bundle

    bundle = Bundle.open(make_bundle(tmp_path / "tiny.hamedge", int8=True, int8_targets=("cpu", "tensorrt")))
    shape = f"{bundle.graph.input_name}[2,{bundle.graph.input_channels},64,64]"
    theirs = ys.benchmark_app(bundle.root / "model.int8.onnx", shape, 2, "throughput", 1)
    assert theirs["images_per_s"] > 0 and theirs["precision"], theirs
    broken = ys.benchmark_app(tmp_path / "missing.onnx", shape, 2, "throughput", 1)
    assert "error" in broken and "images_per_s" not in broken
    ours = ys.hamedge_rate(bundle, "openvino", "int8", 2, "throughput", 0.2)
    assert ours["images_per_s"] > 0 and ours["in_flight"] >= 2 and ours["graph"].startswith("model.int8")
    refused = ys.hamedge_rate(bundle, "onnxruntime", "bf16", 1, "latency", 0.1)
    assert "bf16" in refused["error"]
    model = {"model": "tiny", "yardstick": [dict(theirs, graph="model.int8.onnx", batch=2, hint="throughput"), dict(broken, graph="missing.onnx", batch=2, hint="throughput")],
             "hamedge": [dict(ours, backend="openvino", precision="int8", batch=2, use="throughput")]}
    text = ys.report(ys.run_record(seconds=1.0), [model])
    ratio = ours["images_per_s"] / theirs["images_per_s"]
    assert f"**{ratio:.2f}x**" in text and "missing.onnx" in text
