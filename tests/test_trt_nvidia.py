"""The TensorRT path against NVIDIA's real APIs, without a GPU: the builder, the runtime backend,
the CUDA helpers and the Python plugin driven through fakes that behave like tensorrt 8.5 /
10.3 / 10.13 / 11.0, cuda-python 11.8 / 12 / 13 and PyCUDA (tests/trt_fakes.py), and the fakes
compared with the real packages where those can be imported."""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest

from hamedge.bundle import PLUGIN_GRAPH, BundleWriter, EngineRecord, GraphInfo
from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.spec import ModelSpec
from hamedge.trt import cuda as trt_cuda
from hamedge.trt.build import build_engine, features, network_flags
from hamedge.trt.engines import GpuInfo, gpu_info, record_plugin, select_engine
from trt_fakes import (FakeCudart, FakeCudaState, FakePyCudaDriver, cudaError_t, fake_tensorrt)

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))
ORIN = GpuInfo("Orin", "8.7")


@pytest.fixture()
def bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMEDGE_CACHE", str(tmp_path / "cache"))
    with BundleWriter(tmp_path / "b") as w:
        w.write_spec(SPEC, GraphInfo(1, 64, "raw", SPEC.feature_size, 17), {})
        w.write_bytes("model.onnx", b"FP32-ONNX")
        w.write_bytes("model.int8.onnx", b"QDQ-ONNX")
        w.write_bytes(PLUGIN_GRAPH, b"PLUGIN-ONNX")
        return w.commit()


