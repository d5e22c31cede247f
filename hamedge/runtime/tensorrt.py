"""TensorRT backend: engines from the bundle, buffers through cuda-python (or PyCUDA), no torch.

Everything heavy (tensorrt, cuda.bindings, pycuda) is imported lazily when the backend opens.
The logic around the engine -- which engine record fits this GPU and TensorRT version, how big the
buffers are -- is plain Python so it is tested on machines without a GPU.

Run path per batch of B images: copy the batch into a pinned host buffer, then on a dedicated
stream: H2D copy, ``execute_async_v3``, D2H copies, one synchronise. For each fixed B seen, that
sequence is captured once as a CUDA graph (after one warm-up enqueue) and replayed after
(cuda-python only; PyCUDA enqueues each time). Buffers are allocated once at the profile's
maximum batch, so the captured addresses never change.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime.base import OUTPUT_NAMES, Backend, RawOutputs


# -- facts about this machine (lazy, never raise) -------------------------------------------------
def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except Exception:
        return None
    return str(trt.__version__)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"


def gpu_info(device: int = 0) -> GpuInfo | None:
    """The GPU's name and compute capability, through cuda-python or PyCUDA; None without a GPU."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        try:
            err, props = cudart.cudaGetDeviceProperties(device)
            if int(err) == 0:
                name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
                return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}")
        except Exception:
            pass
        return None
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return GpuInfo(dev.name(), f"{major}.{minor}")
    except Exception:
        return None


# -- engine selection (pure logic) -----------------------------------------------------------------
def engine_mismatch(record, gpu: GpuInfo, trt_version: str, precision: str) -> str | None:
    """Why this engine record cannot run here (one line), or None when it fits.

    A plan runs only on the GPU model and TensorRT version that built it (TensorRT's rule); we
    compare the GPU name and compute capability, and the TensorRT major.minor.patch version.
    """
    if record.precision != precision:
        return f"engine {record.plan} is {record.precision}, not {precision}"
    if record.builder != "tensorrt":
        return f"engine {record.plan} was built by {record.builder}"
    if record.gpu_name != gpu.name or record.compute_capability != gpu.compute_capability:
        return (f"engine {record.plan} was built for {record.gpu_name} (sm {record.compute_capability}), "
                f"this GPU is {gpu.name} (sm {gpu.compute_capability})")
    if _version_key(record.trt_version) != _version_key(trt_version):
        return (f"engine {record.plan} was built with TensorRT {record.trt_version}, "
                f"this is TensorRT {trt_version}")
    return None


def _version_key(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:3])


def select_engine(records, gpu: GpuInfo | None, trt_version: str | None, precision: str):
    """(record or None, reasons): the first engine record that runs here, else why none does."""
    if trt_version is None:
        return None, ["TensorRT is not installed"]
    if gpu is None:
        return None, ["no CUDA GPU found"]
    reasons = []
    for record in records:
        why = engine_mismatch(record, gpu, trt_version, precision)
        if why is None:
            return record, []
        reasons.append(why)
    if not reasons:
        reasons.append(f"the bundle has no {precision} engine")
    return None, reasons


# -- buffer planning (pure logic) ------------------------------------------------------------------
@dataclass(frozen=True)
class TensorPlan:
    name: str
    is_input: bool
    shape: tuple[int, ...]  # at the planned batch (the batch axis first)
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def bytes_for(self, batch: int) -> int:
        return self.nbytes // self.shape[0] * batch


