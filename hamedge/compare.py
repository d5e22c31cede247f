"""Comparing outputs with a reference's, the one way every caller does it. No torch (numpy;
hamedge.evaluation's binarising; onnxruntime only when a graph is run).

- Against fp32, for the INT8 export guard and `hamedge bench`: the accuracy budget, agreement
  of outputs (probabilities, binarised heatmaps) and deltas of evaluation metrics.
- Export parity, for `hamedge export`: an exported graph against the torch model it came from
  (the section at the end).
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
    return {"max_prob_diff": _max_abs_diff((ref_probs, probs), (ref_anomaly, anomaly)),
            "flips": flips, "decisions": int(probs.size + anomaly.size)}


def _max_abs_diff(*pairs: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest |a - b| over all pairs; NaN when any difference is NaN (Python's max() would
    drop a NaN that is not its first argument)."""
    return float(np.max([np.abs(np.asarray(b) - np.asarray(a)).max() for a, b in pairs]))


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


# -- export parity: an exported graph against the torch model it came from -------------------------
# Self-contained section: used by `hamedge export` (hamedge.export.flow.check_parity), which feeds
# it the torch model's outputs and the graph's ONNX Runtime outputs for the same inputs.
from hamedge.bundle import OUTPUT_NAMES  # noqa: E402

# Stated parity tolerances (max absolute difference, ONNX Runtime fp32 vs torch eager fp32).
PROB_TOL = 1e-4
RAW_MAP_RTOL = 1e-4  # relative to the largest raw CAM value in the batch
REFINED_MAP_TOL = 2e-3  # refined maps pass a sigmoid with gain 100: float noise is amplified


def compare_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], refined: bool
                    ) -> dict[str, Any]:
    """Max differences against the stated tolerances; 'ok' says whether all pass. Shapes must
    match; a non-finite output never passes."""
    for name in OUTPUT_NAMES:
        if ref[name].shape != got[name].shape:
            raise ValueError(f"{name}: shape {got[name].shape} differs from the reference's "
                             f"{ref[name].shape}")
    probs = _max_abs_diff(*((ref[k], got[k]) for k in ("class_probs", "anomaly_prob")))
    mdiff = float(np.abs(ref["attention_maps"] - got["attention_maps"]).max())
    if refined:
        map_tol = REFINED_MAP_TOL
    else:
        map_tol = RAW_MAP_RTOL * max(1.0, float(np.abs(ref["attention_maps"]).max()))
    # written as "<= tol" so a NaN difference fails
    ok = bool(probs <= PROB_TOL and mdiff <= map_tol)
    return {"max_prob_diff": probs, "prob_tol": PROB_TOL, "max_map_diff": mdiff,
            "map_tol": map_tol, "ok": ok}


def describe_parity(report: dict[str, Any]) -> str:
    """One line with the numbers of a compare_outputs report."""
    return (f"max prob diff {report['max_prob_diff']:.3g} (tol {report['prob_tol']:g}), "
            f"max map diff {report['max_map_diff']:.3g} (tol {report['map_tol']:.3g})")


def run_onnx(model_bytes: bytes, batch: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """The graph's outputs on ``batch`` with ONNX Runtime on the CPU, by output name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(OUTPUT_NAMES),
                    {"image": np.ascontiguousarray(batch, dtype=np.float32)})
    return dict(zip(OUTPUT_NAMES, outs))
