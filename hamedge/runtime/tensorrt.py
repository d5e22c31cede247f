"""TensorRT backend: engines from the bundle, buffers through cuda-python (or PyCUDA), no torch.

Everything heavy (tensorrt, cuda.bindings, pycuda) is imported lazily when the backend opens.
Which engine fits this machine is hamedge.trt.engines' rule, the CUDA calls are hamedge.trt.cuda's
helpers; this module only imports them (never the reverse). How big the buffers are is plain
Python here, tested without a GPU.

Open: pick the engine record (GPU, TensorRT version, precision, DLA core, fused plugin), make
the CUDA context current (PyCUDA: the primary one), load the fused plugin when the engine has
one, set ``runtime.DLA_core`` for DLA engines, then deserialise.

Run path per batch of B images: copy the batch into a pinned host buffer, then on a dedicated
stream: H2D copy, ``execute_async_v3``, D2H copies, one synchronise. For each fixed B seen, that
sequence is captured once as a CUDA graph (after one warm-up enqueue) and replayed after
(cuda-python only; PyCUDA enqueues each time). A capture that fails is ended (the stream leaves
capture mode) and the backend enqueues plainly from then on; weight-streaming engines are never
captured. Buffers are allocated once at the profile's maximum batch, so the captured addresses
never change. CUDA events around each batch's device work give ``last_inference_time()``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime.base import OUTPUT_NAMES, Backend, RawOutputs
# Probing and engine selection live in hamedge.trt.engines; also importable from here, the
# backend's module, as older callers do.
from hamedge.trt.engines import (GpuInfo, engine_mismatch, gpu_info, record_plugin,  # noqa: F401
                                 select_engine, tensorrt_version)


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


# -- the backend ---------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cuda",)
    requires = ("tensorrt",)
    install_hint = "TensorRT and cuda-python on a machine with an NVIDIA GPU; or --backend onnxruntime"

    def __init__(self, bundle, precision: str = "fp16", device: str | None = None,
                 max_batch: int | None = None, build: bool = True, cuda_graphs: bool = True,
                 dla_core: int | None = None, fused_plugin: bool = False,
                 plugin_library=None) -> None:
        self.check_precision(precision)
        if (device or "auto").lower() not in ("auto", "cuda", "cuda:0"):
            # buffers, engine selection and builds all use GPU 0: another device is refused
            # rather than run somewhere the caller did not ask for
            raise HamedgeError(f"the tensorrt backend runs on the first CUDA GPU (cuda or "
                               f"cuda:0), not {device!r}")
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("TensorRT is not installed (the tensorrt backend needs it; "
                                     "use --backend onnxruntime)") from None
        from hamedge.trt.cuda import cuda_api

        gpu = gpu_info()
        if gpu is None:
            raise BackendUnavailable("no CUDA GPU found for the tensorrt backend")
        record, reasons = select_engine(bundle.engines, gpu, trt.__version__, precision, dla_core,
                                        fused_plugin=fused_plugin)
        if record is None:
            if not build:
                raise BackendUnavailable(f"no usable TensorRT engine: {'; '.join(reasons)}")
            kind = None if not fused_plugin else ("library" if plugin_library else "python")
            record = _build_engine(bundle, precision, max_batch, dla_core, kind, plugin_library)
        self.record = record
        self.cuda = cuda_api()  # before deserialising: TensorRT must see our (primary) context
        self._device, self._host, self._host_ptr, self._graphs = {}, {}, {}, {}
        try:
            plugin = self._open(trt, bundle, record, plugin_library)
        except BaseException:
            self.context = self.engine = None
            self.cuda.free(self._device.values(), self._host_ptr.values(), [])
            raise
        graph = bundle.graph
        refined = graph.heatmaps == "refined" or plugin is not None  # the plugin refines on device
        where = f"DLA core {record.dla_core}" if record.dla_core is not None else "cuda"
        super().__init__(bundle.spec, graph.input_channels, precision, f"{where} ({gpu.name})",
                         heatmaps_refined=refined, max_batch=record.max_batch,
                         artifact=bundle.engine_path(record))
        self.input_name = graph.input_name
        # Weight-streaming engines cannot be captured into a CUDA graph.
        streaming = int(getattr(self.engine, "streamable_weights_size", 0) or 0) > 0
        self.use_graphs = cuda_graphs and self.cuda.supports_graphs and not streaming
        self._shape_batch: int | None = None

    def _open(self, trt, bundle, record, plugin_library) -> str | None:
        """Load the plugin, deserialise, allocate: all in our CUDA context. Returns the plugin kind."""
        with self.cuda.activate():
            plugin = record_plugin(record)
            if plugin is not None:  # the plan names hamedge::FusedRefine: its creator first
                from hamedge.kernels import trt_plugin

                try:
                    trt_plugin.load(plugin, trt, plugin_library)
                except BackendUnavailable:
                    # An AOT Python plugin's plan carries its kernel: it runs without the
                    # definitions (and without Triton); a JIT one or the library cannot.
                    if record.extra.get("plugin_loaded") != "python (aot)":
                        raise
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            if record.dla_core is not None:
                self._runtime.DLA_core = int(record.dla_core)  # before deserialise_cuda_engine
            self.engine = self._runtime.deserialize_cuda_engine(
                bundle.engine_path(record).read_bytes())
            if self.engine is None:
                raise HamedgeError(f"TensorRT could not load {record.plan} (rebuild the engine)")
            self.context = self.engine.create_execution_context()
            io = []
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                io.append((name, is_input, tuple(self.engine.get_tensor_shape(name)),
                           np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))))
            self.plans = {p.name: p for p in plan_buffers(io, record.max_batch)}
            for plan in self.plans.values():
                self._device[plan.name] = self.cuda.device_alloc(plan.nbytes)
                self._host_ptr[plan.name], self._host[plan.name] = self.cuda.host_alloc(
                    plan.nbytes, plan.dtype, plan.shape)
                self.context.set_tensor_address(plan.name, self._device[plan.name])
            self._events = (self.cuda.event(), self.cuda.event())
        return plugin

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

    def _capture(self, batch: int) -> bool:
        """Capture this batch size's sequence as a CUDA graph; False (and no more graphs) when
        capturing fails, after ending the capture so the stream works again."""
        self._enqueue(batch)  # warm-up enqueue before capture (TensorRT's advice)
        self.cuda.synchronize()
        try:
            self.cuda.begin_capture()
            try:
                self._enqueue(batch)
            except BaseException:
                self.cuda.abort_capture()
                raise
            self._graphs[batch] = self.cuda.end_capture()
        except Exception as exc:  # noqa: BLE001 - any failure under capture: fall back, once
            self.cuda.abort_capture()
            self.use_graphs = False
            warnings.warn(f"tensorrt: CUDA graph capture failed ({exc}); enqueuing without graphs",
                          RuntimeWarning, stacklevel=3)
            return False
        return True

    def _run(self, batch: np.ndarray) -> RawOutputs:
        with self.cuda.activate():
            return self._run_current(batch)

    def _run_current(self, batch: np.ndarray) -> RawOutputs:
        b = batch.shape[0]
        run_b = max(b, self.record.min_batch)  # fixed-batch (DLA) engines: pad with zeros
        host_in = self._host[self.input_name]
        host_in[:b] = batch.astype(host_in.dtype, copy=False)
        if run_b > b:
            host_in[b:run_b] = 0
        if self._shape_batch != run_b:
            self.context.set_input_shape(self.input_name,
                                         (run_b, *self.plans[self.input_name].shape[1:]))
            self._shape_batch = run_b
        start, end = self._events
        if self.use_graphs and (run_b in self._graphs or self._capture(run_b)):
            self.cuda.record(start)
            self.cuda.launch(self._graphs[run_b][0])
        else:
            self.cuda.record(start)
            self._enqueue(run_b)
        self.cuda.record(end)
        self.cuda.synchronize()
        self._inference_time = self.cuda.elapsed_ms(start, end) / 1000.0  # device time (Backend)
        out = {n: np.array(self._host[n][:b], dtype=np.float32) for n in OUTPUT_NAMES}
        return RawOutputs(out["class_probs"], out["anomaly_prob"], out["attention_maps"],
                          self.heatmaps_refined)

    def _close(self) -> None:
        self.context = self.engine = None
        self.cuda.free(self._device.values(), self._host_ptr.values(), self._graphs.values())


def _build_engine(bundle, precision: str, max_batch: int | None, dla_core: int | None,
                  fused_plugin: str | None, plugin_library):
    """No matching engine: build one now with the project's builder and store it in the bundle."""
    from hamedge.trt.build import build_engine

    kwargs = {"precision": precision, "dla_core": dla_core, "fused_plugin": fused_plugin,
              "plugin_library": plugin_library}
    if max_batch:
        kwargs["max_batch"] = max_batch
    return build_engine(bundle, **kwargs)
