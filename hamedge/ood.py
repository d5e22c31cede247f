"""Out-of-distribution score for files without DICOM tags (PNG, JPEG, TIFF, arrays). No torch.

A file without a header cannot say what it shows, so the network's own outputs have to: the raw
attention maps (``attention_maps``, 1+K maps; each is the classification features projected on
one classifier's weights at every position) are area-averaged to a 4 x 4 grid per map, and the
Mahalanobis distance of that vector from the statistics of in-distribution images is the score.

At export (``fit``): mean and a Ledoit-Wolf shrinkage covariance (scikit-learn) from the
calibration images; the threshold is the quantile of the distances of other, held-out
in-distribution images that refuses ``target_false_refusals`` of them (1% by default). The
result is the bundle's ``ood.json``. At run time (``OODModel.distances``) only numpy is needed.

Why these features and not a pooled backbone vector: they are outputs every graph of the bundle
already gives (fp32, INT8, TensorRT engines, full-resolution heatmaps), so scoring costs nothing
extra and needs no change to the graph contract. They see the features only through the 1+K
classifier directions, which makes them a weaker detector: measured in
benchmarks/results/ood_gate.md, with the alternative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hamedge.errors import BundleError

OOD_FILE = "ood.json"
OOD_FORMAT = "hamedge-ood/1"
GRID = 4
FEATURES = f"attention_maps area-averaged to {GRID}x{GRID} per map"
DEFAULT_FALSE_REFUSALS = 0.01


def features(attention_maps: np.ndarray) -> np.ndarray:
    """(B, M, h, w) attention maps -> (B, M * GRID * GRID) float64 score features."""
    import cv2

    maps = np.asarray(attention_maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"attention maps must be (B, M, h, w), not {maps.shape}")
    b, m, h, w = maps.shape
    if (h, w) == (GRID, GRID):
        pooled = maps
    elif h % GRID == 0 and w % GRID == 0:
        pooled = maps.reshape(b, m, GRID, h // GRID, GRID, w // GRID).mean(axis=(3, 5))
    else:  # area interpolation: each grid cell is the mean of the pixels it covers
        flat = maps.reshape(b * m, h, w)
        pooled = np.stack([cv2.resize(x, (GRID, GRID), interpolation=cv2.INTER_AREA) for x in flat])
    return pooled.reshape(b, m * GRID * GRID).astype(np.float64)


@dataclass(frozen=True)
class OODModel:
    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D): inverse of the shrunk covariance
    threshold: float  # distances above it are refused
    info: dict[str, Any]  # how it was made (images, target rate, shrinkage, measured rates)

    def distances(self, attention_maps: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each image's features (B,) from the in-distribution mean."""
        centred = features(attention_maps) - self.mean
        return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", centred, self.precision, centred), 0.0))

    def describe(self) -> dict[str, Any]:
        """What a run records about the score (results manifest)."""
        return {"features": FEATURES, "threshold": round(self.threshold, 4),
                **{k: v for k, v in self.info.items() if k != "features"}}

    def reason(self, distance: float) -> str:
        rate = self.info.get("target_false_refusals", DEFAULT_FALSE_REFUSALS)
        return (f"out of distribution for this model: feature distance {distance:.1f} above "
                f"{self.threshold:.1f} (the threshold that refuses {rate:.0%} of held-out "
                "in-distribution images)")

    def to_dict(self) -> dict[str, Any]:
        return {"format": OOD_FORMAT, "features": FEATURES, "grid": GRID,
                "mean": self.mean.tolist(), "precision": self.precision.tolist(),
                "threshold": float(self.threshold), **self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OODModel":
        try:
            if data.get("format") != OOD_FORMAT or int(data.get("grid", 0)) != GRID:
                raise ValueError(f"format {data.get('format')!r}, grid {data.get('grid')!r}")
            mean = np.asarray(data["mean"], dtype=np.float64)
            precision = np.asarray(data["precision"], dtype=np.float64)
            threshold = float(data["threshold"])
            if mean.ndim != 1 or precision.shape != (mean.size, mean.size) \
                    or not (np.isfinite(mean).all() and np.isfinite(precision).all()
                            and np.isfinite(threshold) and threshold > 0):
                raise ValueError("mean, precision or threshold malformed")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{OOD_FILE} is not a valid out-of-distribution model ({exc})") from None
        info = {k: v for k, v in data.items()
                if k not in ("format", "grid", "mean", "precision", "threshold")}
        return cls(mean, precision, threshold, info)


def fit(fit_maps: np.ndarray, heldout_maps: np.ndarray,
        target_false_refusals: float = DEFAULT_FALSE_REFUSALS, **info) -> OODModel:
    """Statistics from ``fit_maps`` (attention maps of the calibration images), threshold from
    ``heldout_maps`` (other in-distribution images). Needs scikit-learn (export extra)."""
    from sklearn.covariance import LedoitWolf

    if not 0 < target_false_refusals < 1:
        raise ValueError("target_false_refusals must be in (0, 1)")
    x = features(fit_maps)
    if x.shape[0] < 8 or len(heldout_maps) < 8:
        raise ValueError("the out-of-distribution statistics need at least 8 fit and 8 held-out "
                         "images")
    estimator = LedoitWolf().fit(x)
    model = OODModel(estimator.location_, np.asarray(estimator.precision_), 1.0, {})
    held = model.distances(heldout_maps)
    threshold = float(np.quantile(held, 1.0 - target_false_refusals, method="higher"))
    info = {"target_false_refusals": target_false_refusals, "fit_images": int(x.shape[0]),
            "heldout_images": int(len(held)), "shrinkage": round(float(estimator.shrinkage_), 6),
            "heldout_refused": round(float(np.mean(held > threshold)), 6), **info}
    return OODModel(model.mean, model.precision, threshold, info)


def load(bundle) -> OODModel | None:
    """The bundle's out-of-distribution model, or None when it has none (older bundles, or a
    model exported without in-distribution images for it)."""
    if OOD_FILE not in bundle.files:
        return None
    import json

    try:
        data = json.loads((bundle.root / OOD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{OOD_FILE}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{OOD_FILE} is not a JSON object")
    return OODModel.from_dict(data)
