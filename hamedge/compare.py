"""Comparing a configuration with its fp32 reference, the one way every caller does it (the INT8
export guard, `hamedge bench`): the accuracy budget, agreement of outputs (probabilities, binarised
heatmaps) and deltas of evaluation metrics. No torch; numpy, and hamedge.evaluation's binarising.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# -- budget ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Largest accepted loss of a reduced-precision configuration against fp32. The CLI flags
    --max-auc-drop and --max-tiou-drop set the first two (export and bench alike)."""

    max_mean_auc_drop: float = 0.005
    max_tiou_drop: float = 0.01
    tiou_threshold: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Budget":
        data = data or {}
        return cls(**{k: float(data[k]) for k in cls.__dataclass_fields__ if k in data})

    @property
    def tiou_key(self) -> str:
        """The delta key of T(IoU) at the budget's threshold, e.g. "tiou_0.3"."""
        return f"tiou_{self.tiou_threshold:g}"


# -- agreement ------------------------------------------------------------------------------------


@dataclass
class MaskAgreement:
    """IoU of binarised reference and candidate maps, pair by pair (same image, same map).

    A pair whose two masks are both empty has no IoU (0/0). It is left out of the mean and the
    minimum and counted in ``both_empty`` instead: scoring it 1.0 would let the many maps that are
    empty in both (findings absent from an image) lift the mean towards 1 and hide disagreement
    where either map marks a region, which is what the number is for. Agreement about absence is
    visible as the count, and as decision flips in ``probability_agreement``."""

    ious: list[float] = field(default_factory=list)
    both_empty: int = 0

    def add(self, ref_masks: np.ndarray, masks: np.ndarray) -> None:
        """Boolean masks (B, M, ...) of the reference and the candidate, same shapes."""
        if ref_masks.shape != masks.shape:
            raise ValueError(f"mask shapes differ: {ref_masks.shape} vs {masks.shape}")
        a = ref_masks.reshape(ref_masks.shape[0] * ref_masks.shape[1], -1)
        b = masks.reshape(masks.shape[0] * masks.shape[1], -1)
        inter = (a & b).sum(axis=1)
        union = (a | b).sum(axis=1)
        self.ious.extend((inter[union > 0] / union[union > 0]).tolist())
        self.both_empty += int((union == 0).sum())

    def result(self) -> dict[str, Any]:
        if not self.ious:
            return {"mean_iou": None, "min_iou": None, "maps": 0, "both_empty": self.both_empty}
        return {"mean_iou": float(np.mean(self.ious)), "min_iou": float(np.min(self.ious)),
                "maps": len(self.ious), "both_empty": self.both_empty}


def heatmap_agreement(ref_maps: np.ndarray, maps: np.ndarray, spec, heatmaps_refined: bool = False,
                      chunk: int = 16) -> dict[str, Any]:
    """MaskAgreement of two sets of attention maps (B, 1+K, h, w) of the same images in the same
    order; either may already be binarised (boolean), else it is binarised by spec's rule."""
    from hamedge.evaluation import binarise

    def binary(x: np.ndarray) -> np.ndarray:
        return x if x.dtype == bool else binarise(x, spec, heatmaps_refined)

    agreement = MaskAgreement()
    for start in range(0, ref_maps.shape[0], chunk):
        agreement.add(binary(ref_maps[start:start + chunk]), binary(maps[start:start + chunk]))
    return agreement.result()


def probability_agreement(ref_probs: np.ndarray, probs: np.ndarray, ref_anomaly: np.ndarray,
                          anomaly: np.ndarray, spec) -> dict[str, Any]:
    """Largest probability difference and decisions flipped at the spec's thresholds."""
    thresholds = np.asarray(spec.thresholds)
    flips = int(((probs >= thresholds) != (ref_probs >= thresholds)).sum()
                + ((anomaly >= spec.anomaly_threshold) != (ref_anomaly >= spec.anomaly_threshold)).sum())
    return {"max_prob_diff": float(max(np.abs(probs - ref_probs).max(),
                                       np.abs(anomaly - ref_anomaly).max())),
            "flips": flips, "decisions": int(probs.size + anomaly.size)}


# -- deltas ---------------------------------------------------------------------------------------


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


@dataclass
class Deltas:
    """Candidate minus reference (negative: the candidate is worse) and the budget's verdict."""

    mean_auc: float | None
    anomaly_auc: float | None
    class_auc: dict[str, float | None]
    tiou: float | None  # mean T(IoU) at the budget's threshold
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def deltas(ref: dict[str, Any], other: dict[str, Any], budget: Budget,
           class_names) -> Deltas:
    """Deltas of two hamedge.evaluation.run_evaluation results and the budget's failures."""
    from hamedge.metrics import tiou_at

    rc, oc = ref["classification"], other["classification"]
    class_auc = {n: _sub((oc.get("auc") or {}).get(n), (rc.get("auc") or {}).get(n))
                 for n in class_names}
    mean_auc = _sub(oc.get("mean_auc"), rc.get("mean_auc"))
    tiou = None
    rl, ol = ref.get("localisation"), other.get("localisation")
    if rl and ol and rl["mean"]["tiou"] is not None and ol["mean"]["tiou"] is not None:
        tiou = _sub(tiou_at(ol, budget.tiou_threshold), tiou_at(rl, budget.tiou_threshold))
    failures = []
    if mean_auc is not None and -mean_auc > budget.max_mean_auc_drop:
        failures.append(f"mean AUC drop {-mean_auc:.4f} > {budget.max_mean_auc_drop}")
    if tiou is not None and -tiou > budget.max_tiou_drop:
        failures.append(f"mean T(IoU={budget.tiou_threshold:g}) drop {-tiou:.4f} > "
                        f"{budget.max_tiou_drop}")
    return Deltas(mean_auc, _sub(oc.get("anomaly_auc"), rc.get("anomaly_auc")), class_auc, tiou,
                  failures)
