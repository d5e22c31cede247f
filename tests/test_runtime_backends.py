"""hamedge.runtime: torch-free import, backend parity, selection and TensorRT planning logic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infer_helpers import make_bundle
from hamedge.bundle import Bundle, EngineRecord
from hamedge.errors import BackendUnavailable, BundleError, HamedgeError
from hamedge.runtime import RawOutputs, open_backend, resolve_backend
from hamedge.runtime.tensorrt import GpuInfo, engine_mismatch, plan_buffers, select_engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rt") / "tiny.hamedge", int8=True,
                       int8_targets=("cpu", "tensorrt"))


def test_runtime_and_onnxruntime_backend_do_not_import_torch(bundle_dir):
    code = (
        "import sys, numpy as np\n"
        "import hamedge.runtime, hamedge.runtime.onnxruntime, hamedge.heatmap\n"
        "from hamedge.runtime import open_backend\n"
        f"b = open_backend({str(bundle_dir)!r}, 'onnxruntime')\n"
        "out = b.run(np.zeros((2, *b.input_shape), np.float32))\n"
        "assert out.class_probs.shape == (2, 14)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _batch(channels: int, n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, channels, size, size)).astype(np.float32)


def test_onnxruntime_matches_torch_reference(bundle_dir):
    x1 = _batch(1)
    with open_backend(bundle_dir, "onnxruntime", "fp32") as ort_b, \
            open_backend(bundle_dir, "torch", "fp32") as torch_b:
        assert ort_b.input_shape == (1, 64, 64)  # folded grayscale graph
        assert torch_b.input_shape == (3, 64, 64)
        a = ort_b.run(x1)
        b = torch_b.run(np.repeat(x1, 3, axis=1))
    assert isinstance(a, RawOutputs) and len(a) == 3 and not a.heatmaps_refined
    assert a.class_probs.shape == (3, 14) and a.anomaly_prob.shape == (3, 1)
    assert a.attention_maps.shape == (3, 15, 2, 2)
    # The fp32 tolerance every backend is held to: 1e-4 on probabilities.
    np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-4)
    np.testing.assert_allclose(a.anomaly_prob, b.anomaly_prob, atol=1e-4)
    scale = float(np.abs(b.attention_maps).max())
    np.testing.assert_allclose(a.attention_maps, b.attention_maps, atol=1e-4 * scale)


def test_onnxruntime_int8_runs_the_graph_measured_fastest_and_stays_close(bundle_dir, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    with open_backend(bundle_dir, "onnxruntime", "int8") as q, \
            open_backend(bundle_dir, "onnxruntime", "fp32") as f:
        choice = q.int8_choice
        assert set(choice.ms) == {"model.int8.onnx", "model.int8.cpu.onnx"} and not choice.cached
        assert q.model_path.name == choice.chosen == min(choice.ms, key=choice.ms.get)
        x = _batch(1)
        dq = np.abs(q.run(x).class_probs - f.run(x).class_probs).max()
    assert dq < 0.1  # random weights and calibration: loose, but it catches a broken graph
    with open_backend(bundle_dir, "onnxruntime", "int8") as again:
        assert again.int8_choice.cached and again.model_path.name == choice.chosen


def test_onnxruntime_int8_measures_only_graphs_the_guard_passed(bundle_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    bundle = Bundle.open(bundle_dir)
    refused = {"model.int8.cpu.onnx": "the export guard measured a mean AUC drop of 0.02"}
    monkeypatch.setattr(Bundle, "guard_refusal",
                        lambda self, backend, precision, rel=None: refused.get(rel))
    with open_backend(bundle, "onnxruntime", "int8") as q:
        assert q.model_path.name == "model.int8.onnx" and q.int8_choice is None
    refused["model.int8.onnx"] = "both refused"
    with pytest.raises(HamedgeError, match="AUC drop of 0.02|both refused"):
        open_backend(bundle, "onnxruntime", "int8")


def test_batch_is_split_at_max_batch_and_results_are_independent(bundle_dir):
    with open_backend(bundle_dir, "onnxruntime") as b:
        x = _batch(1, n=5)
        whole = b.run(x)
        b.max_batch = 2
        split = b.run(x)
        single = b.run(x[3:4])
    np.testing.assert_allclose(whole.class_probs, split.class_probs, atol=1e-6)
    np.testing.assert_allclose(whole.class_probs[3:4], single.class_probs, atol=1e-5)
    assert len(whole[1:3]) == 2


def test_wrong_shape_and_closed_backend(bundle_dir):
    b = open_backend(bundle_dir, "onnxruntime")
    with pytest.raises(HamedgeError, match="expects a batch of shape"):
        b.run(np.zeros((1, 3, 64, 64), np.float32))
    b.close()
    with pytest.raises(RuntimeError):
        b.run(np.zeros((1, 1, 64, 64), np.float32))


def test_user_errors(bundle_dir):
    with pytest.raises(HamedgeError, match="unknown backend"):
        open_backend(bundle_dir, "nosuch")
    with pytest.raises(HamedgeError, match="unknown precision"):
        open_backend(bundle_dir, "onnxruntime", "int4")
    with pytest.raises(HamedgeError, match="runs fp32, int8, not fp16"):
        open_backend(bundle_dir, "onnxruntime", "fp16")
    with pytest.raises(BackendUnavailable):
        open_backend(bundle_dir, "onnxruntime", "fp32", device="cuda")


def test_tampered_bundle_is_refused(tmp_path):
    target = make_bundle(tmp_path / "b.hamedge")
    data = bytearray((target / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (target / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        open_backend(target)


def _record(**changes) -> EngineRecord:
    base = dict(plan="a.plan", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                trt_version="10.3.0.26", precision="fp16", min_batch=1, opt_batch=8, max_batch=32,
                onnx_file="model.onnx", onnx_sha256="0" * 64)
    base.update(changes)
    return EngineRecord(**base)


def test_engine_selection_logic():
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    orin = GpuInfo("Orin", "8.7")
    good = _record()
    assert engine_mismatch(good, h100, "10.3.0.26", "fp16") is None
    assert engine_mismatch(good, h100, "10.3.0.26.post1", "fp16") is None
    assert "built for" in engine_mismatch(good, orin, "10.3.0.26", "fp16")
    assert "TensorRT 10.3.0.26, this is TensorRT 10.4" in engine_mismatch(good, h100, "10.4.0", "fp16")
    assert "is fp16, not int8" in engine_mismatch(good, h100, "10.3.0.26", "int8")
    records = [_record(plan="x.plan", gpu_name="Orin", compute_capability="8.7"), good]
    assert select_engine(records, h100, "10.3.0.26", "fp16")[0] is good
    rec, reasons = select_engine(records, orin, "10.3.0.26", "int8")
    assert rec is None and len(reasons) == 2
    assert select_engine([], None, None, "fp16")[1] == ["TensorRT is not installed"]
    assert select_engine([], None, "10.3", "fp16")[1] == ["no CUDA GPU found"]
    assert select_engine([], h100, "10.3", "fp16")[1] == ["the bundle has no fp16 engine"]


def test_auto_picks_tensorrt_only_with_matching_engine(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    h100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    name, why = resolve_backend(bundle, "auto", "fp16", gpu=h100, trt_version="10.3.0", probe=False)
    assert name == "onnxruntime" and "no fp16 engine" in why
    bundle.add_engine(b"not really a plan", _record(trt_version="10.3.0"))
    name, _ = resolve_backend(bundle, "auto", "fp16", gpu=h100, trt_version="10.3.0", probe=False)
    assert name == "tensorrt"
    name, why = resolve_backend(bundle, "auto", "fp16", gpu=None, trt_version="10.3.0", probe=False)
    assert name == "onnxruntime" and "no CUDA GPU" in why
    # Without TensorRT auto lands on a CPU runtime (OpenVINO runs fp16 on CPUs with AVX512-FP16)
    name, why = resolve_backend(bundle, "auto", "fp32")
    assert name in ("onnxruntime", "openvino") and "no TensorRT engine" in why


def test_buffer_plan_sizes():
    io = [("image", True, (-1, 1, 64, 64), np.float32),
          ("class_probs", False, (-1, 14), np.float32),
          ("anomaly_prob", False, (-1, 1), np.float32),
          ("attention_maps", False, (-1, 15, 2, 2), np.float16)]
    plans = {p.name: p for p in plan_buffers(io, max_batch=8)}
    assert plans["image"].shape == (8, 1, 64, 64)
    assert plans["image"].nbytes == 8 * 64 * 64 * 4
    assert plans["attention_maps"].nbytes == 8 * 15 * 4 * 2
    assert plans["attention_maps"].bytes_for(3) == 3 * 15 * 4 * 2
    with pytest.raises(HamedgeError, match="lacks output"):
        plan_buffers(io[:2], 4)
    with pytest.raises(HamedgeError, match="dynamic non-batch"):
        plan_buffers([("image", True, (-1, 1, -1, 64), np.float32)] + io[1:], 4)


def test_tensorrt_backend_unavailable_is_one_clear_line(bundle_dir):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
            open_backend(bundle_dir, "tensorrt", "fp16")
    else:  # pragma: no cover - machines with TensorRT
        pytest.skip("TensorRT present: the GPU path is exercised by the GPU tests")


def _trt_gpu_reason() -> str | None:
    from hamedge.runtime.tensorrt import gpu_info, tensorrt_version

    if tensorrt_version() is None:
        return "TensorRT is not installed (GPU machines with TensorRT run this)"
    if gpu_info() is None:
        return "no CUDA GPU visible to cuda-python/PyCUDA"
    return None


def test_tensorrt_matches_onnxruntime(tmp_path):
    reason = _trt_gpu_reason()
    if reason:
        pytest.skip(reason)
    target = make_bundle(tmp_path / "trt.hamedge")  # pragma: no cover - GPU machines only
    x = _batch(1, n=4)
    with open_backend(target, "tensorrt", "fp32", max_batch=8) as trt_b, \
            open_backend(target, "onnxruntime", "fp32") as ort_b:
        first, again = trt_b.run(x), trt_b.run(x)  # the second call replays the CUDA graph
        ref = ort_b.run(x)
    np.testing.assert_allclose(first.class_probs, ref.class_probs, atol=1e-3)
    np.testing.assert_array_equal(first.class_probs, again.class_probs)


def test_torch_refine_on_device_matches_numpy_refinement(bundle_dir):
    from hamedge.pipeline import predictions_from_outputs

    x = np.repeat(_batch(1, n=2), 3, axis=1)
    with open_backend(bundle_dir, "torch", refine_on_device=True) as fused, \
            open_backend(bundle_dir, "torch") as plain:
        a, b = fused.run(x), plain.run(x)
    assert a.heatmaps_refined and a.attention_maps.shape == (2, 15, 64, 64)
    pa = predictions_from_outputs(a, fused.spec, [(64, 64)] * 2)
    pb = predictions_from_outputs(b, plain.spec, [(64, 64)] * 2)
    for name in ("anomaly", "Mass"):
        assert np.abs(pa[1].heatmap(name) - pb[1].heatmap(name)).max() < 1e-3


def test_onnxruntime_on_cuda_runs_the_symmetric_int8_graph(bundle_dir):
    """The U8S8 CPU form is ONNX Runtime's x86 fast path; on the CUDA provider the bundle's
    S8S8 graph is the one to run (it used to take the CPU form whatever the provider)."""
    from hamedge.runtime.onnxruntime import graph_target

    bundle = Bundle.open(bundle_dir)
    assert graph_target(["CPUExecutionProvider"]) == "cpu"
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert bundle.path_for("int8", graph_target(cuda)).name == "model.int8.onnx"
    assert bundle.path_for("int8", graph_target(["CPUExecutionProvider"])).name == "model.int8.cpu.onnx"


def test_onnxruntime_cuda_device_index_reaches_the_provider():
    from hamedge.runtime.onnxruntime import choose_providers, graph_target

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", both) == both
    chosen = choose_providers("cuda:1", both)
    assert chosen == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert graph_target(chosen) == "tensorrt"
    with pytest.raises(HamedgeError, match="unknown device 'cudax'"):
        choose_providers("cudax", both)


def test_onnxruntime_opens_the_graph_for_its_provider(bundle_dir, monkeypatch):
    """Open with the CUDA provider chosen (the real session then refuses a provider this
    onnxruntime lacks, so the path it was given is what we check)."""
    import onnxruntime as ort

    from hamedge.runtime import onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    seen = []
    real = ort.InferenceSession

    def session(path, options, providers):
        seen.append((path, providers[0]))
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    with open_backend(bundle_dir, "onnxruntime", "int8", device="cuda") as b:
        assert b.device == "cuda"
    assert seen[0][0].endswith("model.int8.onnx") and seen[0][1] == "CUDAExecutionProvider"


def test_misspelt_option_is_refused_and_none_means_default(bundle_dir):
    with pytest.raises(HamedgeError, match="takes no option 'thread'"):
        open_backend(bundle_dir, "onnxruntime", thread=2)
    with pytest.raises(HamedgeError, match="takes no option 'max_batch'"):
        open_backend(bundle_dir, "onnxruntime", max_batch=4)
    with open_backend(bundle_dir, "onnxruntime", threads=None) as b:
        assert b.artifact.name == "model.onnx"
