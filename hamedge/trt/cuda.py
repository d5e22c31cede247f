"""CUDA memory, streams, graphs and events for the TensorRT backend: cuda-python or PyCUDA.

Two interchangeable helpers with the same methods, so the backend never asks which it has:

- ``CudaPython``: cuda-python's runtime bindings, ``cuda.bindings.runtime`` (cuda-python >= 12.6,
  13.x) or ``cuda.cudart`` (cuda-python 11.8 / 12.x, JetPack 5). Every call returns a tuple
  ``(cudaError_t, *values)``; the signatures that differ between versions are avoided:
  ``cudaGraphInstantiate`` is (graph, pLogBuffer, bufferSize) -> (err, exec, errorNode) on 11.8
  but (graph, flags) -> (err, exec) on 12/13, so graphs are instantiated with
  ``cudaGraphInstantiateWithFlags(graph, 0)`` -> (err, exec), the one form all three have
  (cuda/cudart.pyx of cuda-python 11.8.3; cuda/bindings/runtime.pyx of cuda-bindings 12.9.0
  and 13.0.0).
- ``PyCuda``: the device's *primary* context, retained and pushed by us (never
  ``pycuda.autoinit``, whose ``make_default_context`` creates a second context: TensorRT works in
  the primary one, the CUDA runtime's, and handles from one context are invalid in the other).
  No CUDA graphs here.

Nothing is imported at module level beyond numpy; ``cuda_api()`` picks the helper, falling back
from cuda-python to PyCUDA not only when cuda-python is missing but also when it cannot reach the
driver (a cuda-python newer than the driver answers cudaErrorInsufficientDriver).
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np

from hamedge.errors import BackendUnavailable, HamedgeError


def load_cudart():
    """cuda-python's runtime module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # cuda-python 11.8 / older 12.x
        except ImportError:
            return None
    return cudart


class CudaError(HamedgeError):
    """A CUDA call failed (one line with the error's name)."""


class CudaPython:
    """The runtime calls we need, through cuda-python."""

    supports_graphs = True

    def __init__(self, device: int = 0, cudart=None) -> None:
        rt = cudart or load_cudart()
        if rt is None:
            raise BackendUnavailable("cuda-python is not installed")
        self.rt = rt
        try:  # cuda-python 11.8 without a driver raises here instead of returning an error
            err, count = rt.cudaGetDeviceCount()
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailable(f"cuda-python cannot reach the CUDA driver ({exc})") from None
        if int(err) != 0 or not count:
            raise BackendUnavailable(f"cuda-python sees no usable GPU ({self._name(err)})")
        self._check(rt.cudaSetDevice(device))
        self.stream = self._check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        self._events: list = []

    def _name(self, err) -> str:
        try:
            status, name = self.rt.cudaGetErrorName(err)
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001
            return f"CUDA error {int(err)}"

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CudaError(f"CUDA call failed: {self._name(err)} ({int(err)})")
        return values[0] if len(values) == 1 else (values or None)

    @contextlib.contextmanager
    def activate(self):
        """The runtime API works in the primary context already: nothing to push."""
        yield

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

    # -- CUDA graphs -----------------------------------------------------------------------
    def begin_capture(self) -> None:
        self._check(self.rt.cudaStreamBeginCapture(
            self.stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))

    def end_capture(self):
        """(graph exec, graph) of the capture just ended."""
        graph = self._check(self.rt.cudaStreamEndCapture(self.stream))
        try:
            graph_exec = self._check(self.rt.cudaGraphInstantiateWithFlags(graph, 0))
        except CudaError:
            self.rt.cudaGraphDestroy(graph)
            raise
        return graph_exec, graph

    def abort_capture(self) -> None:
        """Leave capture mode after a failure inside it (else every later call on the stream
        fails). Ending an invalidated capture returns an error and no graph: both are dropped."""
        try:
            err, status = self.rt.cudaStreamIsCapturing(self.stream)
            if int(err) == 0 and int(status) == 0:  # cudaStreamCaptureStatusNone
                return
            err, graph = self.rt.cudaStreamEndCapture(self.stream)
            if int(err) == 0 and graph is not None:
                self.rt.cudaGraphDestroy(graph)
        except Exception:  # noqa: BLE001 - best effort on an error path
            pass

    def launch(self, graph_exec) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, self.stream))

    # -- device time ---------------------------------------------------------------------------
    def event(self):
        ev = self._check(self.rt.cudaEventCreate())
        self._events.append(ev)
        return ev

    def record(self, event) -> None:
        self._check(self.rt.cudaEventRecord(event, self.stream))

    def elapsed_ms(self, start, end) -> float:
        """Milliseconds between two recorded events (after a synchronise)."""
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))

    def free(self, device_ptrs, host_ptrs, graphs) -> None:
        for exe, graph in graphs:
            self.rt.cudaGraphExecDestroy(exe)
            self.rt.cudaGraphDestroy(graph)
        for ptr in device_ptrs:
            self.rt.cudaFree(ptr)
        for ptr in host_ptrs:
            self.rt.cudaFreeHost(ptr)
        for ev in self._events:
            self.rt.cudaEventDestroy(ev)
        self.rt.cudaStreamDestroy(self.stream)


