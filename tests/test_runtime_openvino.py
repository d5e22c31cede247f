"""The OpenVINO backend: explicit precision, compiled-model cache, the measured INT8 graph, the
throughput path and submit, and `--backend auto` choosing a CPU runtime by measurement. The
pure parts run everywhere; the rest skips without openvino."""

from __future__ import annotations

import numpy as np
import pytest

from infer_helpers import make_bundle
from hamedge.bundle import Bundle
from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime import open_backend, resolve_backend
from hamedge.runtime.openvino import compile_config, ov_device, precision_refusal

AMX = frozenset({"avx512f", "amx_bf16", "amx_int8", "avx512_bf16"})
CAPS = ["BF16", "FP32", "INT8"]


def test_precision_is_always_explicit():
    for precision, hint in (("fp32", "f32"), ("int8", "f32"), ("bf16", "bf16"), ("fp16", "f16")):
        config = compile_config(precision, "latency", None, None)
        assert config["INFERENCE_PRECISION_HINT"] == hint  # never OpenVINO's own default
        assert config["PERFORMANCE_HINT"] == "LATENCY"
    assert compile_config("fp32", "throughput", 2, "/c") == {
        "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32",
        "EXECUTION_MODE_HINT": "ACCURACY", "INFERENCE_NUM_THREADS": 2, "CACHE_DIR": "/c"}
    with pytest.raises(HamedgeError, match="unknown use"):
        compile_config("fp32", "fast", None, None)


def test_reduced_precisions_only_where_the_hardware_has_them():
    assert precision_refusal("bf16", "CPU", AMX, CAPS) is None
    why = precision_refusal("bf16", "CPU", frozenset({"avx2", "avx512f"}), ["FP32", "INT8"])
    assert "bf16 needs a CPU with AMX or AVX-512 BF16" in why
    assert "fp16 on a CPU needs" in precision_refusal("fp16", "CPU", AMX, CAPS)
    assert precision_refusal("fp16", "GPU", frozenset(), ["FP16"]) is None
    assert precision_refusal("fp32", "CPU", frozenset(), []) is None
    assert precision_refusal("int8", "CPU", frozenset(), []) is None


def test_device_names():
    assert ov_device(None, ["CPU"]) == "CPU" and ov_device("cpu", ["CPU"]) == "CPU"
    assert ov_device("gpu", ["CPU", "GPU.0", "GPU.1"]) == "GPU"
    with pytest.raises(BackendUnavailable, match="no GPU device"):
        ov_device("gpu", ["CPU"])
    with pytest.raises(HamedgeError, match="unknown device"):
        ov_device("cuda", ["CPU"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'hamedge[openvino]')")
    root = make_bundle(tmp_path_factory.mktemp("ov") / "tiny.hamedge", int8=True,
                       int8_targets=("cpu", "tensorrt"))
    return Bundle.open(root)


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, 1, 64, 64)).astype(np.float32)