def use_gpu(monkeypatch, trt, cudart=None, pycuda=None):
    """Install fake tensorrt / cuda-python / PyCUDA modules for the code under test."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_cuda, "load_cudart", lambda: cudart)
    if pycuda is None:
        monkeypatch.setitem(sys.modules, "pycuda", None)
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    else:
        monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=pycuda))
        monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda)


def open_trt(bundle, **kw):
    from hamedge.runtime.tensorrt import TensorRTBackend

    return TensorRTBackend(bundle, build=False, **kw)


BATCH = np.zeros((2, 1, 64, 64), np.float32)


# -- 3: CUDA graphs on cuda-python 11.8 and 12/13 ---------------------------------------------------
@pytest.mark.parametrize("major", [11, 12, 13])
def test_cuda_graph_capture_works_on_every_cuda_python(bundle, monkeypatch, major):
    trt, calls = fake_tensorrt("10.3")
    cudart = FakeCudart(major)
    use_gpu(monkeypatch, trt, cudart)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    with open_trt(bundle, precision="fp16") as backend:
        backend.run(BATCH)
        backend.run(BATCH)  # replay
        assert backend.last_inference_time() == pytest.approx(1.5e-3)
    assert cudart.calls.count("instantiate") == 1 and cudart.calls.count("launch") == 2
    assert "event-in-capture" not in cudart.calls  # timing events stay outside the graph


@pytest.mark.parametrize("device", ["cpu", "cuda:1", "GPU"])
def test_a_device_it_would_not_run_on_is_refused(bundle, monkeypatch, device):
    trt, _ = fake_tensorrt("10.3")
    use_gpu(monkeypatch, trt, FakeCudart(12))
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    with pytest.raises(HamedgeError, match=f"not '{device}'"):
        open_trt(bundle, precision="fp16", device=device)
    with open_trt(bundle, precision="fp16", device="cuda:0") as backend:
        assert backend.run(BATCH).class_probs.shape[0] == 2


def test_fake_cudart_instantiate_differs_like_the_real_versions():
    # The reason the helper uses cudaGraphInstantiateWithFlags: cudaGraphInstantiate(graph, 0)
    # is a TypeError on 11.8 (three parameters) and returns two values on 12/13.
    with pytest.raises(TypeError):
        FakeCudart(11).cudaGraphInstantiate("g", 0)
    assert len(FakeCudart(11).cudaGraphInstantiate("g", None, 0)) == 3
    assert len(FakeCudart(12).cudaGraphInstantiate("g", 0)) == 2


# -- 5: a failure during capture ends the capture and falls back ------------------------------------
def test_failed_capture_leaves_capture_mode_and_runs_plainly(bundle, monkeypatch):
    trt, calls = fake_tensorrt("10.3")
    cudart = FakeCudart(12)
    use_gpu(monkeypatch, trt, cudart)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    with open_trt(bundle, precision="fp16") as backend:
        original = backend._enqueue

        def fail_under_capture(b):
            if cudart.capturing:  # what a plugin or weight streaming does under capture
                raise RuntimeError("operation not permitted when stream is capturing")
            original(b)

        backend._enqueue = fail_under_capture
        with pytest.warns(RuntimeWarning, match="capture failed"):
            out = backend.run(BATCH)
        assert len(out) == 2 and not cudart.capturing and not backend.use_graphs
        backend.run(BATCH)  # plain enqueues from now on, the stream is usable
    assert cudart.calls.count("end") == 1 and "launch" not in cudart.calls


def test_weight_streaming_engines_are_not_captured(bundle, monkeypatch):
    trt, calls = fake_tensorrt("10.3")
    cudart = FakeCudart(12)
    use_gpu(monkeypatch, trt, cudart)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    original = trt.Runtime.deserialize_cuda_engine

    def streaming(self, data):
        engine = original(self, data)
        engine.streamable_weights_size = 1 << 20
        return engine

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", streaming)
    with open_trt(bundle, precision="fp16") as backend:
        backend.run(BATCH)
        assert not backend.use_graphs and "begin" not in cudart.calls


# -- 6: cuda-python without a driver falls back to PyCUDA -------------------------------------------
@pytest.mark.parametrize("major", [11, 12, 13])
def test_driverless_cuda_python_falls_back_to_pycuda(monkeypatch, major):
    trt, _ = fake_tensorrt("10.3")
    use_gpu(monkeypatch, trt, FakeCudart(major, driver=False), FakePyCudaDriver())
    assert gpu_info() == ORIN
    assert isinstance(trt_cuda.cuda_api(), trt_cuda.PyCuda)
    use_gpu(monkeypatch, trt, FakeCudart(major, driver=False), None)
    assert gpu_info() is None
    with pytest.raises(BackendUnavailable, match="cuda-python.*PyCUDA"):
        trt_cuda.cuda_api()


def test_real_cuda_python_without_a_driver_is_no_gpu_and_no_crash():
    real = trt_cuda.load_cudart()
    if real is None:
        pytest.skip("cuda-python is not installed (pip install cuda-bindings)")
    try:
        err, _ = real.cudaGetDeviceCount()
    except RuntimeError as exc:  # cuda-python 11.8: "Failed to dlopen libcuda.so.1", as the fake
        assert "libcuda" in str(exc)
        with pytest.raises(BackendUnavailable, match="cannot reach the CUDA driver"):
            trt_cuda.CudaPython()
        return
    if int(err) == 0:
        pytest.skip("this machine has a CUDA driver and GPU")
    assert int(err) == cudaError_t.cudaErrorInsufficientDriver  # the fake's answer is the real one
    with pytest.raises(BackendUnavailable, match="cudaErrorInsufficientDriver"):
        trt_cuda.CudaPython()
    assert gpu_info() is None or gpu_info().name  # PyCUDA, if any, answers instead


def test_fake_cudart_signatures_match_the_real_module():
    real = trt_cuda.load_cudart()
    if real is None:
        pytest.skip("cuda-python is not installed (pip install cuda-bindings)")
    major = 11 if "cuda.cudart" == real.__name__ else 12
    fake = FakeCudart(major)
    names = [n for n in dir(FakeCudart) if n.startswith("cuda") and callable(getattr(fake, n))
             and not isinstance(getattr(FakeCudart, n), type) and n != "cudaGraphInstantiate"]
    assert "cudaGraphInstantiateWithFlags" in names and "cudaStreamEndCapture" in names
    for name in names:
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        fake_params = list(inspect.signature(getattr(fake, name)).parameters)
        assert fake_params == real_params, name
    real_params = list(inspect.signature(real.cudaGraphInstantiate).parameters)
    assert real_params == list(inspect.signature(fake.cudaGraphInstantiate).parameters)
    assert real_params == (["graph", "pLogBuffer", "bufferSize"] if major == 11 else ["graph", "flags"])
    for member in cudaError_t:
        assert int(getattr(real.cudaError_t, member.name)) == int(member)
    assert int(real.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal) == 1


# -- 4: PyCUDA works in the primary context TensorRT uses --------------------------------------------
def test_pycuda_buffers_and_enqueue_share_the_engines_context(bundle, monkeypatch):
    state = FakeCudaState()
    trt, calls = fake_tensorrt("10.3", cuda=state)
    driver = FakePyCudaDriver(state)
    use_gpu(monkeypatch, trt, FakeCudart(12, driver=False), driver)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    with open_trt(bundle, precision="fp16") as backend:
        assert isinstance(backend.cuda, trt_cuda.PyCuda)
        assert calls["deserialize_context"] == FakeCudaState.PRIMARY
        backend.run(BATCH)
        backend.run(BATCH)
        assert calls["enqueues"] == 2 and "errors" not in calls
        assert state.stack == []  # pushed only for the duration of each call
    assert driver.released == 1


def test_a_second_pycuda_context_is_what_breaks_the_enqueue(bundle, monkeypatch):
    # The fake's rule, shown with what pycuda.autoinit does (make_default_context).
    state = FakeCudaState()
    trt, calls = fake_tensorrt("10.3", cuda=state)
    driver = FakePyCudaDriver(state)
    use_gpu(monkeypatch, trt, FakeCudart(12, driver=False), driver)
    build_engine(bundle, "fp16", trt=trt, gpu=ORIN)
    engine = trt.Runtime(None).deserialize_cuda_engine(b"")
    driver.Device(0).make_context()
    assert engine.create_execution_context().execute_async_v3(0) is False


# -- 7: DLA ---------------------------------------------------------------------------------------
def test_dla_build_uses_one_fixed_batch_and_fp16_or_int8(bundle, monkeypatch):
    trt, calls = fake_tensorrt("10.3", dla_cores=2)
    rec = build_engine(bundle, "fp16", min_batch=1, opt_batch=4, max_batch=8, dla_core=1,
                       trt=trt, gpu=ORIN)
    assert calls["profile"][1] == ((8, 1, 64, 64),) * 3
    assert (rec.min_batch, rec.opt_batch, rec.max_batch, rec.dla_core) == (8, 8, 8, 1)
    assert calls["config"].DLA_core == 1 and calls["config"].default_device_type == trt.DeviceType.DLA
    assert "GPU_FALLBACK" in calls["flags"] and "FP16" in calls["flags"]
    with pytest.raises(HamedgeError, match="DLA runs fp16 or int8"):
        build_engine(bundle, "fp32", dla_core=0, trt=trt, gpu=ORIN)


def test_dla_runtime_sets_the_core_before_deserialising_and_pads_the_batch(bundle, monkeypatch):
    trt, calls = fake_tensorrt("10.3", dla_cores=2)
    use_gpu(monkeypatch, trt, FakeCudart(12))
    build_engine(bundle, "int8", max_batch=4, dla_core=1, trt=trt, gpu=ORIN)
    with pytest.raises(BackendUnavailable, match="runs on DLA core 1, not the GPU"):
        open_trt(bundle, precision="int8")
    with open_trt(bundle, precision="int8", dla_core=1) as backend:
        assert calls["deserialize_dla_core"] == 1
        out = backend.run(BATCH)
        assert len(out) == 2 and calls["input_shape"][0] == 4  # fixed batch: padded


def test_select_engine_honours_the_dla_core_and_the_plugin():
    base = dict(gpu_name="Orin", compute_capability="8.7", trt_version="10.3.0",
                precision="fp16", min_batch=4, opt_batch=4, max_batch=4, onnx_file="model.onnx",
                onnx_sha256="0" * 64)
    gpu = EngineRecord(plan="g.plan", **base)
    dla0 = EngineRecord(plan="d0.plan", dla_core=0, **base)
    fused = EngineRecord(plan="p.plan", **dict(base, onnx_file=PLUGIN_GRAPH),
                         extra={"fused_plugin": "library"})
    records = [dla0, fused, gpu]
    assert select_engine(records, ORIN, "10.3.0", "fp16")[0] is gpu
    assert select_engine(records, ORIN, "10.3.0", "fp16", dla_core=0)[0] is dla0
    assert select_engine(records, ORIN, "10.3.0", "fp16", fused_plugin=True)[0] is fused
    rec, why = select_engine(records, ORIN, "10.3.0", "fp16", dla_core=1)
    assert rec is None and any("not DLA core 1" in w for w in why)
    assert record_plugin(fused) == "library" and record_plugin(gpu) is None


# -- 11: the fused plugin through build, record and runtime -------------------------------------------
def test_plugin_library_is_loaded_before_parse_and_before_deserialise(bundle, monkeypatch, tmp_path):
    lib = tmp_path / "libhamedge_fused_refine.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv("HAMEDGE_FUSED_PLUGIN_LIB", str(lib))
    trt, calls = fake_tensorrt("10.3")
    use_gpu(monkeypatch, trt, FakeCudart(12))
    rec = build_engine(bundle, "fp16", fused_plugin="library", trt=trt, gpu=ORIN)
    assert calls["parsed"] == b"PLUGIN-ONNX" and calls["order"][:2] == ["load_library", "parse"]
    assert rec.onnx_file == PLUGIN_GRAPH and rec.plan.endswith("_plugin.plan")
    assert rec.extra["fused_plugin"] == "library" and rec.extra["plugin_loaded"] == str(lib)
    calls["order"].clear()
    with open_trt(bundle, precision="fp16", fused_plugin=True) as backend:
        assert calls["order"][:2] == ["load_library", "deserialize"]
        assert backend.heatmaps_refined and backend.record == rec
    with pytest.raises(HamedgeError, match="float graph"):
        build_engine(bundle, "int8", fused_plugin="library", trt=trt, gpu=ORIN)


def test_plugin_library_needs_tensorrt_10(bundle, monkeypatch, tmp_path):
    lib = tmp_path / "libhamedge_fused_refine.so"
    lib.write_bytes(b"\x7fELF")
    trt, _ = fake_tensorrt("8.5")
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10"):
        build_engine(bundle, "fp16", fused_plugin="library", plugin_library=lib, trt=trt, gpu=ORIN)


@pytest.mark.parametrize("line, bit", [("10.13", 3), ("11.0", 2)])
def test_python_plugin_engines_ask_for_the_aot_implementation(line, bit):
    trt, _ = fake_tensorrt(line)
    assert network_flags(trt, features(trt), python_plugin=True) & (1 << bit)
    assert not network_flags(trt, features(trt), python_plugin=False) & (1 << bit)


def test_trt85_network_is_explicit_batch_only():
    trt, _ = fake_tensorrt("8.5")
    assert network_flags(trt, features(trt), python_plugin=True) == 1 << 0


def test_tensorrt_packages_import_in_one_direction():
    """hamedge.trt never imports the runtime backend (the backend imports hamedge.trt)."""
    import ast
    from pathlib import Path

    import hamedge.trt

    for path in Path(hamedge.trt.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("hamedge.runtime") for n in names), (path.name, names)


@pytest.mark.parametrize("aot", [True, False])
def test_python_plugin_engines_need_the_definitions_only_when_jit(bundle, monkeypatch, aot):
    from hamedge.kernels import trt_plugin

    trt, calls = fake_tensorrt("10.13")
    use_gpu(monkeypatch, trt, FakeCudart(12))
    monkeypatch.setattr(trt_plugin, "load", lambda kind, trt, library=None: kind)
    monkeypatch.setattr(trt_plugin, "aot_available", lambda: (aot, ""))
    rec = build_engine(bundle, "fp16", fused_plugin="python", trt=trt, gpu=ORIN)
    assert calls["network_flags"] & (1 << 3)  # PREFER_AOT_PYTHON_PLUGINS on 10.13
    assert rec.extra["plugin_loaded"] == f"python ({'aot' if aot else 'jit'})"

    def unavailable(kind, trt, library=None):
        raise BackendUnavailable("FusedRefine TensorRT plugin: Triton is not installed")

    monkeypatch.setattr(trt_plugin, "load", unavailable)
    if aot:
        with open_trt(bundle, precision="fp16", fused_plugin=True) as backend:
            assert backend.record == rec
    else:
        with pytest.raises(BackendUnavailable, match="Triton"):
            open_trt(bundle, precision="fp16", fused_plugin=True)


# -- 2: ShapeExpr has no __int__ ------------------------------------------------------------------
def test_static_dim_reads_shape_exprs_without_int():
    from hamedge.kernels.trt_plugin import static_dim
    from trt_fakes import FakeShapeExpr

    with pytest.raises(TypeError):
        int(FakeShapeExpr(16))  # what the AOT implementation used to do
    assert static_dim(FakeShapeExpr(16), "map height") == 16
    with pytest.raises(ValueError, match="static map width"):
        static_dim(FakeShapeExpr(None), "map width")
    with pytest.raises(ValueError, match="static"):
        static_dim(FakeShapeExpr(fake=True), "map width")


# -- 1: the plugin's type hints are classes, as tensorrt.plugin's checks need ---------------------
def test_plugin_definitions_carry_real_type_hints():
    """What tensorrt.plugin's _validate.py does first (release/10.6 to 11.1): read each hint with
    inspect.signature() and issubclass() it; strings (a __future__ import) raise TypeError."""
    from hamedge.kernels import trt_plugin

    class TensorDesc:
        pass

    class Tensor:
        pass

    seen = []

    def checking(kind):
        def decorator_factory(plugin_id):
            def decorator(func):
                for param in inspect.signature(func).parameters.values():
                    hint = param.annotation
                    args = getattr(hint, "__args__", None) or (hint,)
                    for arg in args:
                        assert not isinstance(arg, str), f"{kind} {param.name}: string hint {arg!r}"
                        issubclass(arg, object)
                seen.append(kind)
                return func
            return decorator
        return decorator_factory

    trtp = types.SimpleNamespace(TensorDesc=TensorDesc, Tensor=Tensor, KernelLaunchParams=object,
                                 SymIntExprs=object, register=checking("register"),
                                 impl=checking("impl"), aot_impl=checking("aot_impl"))
    trt_plugin.define(trtp, types.SimpleNamespace(float16="half"), aot=True)
    assert seen == ["register", "aot_impl", "impl"]