class PyCuda:
    """The same calls through PyCUDA (common on Jetson images), in the device's primary context."""

    supports_graphs = False

    def __init__(self, device: int = 0, driver=None) -> None:
        if driver is None:
            try:
                import pycuda.driver as driver
            except ImportError:
                raise BackendUnavailable("PyCUDA is not installed") from None
        self.cuda = driver
        try:
            driver.init()
            # retain_primary_context(): the runtime API's context, not made current (PyCUDA docs,
            # doc/driver.rst); make_context()/pycuda.autoinit would create a second one.
            self.context = driver.Device(device).retain_primary_context()
        except Exception as exc:  # noqa: BLE001 - no driver or no device
            raise BackendUnavailable(f"PyCUDA cannot open GPU {device} ({exc})") from None
        with self.activate():
            self.stream = driver.Stream()
        self._keep: list = []

    @contextlib.contextmanager
    def activate(self):
        """Make the primary context current in this thread for the duration (PyCUDA calls need
        a current context; the backend may be used from another thread than the one that
        opened it)."""
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def device_alloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(nbytes)
        self._keep.append(alloc)
        return int(alloc)

    def host_alloc(self, nbytes: int, dtype: np.dtype, shape: tuple) -> tuple[int, np.ndarray]:
        array = self.cuda.pagelocked_empty(shape, dtype)
        self._keep.append(array)
        return array.ctypes.data, array

    def h2d(self, dst: int, src_ptr: int, nbytes: int) -> None:
        self.cuda.memcpy_htod_async(dst, host_view(src_ptr, nbytes), self.stream)

    def d2h(self, dst_ptr: int, src: int, nbytes: int) -> None:
        self.cuda.memcpy_dtoh_async(host_view(dst_ptr, nbytes), src, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self):
        ev = self.cuda.Event()
        self._keep.append(ev)
        return ev

    def record(self, event) -> None:
        event.record(self.stream)

    def elapsed_ms(self, start, end) -> float:
        return float(end.time_since(start))

    def free(self, device_ptrs, host_ptrs, graphs) -> None:
        with self.activate():
            for item in self._keep:
                if hasattr(item, "free"):
                    item.free()
            self._keep.clear()
            self.stream = None
        self.context.detach()  # releases our retain of the primary context


def host_view(ptr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=np.uint8)


def cuda_api(device: int = 0):
    """CudaPython where cuda-python reaches the driver, else PyCuda; one line when neither does."""
    reasons = []
    for cls in (CudaPython, PyCuda):
        try:
            return cls(device)
        except BackendUnavailable as exc:
            reasons.append(f"{cls.__name__}: {exc}")
    raise BackendUnavailable("the tensorrt backend needs cuda-python (pip install cuda-python) or "
                             f"PyCUDA for its buffers; {'; '.join(reasons)}")
