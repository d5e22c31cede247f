"""One image's result: probabilities, positive findings, and heatmaps/boxes made on demand.

Shared by the folder pipeline and the Python API, so both read model outputs the same way.
Heatmaps are refined only when asked for (the pipeline asks only for what it writes) with
hamedge.ops.refine, at the network's input size S -- the model's own definition, the one the
localisation metrics use. Boxes come from that S x S mask and are scaled to the original image;
heatmaps written to disk are resized to the original image (see hamedge.heatmap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hamedge.heatmap import Box, boxes_from_mask, resize_heatmap
from hamedge.runtime.base import RawOutputs
from hamedge.spec import ModelSpec

ANOMALY = "anomaly"  # the name of channel 0 of the attention maps


def refine_heatmaps(maps: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Raw CAMs (N, h, w) -> refined heatmaps (N, S, S) float32 (the one rule, hamedge.ops.refine)."""
    from hamedge.ops.refine import refine_spec

    return refine_spec(maps, spec)


@dataclass
class Prediction:
    """Model outputs for one image. ``findings``: classes at or above the spec's thresholds."""

    probabilities: dict[str, float]
    anomaly: float
    anomalous: bool
    findings: list[str]
    image_size: tuple[int, int]  # (H, W) of the original image
    path: str | None = None
    spec: ModelSpec | None = field(default=None, repr=False)
    maps: np.ndarray | None = field(default=None, repr=False)  # (1+K, h, w) raw, or refined (S, S)
    maps_refined: bool = field(default=False, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def map_names(self) -> list[str]:
        return [ANOMALY, *self.spec.class_names]

    @property
    def positive(self) -> list[str]:
        """Maps worth drawing: 'anomaly' when the image is anomalous, then the findings."""
        return ([ANOMALY] if self.anomalous else []) + list(self.findings)

    def _index(self, name: str) -> int:
        try:
            return self.map_names.index(name)
        except ValueError:
            raise KeyError(f"no heatmap named {name!r}; names: {', '.join(self.map_names)}") from None

    def heatmap(self, name: str = ANOMALY, size: str = "input") -> np.ndarray:
        """Refined heatmap in [0, 1] of a class (or 'anomaly'): (S, S) for size='input',
        (H, W) of the original image for size='image'. Refined lazily, once per name."""
        if name not in self._cache:
            index = self._index(name)
            if self.maps_refined:
                self._cache[name] = np.asarray(self.maps[index], np.float32)
            else:
                self._cache[name] = refine_heatmaps(self.maps[index:index + 1], self.spec)[0]
        heat = self._cache[name]
        if size == "image":
            return resize_heatmap(heat, self.image_size)
        if size != "input":
            raise ValueError("size must be 'input' or 'image'")
        return heat

    def mask(self, name: str = ANOMALY) -> np.ndarray:
        """Binary mask at S x S: refined heatmap >= spec.cam_threshold (HAM's localisation rule,
        decided by hamedge.ops.refine.binary_masks on the raw map)."""
        if self.maps_refined:
            return self.heatmap(name) >= self.spec.cam_threshold
        from hamedge.ops.refine import binary_masks

        index = self._index(name)
        return binary_masks(self.maps[index:index + 1], None, self.spec)[0]

    def boxes(self, name: str = ANOMALY) -> list[Box]:
        """Connected regions of the mask, in original-image pixels, best first."""
        return boxes_from_mask(self.mask(name), self.heatmap(name), self.image_size)

    def to_dict(self, boxes: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "height": self.image_size[0],
            "width": self.image_size[1],
            "anomaly": round(self.anomaly, 6),
            "anomalous": self.anomalous,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "findings": list(self.findings),
        }
        if boxes and self.maps is not None:
            data["boxes"] = {name: [b.to_dict() for b in self.boxes(name)] for name in self.positive}
        return data


def predictions_from_outputs(raw: RawOutputs, spec: ModelSpec, image_sizes: list[tuple[int, int]],
                             paths: list[str | None] | None = None) -> list[Prediction]:
    """Split a batch's RawOutputs into one Prediction per image."""
    thresholds = spec.thresholds
    out = []
    for i, size in enumerate(image_sizes):
        probs = {name: float(p) for name, p in zip(spec.class_names, raw.class_probs[i])}
        findings = [name for name, t in zip(spec.class_names, thresholds) if probs[name] >= t]
        anomaly = float(raw.anomaly_prob[i, 0])
        out.append(Prediction(probs, anomaly, anomaly >= spec.anomaly_threshold, findings,
                              (int(size[0]), int(size[1])), paths[i] if paths else None, spec,
                              np.array(raw.attention_maps[i]), raw.heatmaps_refined))
    return out
