"""The one interface every backend implements (Polygraphy's Runner, trimmed): what it supports
(class attributes), input metadata, the file it runs, ``run(batch) -> RawOutputs``, the time of
the last inference, ``close``, and a context manager. No torch here."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hamedge.bundle import OUTPUT_NAMES, PRECISIONS  # noqa: F401 - re-exported for backends
from hamedge.errors import HamedgeError


@dataclass
class RawOutputs:
    """What a backend returns for a batch of B images (numpy, float32)."""

    class_probs: np.ndarray  # (B, K)
    anomaly_prob: np.ndarray  # (B, 1)
    attention_maps: np.ndarray  # (B, 1+K, h, w): channel 0 the anomaly map, then the classes
    heatmaps_refined: bool = False  # True: attention_maps are refined heatmaps at (S, S)

    def __len__(self) -> int:
        return int(self.class_probs.shape[0])

    def __getitem__(self, index: slice) -> "RawOutputs":
        if not isinstance(index, slice):
            index = slice(index, index + 1)
        return RawOutputs(self.class_probs[index], self.anomaly_prob[index],
                          self.attention_maps[index], self.heatmaps_refined)


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple  # None for a dynamic axis
    dtype: str = "float32"


class Backend:
    """Base class. Subclasses set the class attributes below, open their runtime in ``__init__``
    (explicit keyword options only: the registry refuses any option a backend does not name),
    call ``super().__init__`` and implement ``_run`` (and ``_close``). A backend that can time its
    device (a GPU) sets ``self._inference_time`` inside ``_run``; otherwise the wall time of
    ``_run`` is used."""

    name = "base"  # the registry name (hamedge.runtime.registry.BACKENDS)
    precisions: tuple[str, ...] = ()  # what it can run, a subset of hamedge.bundle.PRECISIONS
    devices: tuple[str, ...] = ()  # device kinds it can run on ("cpu", "cuda", "gpu")
    requires: tuple[str, ...] = ()  # importable packages it needs (checked without importing)
    install_hint = ""  # how to get them, one line
    # INT8 only: hamedge.runtime.measure.Choice of the bundle's Q/DQ graph measured fastest here
    int8_choice = None

    def __init__(self, spec, input_channels: int, precision: str, device: str,
                 heatmaps_refined: bool = False, max_batch: int | None = None,
                 artifact: str | Path | None = None) -> None:
        self.spec = spec
        self.input_channels = int(input_channels)
        self.precision = precision
        self.device = device
        self.heatmaps_refined = heatmaps_refined
        self.max_batch = max_batch
        self.artifact = None if artifact is None else Path(artifact)  # the file it runs
        self.selection_reason = "asked for"
        self._inference_time: float | None = None
        self._last_inference_time: float | None = None
        self._closed = False

    @classmethod
    def check_precision(cls, precision: str) -> None:
        """One-line refusal of a precision this backend does not run."""
        if precision not in cls.precisions:
            raise HamedgeError(f"the {cls.name} backend runs {', '.join(cls.precisions)}, "
                               f"not {precision}")

    # -- metadata --------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.spec.input_size
        return (self.input_channels, size, size)

    @property
    def input_meta(self) -> dict[str, TensorMeta]:
        return {"image": TensorMeta("image", (None, *self.input_shape), "float32")}

    @property
    def description(self) -> str:
        return f"{self.name} {self.precision} {self.device}"

    @property
    def on_cpu(self) -> bool:
        return str(self.device).startswith("cpu")

    @property
    def parallel_requests(self) -> int:
        """How many batches ``submit`` can have running at once; callers that stream batches
        (folder runs) keep this many in flight. 1 for backends whose ``submit`` runs at once."""
        return 1

    def last_inference_time(self) -> float | None:
        """Seconds the runtime spent computing the last ``run`` (summed over its chunks), without
        hamedge's own host work around it; on a GPU the device's time, measured by the backend.
        None before the first run. (Polygraphy's Runner.last_inference_time.)"""
        return self._last_inference_time

    # -- running ---------------------------------------------------------------------------
    def _checked(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError(f"the {self.name} backend is closed")
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise HamedgeError(f"the {self.name} backend expects a batch of shape "
                               f"(B, {', '.join(map(str, self.input_shape))}), got {batch.shape}")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run(self, batch: np.ndarray) -> RawOutputs:
        """Run a float32 batch (B, C, S, S), already preprocessed, and return its outputs."""
        batch = self._checked(batch)
        self._last_inference_time = 0.0
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            parts = [self._timed_run(np.ascontiguousarray(batch[i:i + self.max_batch]))
                     for i in range(0, batch.shape[0], self.max_batch)]
            return RawOutputs(*(np.concatenate([getattr(p, n) for p in parts])
                                for n in OUTPUT_NAMES), self.heatmaps_refined)
        return self._timed_run(np.ascontiguousarray(batch))

    def submit(self, batch: np.ndarray) -> Future:
        """Start a batch and return a Future of its RawOutputs. Backends with asynchronous
        requests (openvino) return at once, so the caller overlaps its own work (decoding the
        next batch, writing the last) with inference; the others run the batch now."""
        future: Future = Future()
        try:
            future.set_result(self.run(batch))
        except Exception as exc:  # noqa: BLE001 - delivered through the future, as async ones do
            future.set_exception(exc)
        return future

    def _timed_run(self, batch: np.ndarray) -> RawOutputs:
        self._inference_time = None
        start = time.perf_counter()
        out = self._run(batch)
        took = time.perf_counter() - start if self._inference_time is None else self._inference_time
        self._last_inference_time += took
        return out

    def _run(self, batch: np.ndarray) -> RawOutputs:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