def plan_buffers(io: list[tuple[str, bool, tuple[int, ...], np.dtype]], max_batch: int) -> list[TensorPlan]:
    """Engine IO (name, is_input, shape with -1 for the batch axis, dtype) -> buffers at max_batch."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    plans = []
    for name, is_input, shape, dtype in io:
        dims = list(shape)
        if not dims:
            raise HamedgeError(f"engine tensor {name} has no batch axis")
        if dims[0] in (-1, None):
            dims[0] = max_batch
        if any(d is None or d < 0 for d in dims[1:]):
            raise HamedgeError(f"engine tensor {name} has a dynamic non-batch axis {tuple(shape)}")
        plans.append(TensorPlan(name, is_input, tuple(int(d) for d in dims), np.dtype(dtype)))
    names = {p.name for p in plans}
    missing = [n for n in OUTPUT_NAMES if n not in names]
    if missing:
        raise HamedgeError(f"engine lacks output(s) {', '.join(missing)}")
    return plans


# -- CUDA memory and streams: cuda-python or PyCUDA ------------------------------------------------
class _CudaPython:
    """The few runtime calls we need, through cuda-python (cuda.bindings.runtime)."""

    supports_graphs = True

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise HamedgeError(f"CUDA error {int(err)} ({err})")
        return values[0] if len(values) == 1 else (values or None)

    def device_alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def host_alloc(self, nbytes: int, dtype: np.dtype, shape: tuple) -> tuple[int, np.ndarray]:
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        array = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype).reshape(shape)
        return ptr, array

    def h2d(self, dst: int, src_ptr: int, nbytes: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src_ptr, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def d2h(self, dst_ptr: int, src: int, nbytes: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst_ptr, src, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))

    def begin_capture(self) -> None:
        self._check(self.rt.cudaStreamBeginCapture(
            self.stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))

    def end_capture(self):
        graph = self._check(self.rt.cudaStreamEndCapture(self.stream))
        return self._check(self.rt.cudaGraphInstantiate(graph, 0)), graph

    def launch(self, graph_exec) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, self.stream))

    def free(self, device_ptrs, host_ptrs, graphs) -> None:
        for exe, graph in graphs:
            self.rt.cudaGraphExecDestroy(exe)
            self.rt.cudaGraphDestroy(graph)
        for ptr in device_ptrs:
            self.rt.cudaFree(ptr)
        for ptr in host_ptrs:
            self.rt.cudaFreeHost(ptr)
        self.rt.cudaStreamDestroy(self.stream)


class _PyCuda:
    """The same calls through PyCUDA (common on Jetson). No CUDA graphs here."""

    supports_graphs = False

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401  - creates the context
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()
        self._keep = []

    def device_alloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(nbytes)
        self._keep.append(alloc)
        return int(alloc)

    def host_alloc(self, nbytes: int, dtype: np.dtype, shape: tuple) -> tuple[int, np.ndarray]:
        array = self.cuda.pagelocked_empty(shape, dtype)
        self._keep.append(array)
        return array.ctypes.data, array

    def h2d(self, dst: int, src_ptr: int, nbytes: int) -> None:
        self.cuda.memcpy_htod_async(dst, _host_view(src_ptr, nbytes), self.stream)

    def d2h(self, dst_ptr: int, src: int, nbytes: int) -> None:
        self.cuda.memcpy_dtoh_async(_host_view(dst_ptr, nbytes), src, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self, device_ptrs, host_ptrs, graphs) -> None:
        self._keep.clear()


def _host_view(ptr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=np.uint8)


def _cuda_api():
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            return cls()
        except ImportError as exc:
            errors.append(str(exc))
    raise BackendUnavailable("the tensorrt backend needs cuda-python (pip install cuda-python) "
                             "or PyCUDA for its buffers")


# -- the backend ---------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cuda",)
    requires = ("tensorrt",)
    install_hint = "TensorRT and cuda-python on a machine with an NVIDIA GPU; or --backend onnxruntime"

    def __init__(self, bundle, precision: str = "fp16", device: str | None = None,
                 max_batch: int | None = None, build: bool = True, cuda_graphs: bool = True) -> None:
        self.check_precision(precision)
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("TensorRT is not installed (the tensorrt backend needs it; "
                                     "use --backend onnxruntime)") from None
        gpu = gpu_info()
        if gpu is None:
            raise BackendUnavailable("no CUDA GPU found for the tensorrt backend")
        record, reasons = select_engine(bundle.engines, gpu, trt.__version__, precision)
        if record is None:
            if not build:
                raise BackendUnavailable(f"no usable TensorRT engine: {'; '.join(reasons)}")
            record = _build_engine(bundle, precision, max_batch)
        self.record = record
        plan_bytes = bundle.engine_path(record).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan_bytes)
        if self.engine is None:
            raise HamedgeError(f"TensorRT could not load {record.plan} (rebuild the engine)")
        self.context = self.engine.create_execution_context()
        graph = bundle.graph
        super().__init__(bundle.spec, graph.input_channels, precision, f"cuda ({gpu.name})",
                         heatmaps_refined=graph.heatmaps == "refined", max_batch=record.max_batch,
                         artifact=bundle.engine_path(record))
        self.input_name = graph.input_name
        io = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            io.append((name, is_input, tuple(self.engine.get_tensor_shape(name)),
                       np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))))
        self.plans = {p.name: p for p in plan_buffers(io, record.max_batch)}
        self.cuda = _cuda_api()
        self.use_graphs = cuda_graphs and self.cuda.supports_graphs
        self._device, self._host, self._host_ptr = {}, {}, {}
        for plan in self.plans.values():
            self._device[plan.name] = self.cuda.device_alloc(plan.nbytes)
            self._host_ptr[plan.name], self._host[plan.name] = self.cuda.host_alloc(
                plan.nbytes, plan.dtype, plan.shape)
            self.context.set_tensor_address(plan.name, self._device[plan.name])
        self._graphs: dict[int, tuple] = {}
        self._shape_batch: int | None = None

    def _enqueue(self, batch: int) -> None:
        """H2D, execute, D2H for the first ``batch`` rows, all on our stream (no sync)."""
        for plan in self.plans.values():
            if plan.is_input:
                self.cuda.h2d(self._device[plan.name], self._host_ptr[plan.name], plan.bytes_for(batch))
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise HamedgeError("TensorRT execution failed")
        for plan in self.plans.values():
            if not plan.is_input:
                self.cuda.d2h(self._host_ptr[plan.name], self._device[plan.name], plan.bytes_for(batch))

    def _run(self, batch: np.ndarray) -> RawOutputs:
        b = batch.shape[0]
        host_in = self._host[self.input_name]
        host_in[:b] = batch.astype(host_in.dtype, copy=False)
        if self._shape_batch != b:
            self.context.set_input_shape(self.input_name, (b, *self.plans[self.input_name].shape[1:]))
            self._shape_batch = b
        start = time.perf_counter()  # device time: enqueue (or graph launch) to the stream's end
        if not self.use_graphs:
            self._enqueue(b)
        elif b in self._graphs:
            self.cuda.launch(self._graphs[b][0])
        else:
            self._enqueue(b)  # warm-up enqueue before capture (TensorRT's advice)
            self.cuda.synchronize()
            self.cuda.begin_capture()
            self._enqueue(b)
            self._graphs[b] = self.cuda.end_capture()
            self.cuda.launch(self._graphs[b][0])
        self.cuda.synchronize()
        self._inference_time = time.perf_counter() - start
        out = {n: np.array(self._host[n][:b], dtype=np.float32) for n in OUTPUT_NAMES}
        return RawOutputs(out["class_probs"], out["anomaly_prob"], out["attention_maps"],
                          self.heatmaps_refined)

    def _close(self) -> None:
        self.cuda.free(self._device.values(), self._host_ptr.values(), self._graphs.values())
        self.context = self.engine = None


def _build_engine(bundle, precision: str, max_batch: int | None):
    """No matching engine: build one now with the project's builder and store it in the bundle."""
    try:
        from hamedge.trt import build_engine  # engineer E's builder (needs TensorRT + a GPU)
    except ImportError:
        raise BackendUnavailable("no matching TensorRT engine in the bundle and no engine builder "
                                 "available (run `hamedge export --engine` on this machine)") from None
    kwargs = {"precision": precision}
    if max_batch:
        kwargs["max_batch"] = max_batch
    return build_engine(bundle, **kwargs)
