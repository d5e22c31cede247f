"""The one interface every backend implements (Polygraphy's Runner, trimmed): input metadata,
``run(batch) -> RawOutputs``, ``close``, and a context manager. No torch here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hamedge.errors import HamedgeError

PRECISIONS = ("fp32", "fp16", "int8")
OUTPUT_NAMES = ("class_probs", "anomaly_prob", "attention_maps")


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
    """Base class. Subclasses set the attributes below and implement ``_run`` (and ``_close``)."""

    name = "base"

    def __init__(self, spec, input_channels: int, precision: str, device: str,
                 heatmaps_refined: bool = False, max_batch: int | None = None) -> None:
        self.spec = spec
        self.input_channels = int(input_channels)
        self.precision = precision
        self.device = device
        self.heatmaps_refined = heatmaps_refined
        self.max_batch = max_batch
        self._closed = False

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

    # -- running ---------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> RawOutputs:
        """Run a float32 batch (B, C, S, S), already preprocessed, and return its outputs."""
        if self._closed:
            raise RuntimeError(f"the {self.name} backend is closed")
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise HamedgeError(f"the {self.name} backend expects a batch of shape "
                               f"(B, {', '.join(map(str, self.input_shape))}), got {batch.shape}")
        if batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            parts = [self._run(np.ascontiguousarray(batch[i:i + self.max_batch]))
                     for i in range(0, batch.shape[0], self.max_batch)]
            return RawOutputs(*(np.concatenate([getattr(p, n) for p in parts])
                                for n in OUTPUT_NAMES), self.heatmaps_refined)
        return self._run(np.ascontiguousarray(batch))

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