def test_fp32_is_fp32_and_the_compiled_model_is_cached(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    with open_backend(bundle, "openvino", "fp32") as ov_b, \
            open_backend(bundle, "onnxruntime", "fp32") as ort_b:
        assert "float32" in str(ov_b.compiled.get_property("INFERENCE_PRECISION_HINT"))
        a, b = ov_b.run(_x()), ort_b.run(_x())
    np.testing.assert_allclose(a.class_probs, b.class_probs, atol=2e-5)
    scale = float(np.abs(b.attention_maps).max())
    np.testing.assert_allclose(a.attention_maps, b.attention_maps, atol=2e-5 * scale)
    blobs = [p for p in (tmp_path / "cache" / "openvino").rglob("*") if p.is_file()]
    assert blobs, "OpenVINO wrote no compiled model to CACHE_DIR"


def test_int8_runs_the_graph_measured_fastest_and_remembers(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    with open_backend(bundle, "openvino", "int8") as first:
        choice = first.int8_choice
        assert set(choice.ms) == {"model.int8.onnx", "model.int8.cpu.onnx"} and not choice.cached
        assert first.artifact.name == choice.chosen == min(choice.ms, key=choice.ms.get)
    with open_backend(bundle, "openvino", "int8") as again:
        assert again.int8_choice.cached and again.artifact.name == choice.chosen


def test_throughput_splits_over_requests_and_submit_overlaps(bundle):
    x = _x(5)
    with open_backend(bundle, "openvino", "fp32") as lat, \
            open_backend(bundle, "openvino", "fp32", use="throughput") as thr:
        assert thr.config["PERFORMANCE_HINT"] == "THROUGHPUT"
        ref = lat.run(x)
        np.testing.assert_allclose(thr.run(x).class_probs, ref.class_probs, atol=1e-6)
        futures = [thr.submit(x[i:i + 2]) for i in range(0, 5, 2)]
        got = np.concatenate([f.result(timeout=60).class_probs for f in futures])
        np.testing.assert_allclose(got, ref.class_probs, atol=1e-6)
        with pytest.raises(HamedgeError, match="expects a batch of shape"):
            thr.submit(np.zeros((1, 3, 64, 64), np.float32))


def test_bf16_is_refused_with_the_reason_on_a_cpu_without_it(bundle, monkeypatch):
    from hamedge.runtime import measure

    monkeypatch.setattr(measure, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(HamedgeError, match="bf16 needs a CPU with AMX or AVX-512 BF16"):
        open_backend(bundle, "openvino", "bf16")


def test_auto_picks_the_cpu_runtime_measured_faster(bundle, monkeypatch, tmp_path):
    from hamedge.runtime import measure

    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    # the measurement itself is real; which one wins here is the machine's business
    name, why = resolve_backend(bundle, "auto", "fp32")
    assert name in ("onnxruntime", "openvino") and "fastest CPU runtime" in why
    assert "measured now" in why and "no TensorRT engine" in why
    name2, why2 = resolve_backend(bundle, "auto", "fp32")
    assert name2 == name and "remembered" in why2
    # the decision rule: the smaller median wins
    monkeypatch.setattr(measure, "time_backend", lambda b: (b.close(), {"openvino": 1.0}.get(b.name, 2.0))[1])
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache2"))
    assert resolve_backend(bundle, "auto", "int8")[0] == "openvino"
    # only OpenVINO runs bf16 here (or neither, on a CPU without it)
    try:
        assert resolve_backend(bundle, "auto", "bf16")[0] == "openvino"
    except HamedgeError as exc:
        assert "bf16" in str(exc)
    with open_backend(bundle, "auto", "fp32") as opened:
        assert opened.name in ("onnxruntime", "openvino") and opened.selection_reason


def test_infer_prints_the_auto_choice_and_its_reason(bundle, tmp_path, capsys):
    from PIL import Image

    from hamedge.cli import run_app

    Image.fromarray(np.full((80, 70), 128, np.uint8)).save(tmp_path / "a.png")
    code = run_app(["infer", str(tmp_path / "a.png"), "--model", str(bundle.root),
                    "--out", str(tmp_path / "out"), "--heatmaps", "none"])
    assert code == 0
    err = capsys.readouterr().err
    assert "backend: " in err and "fastest CPU runtime" in err and "no TensorRT engine" in err


def test_folder_runs_keep_every_throughput_request_busy(bundle, tmp_path):
    """`hamedge infer` submits whole batches and keeps as many in flight as the compiled model
    has parallel requests; the rows are those of one-at-a-time calls, in order."""
    import json

    from PIL import Image

    from hamedge.gate import GateSettings
    from hamedge.pipeline import InferOptions, run_inference

    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.add.outer(np.arange(80), np.arange(70)).astype(np.uint8)
    for i in range(7):  # batches of 2, 2, 2 and a last one of 1
        Image.fromarray(np.roll(ramp, 9 * i, axis=0)).save(folder / f"x{i}.png")
    options = dict(batch=2, heatmaps="none", gate=GateSettings(accept_any=True))
    rows = {}
    for use in ("latency", "throughput"):
        with open_backend(bundle, "openvino", "fp32", use=use) as backend:
            busiest, outstanding, submit = [0], [], backend.submit

            def counting_submit(batch, submit=submit, outstanding=outstanding, busiest=busiest):
                future = submit(batch)
                outstanding.append(future)
                busiest[0] = max(busiest[0], sum(not f.done() for f in outstanding))
                return future

            backend.submit = counting_submit
            summary = run_inference([folder], backend, tmp_path / use, InferOptions(**options))
            assert summary.ok == 7
            if use == "throughput":
                assert backend.parallel_requests >= 2
                assert len(outstanding) == 4  # whole batches, not split per request
                assert busiest[0] >= 2, "the pipeline waited on each batch before submitting the next"
            else:
                assert backend.parallel_requests == 1
        rows[use] = [json.loads(line) for line in (tmp_path / use / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows["latency"]] == [r["path"] for r in rows["throughput"]]
    for a, b in zip(rows["latency"], rows["throughput"]):
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
