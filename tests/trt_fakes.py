"""Stand-ins for tensorrt, cuda-python and PyCUDA that behave like the real modules where
hamedge touches them: the same enum names and values per version, the same call signatures and
return tuples, the same context rules. Each one names the source it was checked against (the
NVIDIA/TensorRT repository's branches, cuda-python's runtime .pyx per wheel, PyCUDA's sources).
``tests/test_trt_nvidia.py`` compares them with the real packages where those can be imported.
"""

from __future__ import annotations

import enum
import types

# -- tensorrt ----------------------------------------------------------------------------------------
# BuilderFlag values: include/NvInfer.h `enum class BuilderFlag`, Python names from
# python/src/infer/pyCore.cpp, on release/8.5, release/10.3 and release/11.0 (11.0 has no FP16,
# INT8, BF16, FP8 or INT4: strongly typed only).
BUILDER_FLAGS = {
    "8.5": dict(FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3, STRICT_TYPES=4, REFIT=5,
                DISABLE_TIMING_CACHE=6, TF32=7, SPARSE_WEIGHTS=8, SAFETY_SCOPE=9,
                OBEY_PRECISION_CONSTRAINTS=10, PREFER_PRECISION_CONSTRAINTS=11, DIRECT_IO=12,
                REJECT_EMPTY_ALGORITHMS=13, ENABLE_TACTIC_HEURISTIC=14),
    "10.3": dict(FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, TF32=6,
                 SPARSE_WEIGHTS=7, SAFETY_SCOPE=8, OBEY_PRECISION_CONSTRAINTS=9,
                 PREFER_PRECISION_CONSTRAINTS=10, DIRECT_IO=11, REJECT_EMPTY_ALGORITHMS=12,
                 VERSION_COMPATIBLE=13, EXCLUDE_LEAN_RUNTIME=14, FP8=15,
                 ERROR_ON_TIMING_CACHE_MISS=16, BF16=17, DISABLE_COMPILATION_CACHE=18,
                 STRIP_PLAN=19, REFIT_IDENTICAL=20, WEIGHT_STREAMING=21, INT4=22,
                 REFIT_INDIVIDUAL=23),
    "11.0": dict(DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, TF32=6,
                 SPARSE_WEIGHTS=7, SAFETY_SCOPE=8, DIRECT_IO=11, VERSION_COMPATIBLE=12,
                 EXCLUDE_LEAN_RUNTIME=13, ERROR_ON_TIMING_CACHE_MISS=15,
                 DISABLE_COMPILATION_CACHE=17, STRIP_PLAN=18, REFIT_IDENTICAL=19,
                 WEIGHT_STREAMING=20, REFIT_INDIVIDUAL=22, STRICT_NANS=23, MONITOR_MEMORY=24,
                 EDITABLE_TIMING_CACHE=26, DISTRIBUTIVE_INDEPENDENCE=27),
}
BUILDER_FLAGS["10.13"] = BUILDER_FLAGS["10.3"]
# NetworkDefinitionCreationFlag: include/NvInfer.h on release/8.5 (kEXPLICIT_BATCH = 0,
# kEXPLICIT_PRECISION = 1), release/10.3 (kEXPLICIT_BATCH = 0 deprecated, kSTRONGLY_TYPED = 1),
# release/10.13 (+ kPREFER_JIT_PYTHON_PLUGINS = 2, kPREFER_AOT_PYTHON_PLUGINS = 3) and
# release/11.0 (kSTRONGLY_TYPED = 0 "deprecated and ignored", kPREFER_JIT = 1, kPREFER_AOT = 2).
NETWORK_FLAGS = {
    "8.5": dict(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1),
    "10.3": dict(EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
    "10.13": dict(EXPLICIT_BATCH=0, STRONGLY_TYPED=1, PREFER_JIT_PYTHON_PLUGINS=2,
                  PREFER_AOT_PYTHON_PLUGINS=3),
    "11.0": dict(STRONGLY_TYPED=0, PREFER_JIT_PYTHON_PLUGINS=1, PREFER_AOT_PYTHON_PLUGINS=2),
}
VERSIONS = {"8.5": "8.5.2.2", "10.3": "10.3.0.30", "10.13": "10.13.0.35", "11.0": "11.0.0.11"}


class FakeCudaState:
    """Which CUDA context is current, shared by the fake tensorrt and the fake CUDA modules: an
    engine deserialised in one context fails ("invalid resource handle") when enqueued in
    another, as on a real GPU. None current means the runtime API's primary context."""

    PRIMARY = "primary"

    def __init__(self) -> None:
        self.stack: list[str] = []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else self.PRIMARY


def fake_tensorrt(line: str, cuda: FakeCudaState | None = None, dla_cores: int = 0):
    """A tensorrt module of release line ``line`` ("8.5", "10.3", "10.13", "11.0"). ``calls``
    records what the builder and runtime were asked, in order."""
    cuda = cuda or FakeCudaState()
    calls: dict = {"flags": [], "order": [], "loaded_libraries": []}
    BuilderFlag = enum.IntEnum("BuilderFlag", BUILDER_FLAGS[line])
    NetFlag = enum.IntEnum("NetworkDefinitionCreationFlag", NETWORK_FLAGS[line])

    class Config:
        def __init__(self) -> None:
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            assert isinstance(flag, BuilderFlag)
            calls["flags"].append(flag.name)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

        def create_timing_cache(self, data):
            return types.SimpleNamespace(serialize=lambda: b"CACHE")

        def set_timing_cache(self, cache, ignore):
            pass

    class Profile:
        shapes = None

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own names
            self.shapes = (name, (tuple(min), tuple(opt), tuple(max)))

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            if line == "8.5" and not flags & (1 << NetFlag.EXPLICIT_BATCH):
                raise AssertionError("8.5 dynamic shapes need EXPLICIT_BATCH")
            calls["network_flags"] = flags
            return "network"

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.default_device_type == DeviceType.DLA:
                shapes = calls["profile"][1]
                if not shapes[0] == shapes[1] == shapes[2]:  # NvInferRuntime.h setDimensions
                    return None
            calls["order"].append("build")
            return b"PLAN-BYTES"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls["parsed"] = data
            calls["order"].append("parse")
            return True

    io = [("image", 0, (-1, 1, 64, 64)), ("class_probs", 1, (-1, 2)),
          ("anomaly_prob", 1, (-1, 1)), ("attention_maps", 1, (-1, 3, 4, 4))]
    TensorIOMode = enum.IntEnum("TensorIOMode", dict(NONE=0, INPUT=1, OUTPUT=2))

    class ExecutionContext:
        def __init__(self, engine):
            self.engine = engine

        def set_tensor_address(self, name, ptr):
            pass

        def set_input_shape(self, name, shape):
            calls["input_shape"] = tuple(shape)
            return True

        def execute_async_v3(self, stream):
            # A handle from another CUDA context: cudaErrorInvalidResourceHandle, and
            # execute_async_v3 returns False after logging it.
            if cuda.current != self.engine.cuda_context:
                calls["errors"] = calls.get("errors", 0) + 1
                return False
            if calls.get("fail_enqueue"):
                calls["fail_enqueue"] -= 1
                raise RuntimeError("operation not permitted when stream is capturing")
            calls["enqueues"] = calls.get("enqueues", 0) + 1
            return True

    class Engine:
        num_io_tensors = len(io)
        streamable_weights_size = 0

        def __init__(self, context: str) -> None:
            self.cuda_context = context

        def get_tensor_name(self, i):
            return io[i][0]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return next(shape for n, _, shape in io if n == name)

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            self.DLA_core = -1  # IRuntime::setDLACore: "Defaults to -1"

        def deserialize_cuda_engine(self, data):
            calls["order"].append("deserialize")
            calls["deserialize_dla_core"] = self.DLA_core
            calls["deserialize_context"] = cuda.current
            return Engine(cuda.current)

    class Registry:
        def get_creator(self, name, version, namespace=""):
            return None

    if not line.startswith("8."):
        # IPluginRegistry::loadLibrary / load_library: python/src/infer/pyPlugin.cpp on 10.x+
        def load_library(self, path):
            calls["loaded_libraries"].append(path)
            calls["order"].append("load_library")
            return object()

        Registry.load_library = load_library
    registry = Registry()

    class Logger:
        ERROR, WARNING = 1, 2

        def __init__(self, level=2):
            pass

    DeviceType = enum.IntEnum("DeviceType", dict(GPU=0, DLA=1))  # NvInferRuntime.h DeviceType
    trt = types.SimpleNamespace(
        __version__=VERSIONS[line], BuilderFlag=BuilderFlag, NetworkDefinitionCreationFlag=NetFlag,
        Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime, Logger=Logger,
        MemoryPoolType=enum.IntEnum("MemoryPoolType", dict(WORKSPACE=0)), DeviceType=DeviceType,
        get_plugin_registry=lambda: registry, TensorIOMode=TensorIOMode,
        nptype=lambda dtype: __import__("numpy").float32)
    return trt, calls


# -- cuda-python ---------------------------------------------------------------------------------
class cudaError_t(enum.IntEnum):
    # cuda-python's cudaError_t: cudaSuccess 0, cudaErrorInsufficientDriver 35, cudaErrorNoDevice
    # 100, cudaErrorStreamCaptureUnsupported 900, cudaErrorStreamCaptureInvalidated 901
    # (values read from the installed cuda-bindings 12.9.0 / 13.0.0 modules).
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class FakeCudart:
    """cuda-python's runtime module. ``major`` 11: cuda/cudart.pyx of cuda-python 11.8.3, where
    cudaGraphInstantiate(graph, pLogBuffer, bufferSize) -> (err, exec, errorNode) and a missing
    driver raises RuntimeError("Failed to dlopen libcuda.so.1") from the first call; 12 / 13:
    cuda/bindings/runtime.pyx of cuda-bindings 12.9.0 / 13.0.0, where
    cudaGraphInstantiate(graph, flags) -> (err, exec) and a missing or too old driver returns
    (cudaErrorInsufficientDriver, None). cudaGraphInstantiateWithFlags(graph, flags) ->
    (err, exec) in all three."""

    cudaError_t = cudaError_t
    cudaStreamCaptureStatus = cudaStreamCaptureStatus
    cudaStreamNonBlocking = 1
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0,
                                                  cudaStreamCaptureModeThreadLocal=1,
                                                  cudaStreamCaptureModeRelaxed=2)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, major: int = 12, driver: bool = True, gpu_name: bytes = b"Orin") -> None:
        self.major, self.driver, self.gpu_name = major, driver, gpu_name
        self.capturing = False
        self.calls: list[str] = []
        self._next = 0x1000

    def _need_driver(self):
        if self.driver:
            return None
        if self.major == 11:
            raise RuntimeError("Failed to dlopen libcuda.so.1")
        return (cudaError_t.cudaErrorInsufficientDriver, None)

    def _handle(self) -> int:
        self._next += 0x100
        return self._next

    def cudaGetDeviceCount(self):
        return self._need_driver() or (cudaError_t.cudaSuccess, 1)

    def cudaGetDeviceProperties(self, device):
        no = self._need_driver()
        if no:
            return no
        return (cudaError_t.cudaSuccess,
                types.SimpleNamespace(name=self.gpu_name + b"\x00" * 8, major=8, minor=7))

    def cudaGetErrorName(self, error):
        return (cudaError_t.cudaSuccess, cudaError_t(int(error)).name.encode())

    def cudaSetDevice(self, device):
        return self._need_driver() or (cudaError_t.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags):
        return (cudaError_t.cudaSuccess, self._handle())

    def cudaMalloc(self, size):
        return (cudaError_t.cudaSuccess, self._handle())

    def cudaMallocHost(self, size):
        import ctypes

        buf = ctypes.create_string_buffer(size)
        self.__dict__.setdefault("_host", []).append(buf)
        return (cudaError_t.cudaSuccess, ctypes.addressof(buf))

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append("memcpy")
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        if self.capturing:  # a stream already in capture mode cannot begin another
            return (cudaError_t.cudaErrorStreamCaptureInvalidated,)
        self.capturing = True
        self.calls.append("begin")
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        was = self.capturing
        self.capturing = False
        self.calls.append("end")
        if not was:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        return (cudaError_t.cudaSuccess, self._handle())

    def cudaStreamIsCapturing(self, stream):
        status = (cudaStreamCaptureStatus.cudaStreamCaptureStatusActive if self.capturing
                  else cudaStreamCaptureStatus.cudaStreamCaptureStatusNone)
        return (cudaError_t.cudaSuccess, status)

    def _instantiate_11(self, graph, pLogBuffer, bufferSize):  # noqa: N803 - cuda-python's names
        return (cudaError_t.cudaSuccess, self._handle(), self._handle())

    def _instantiate_12(self, graph, flags):
        return (cudaError_t.cudaSuccess, self._handle())

    @property
    def cudaGraphInstantiate(self):
        return self._instantiate_11 if self.major == 11 else self._instantiate_12

    def cudaGraphInstantiateWithFlags(self, graph, flags):
        self.calls.append("instantiate")
        return (cudaError_t.cudaSuccess, self._handle())

    def cudaGraphLaunch(self, graphExec, stream):  # noqa: N803
        self.calls.append("launch")
        return (cudaError_t.cudaSuccess,)

    def cudaEventCreate(self):
        return (cudaError_t.cudaSuccess, self._handle())

    def cudaEventRecord(self, event, stream):
        if self.capturing:
            self.calls.append("event-in-capture")
        return (cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):
        return (cudaError_t.cudaSuccess, 1.5)

    def cudaGraphExecDestroy(self, graphExec):  # noqa: N803
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        return (cudaError_t.cudaSuccess,)

    def cudaFree(self, devPtr):  # noqa: N803
        return (cudaError_t.cudaSuccess,)

    def cudaFreeHost(self, ptr):
        return (cudaError_t.cudaSuccess,)

    def cudaEventDestroy(self, event):
        return (cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        return (cudaError_t.cudaSuccess,)


# -- PyCUDA --------------------------------------------------------------------------------------
class FakePyCudaDriver:
    """pycuda.driver's context rules (inducer/pycuda: src/cpp/cuda.hpp, doc/driver.rst):
    Device.make_context() creates a new context and makes it current (what pycuda.autoinit does
    through tools.make_default_context); Device.retain_primary_context() returns the primary
    context without making it current; Context.push()/Context.pop() manage the thread's stack;
    memory calls need a current context."""

    class LogicError(RuntimeError):
        pass

    def __init__(self, state: FakeCudaState | None = None, ok: bool = True) -> None:
        self.state = state or FakeCudaState()
        self.ok = ok
        driver = self
        self.released = 0

        class Context:
            def __init__(self, name):
                self.name = name

            def push(self):
                driver.state.stack.append(self.name)

            @staticmethod
            def pop():
                driver.state.stack.pop()

            def detach(self):
                driver.released += 1

        class Device:
            def __init__(self, number):
                if not driver.ok:
                    raise driver.LogicError("cuDeviceGet failed: invalid device ordinal")

            def retain_primary_context(self):
                return Context(FakeCudaState.PRIMARY)

            def make_context(self):
                ctx = Context(f"private-{len(driver.state.stack)}")
                ctx.push()
                return ctx

            def compute_capability(self):
                return (8, 7)

            def name(self):
                return "Orin"

        class Stream:
            def __init__(self):
                driver._need_context("Stream")
                self.handle = 0x77
                self.context = driver.state.current

            def synchronize(self):
                pass

        class Event:
            def record(self, stream=None):
                return self

            def time_since(self, other):
                return 2.0

        self.Context, self.Device, self.Stream, self.Event = Context, Device, Stream, Event

    def _need_context(self, what):
        if not self.state.stack:
            raise self.LogicError(f"{what} failed: invalid device context - no currently active "
                                  "context?")

    def init(self):
        if not self.ok:
            raise self.LogicError("cuInit failed: no CUDA-capable device is detected")

    class DeviceAllocation:
        def __int__(self):
            return 0x2000

        def free(self):
            pass

    def mem_alloc(self, nbytes):
        self._need_context("mem_alloc")
        return self.DeviceAllocation()

    def pagelocked_empty(self, shape, dtype):
        import numpy as np

        self._need_context("pagelocked_empty")
        return np.zeros(shape, dtype)

    def memcpy_htod_async(self, dst, src, stream):
        self._need_context("memcpy_htod_async")

    def memcpy_dtoh_async(self, dst, src, stream):
        self._need_context("memcpy_dtoh_async")


# -- tensorrt.plugin -------------------------------------------------------------------------------
class FakeShapeExpr:
    """tensorrt.plugin.ShapeExpr (python/packaging/bindings_wheel/tensorrt/plugin/_tensor.py,
    NVIDIA/TensorRT release/10.9 to 11.1): no __int__; ``is_constant`` is a property,
    ``constant_value()`` a method that raises RuntimeError when not constant; a "fake" one
    (outside a shape context) raises on ``is_constant`` too."""

    def __init__(self, value: int | None = None, fake: bool = False) -> None:
        self._value, self._fake = value, fake

    @property
    def is_fake(self) -> bool:
        return self._fake

    @property
    def is_constant(self) -> bool:
        if self._fake:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's. Check is_fake to determine "
                               "accessibility.")
        return self._value is not None

    def constant_value(self) -> int:
        if not self.is_constant:
            raise RuntimeError("Not accessible for non-constant shape expressions. Check "
                               "is_constant to determine accessibility.")
        return self._value
