"""INT8 accuracy guard: INT8 graphs measured against the fp32 graph with ONNX Runtime. No torch.

Both graphs are scored by the project's one evaluation driver (hamedge.evaluation.run_evaluation:
same reading, preprocessing, binarisation and metrics as every other evaluation); the guard only
subtracts. Heatmap agreement is the IoU of the binarised fp32 and INT8 maps of the same image
(anomaly map and every class map; pairs where both masks are empty are skipped).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hamedge.bundle import OUTPUT_NAMES
from hamedge.spec import ModelSpec


@dataclass(frozen=True)
class Budget:
    """Largest accepted INT8 loss against fp32 (defaults from the issue)."""

    max_mean_auc_drop: float = 0.005
    max_tiou_drop: float = 0.01
    tiou_threshold: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ort_session(path: str | os.PathLike, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def evaluate_graph(path: str | os.PathLike, labelled_set: Any, spec: ModelSpec, channels: int,
                   heatmaps_refined: bool = False, batch_size: int = 16,
                   limit: int | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """run_evaluation of one ONNX graph; also returns the attention maps it produced, in order:
    raw low-resolution maps as they are (small), full-resolution refined maps binarised (a
    quarter of their float memory: 200 images of 15 maps at 512 px would hold 3 GB)."""
    from hamedge.evaluation import binarise, run_evaluation

    sess = ort_session(path)
    maps: list[np.ndarray] = []

    def predict(batch: np.ndarray):
        cls, ano, att = sess.run(list(OUTPUT_NAMES), {"image": batch})
        maps.append(binarise(att, spec, True) if heatmaps_refined else att)
        return cls, ano, att

    result = run_evaluation(predict, labelled_set, spec, batch_size=batch_size, limit=limit,
                            channels=channels, heatmaps_refined=heatmaps_refined)
    return result, np.concatenate(maps)


def heatmap_agreement(ref_maps: np.ndarray, maps: np.ndarray, spec: ModelSpec,
                      heatmaps_refined: bool = False, chunk: int = 16) -> dict[str, Any]:
    """Mean and minimum IoU between binarised fp32 and INT8 maps (same images, same order).
    Either argument may already be binarised (boolean, as evaluate_graph returns it)."""
    from hamedge.evaluation import binarise

    def binary(x: np.ndarray) -> np.ndarray:
        return x if x.dtype == bool else binarise(x, spec, heatmaps_refined)

    ious = []
    for start in range(0, ref_maps.shape[0], chunk):
        a = binary(ref_maps[start:start + chunk])
        b = binary(maps[start:start + chunk])
        a = a.reshape(a.shape[0] * a.shape[1], -1)
        b = b.reshape(b.shape[0] * b.shape[1], -1)
        inter = (a & b).sum(axis=1)
        union = (a | b).sum(axis=1)
        ious.extend((inter[union > 0] / union[union > 0]).tolist())
    if not ious:
        return {"mean_iou": None, "min_iou": None, "maps": 0}
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "maps": len(ious)}


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


def compare(ref: dict[str, Any], ref_maps: np.ndarray, other: dict[str, Any],
            other_maps: np.ndarray, spec: ModelSpec, budget: Budget,
            heatmaps_refined: bool = False) -> dict[str, Any]:
    """Deltas of ``other`` (INT8) against ``ref`` (fp32): AUC per class and mean, T(IoU), heatmap
    agreement, and whether they fit ``budget``. Deltas are other - ref (negative: INT8 worse)."""
    from hamedge.metrics import tiou_at

    rc, oc = ref["classification"], other["classification"]
    per_class = {name: _sub(oc["auc"].get(name), rc["auc"].get(name)) for name in spec.class_names}
    mean_auc_delta = _sub(oc["mean_auc"], rc["mean_auc"])
    anomaly_delta = _sub(oc.get("anomaly_auc"), rc.get("anomaly_auc"))
    tiou_delta = None
    rl, ol = ref.get("localisation"), other.get("localisation")
    if rl and ol and rl["mean"]["tiou"] is not None:
        tiou_delta = _sub(tiou_at(ol, budget.tiou_threshold), tiou_at(rl, budget.tiou_threshold))
    agreement = heatmap_agreement(ref_maps, other_maps, spec, heatmaps_refined)
    failures = []
    if mean_auc_delta is not None and -mean_auc_delta > budget.max_mean_auc_drop:
        failures.append(f"mean AUC drop {-mean_auc_delta:.4f} > {budget.max_mean_auc_drop}")
    if tiou_delta is not None and -tiou_delta > budget.max_tiou_drop:
        failures.append(f"mean T(IoU={budget.tiou_threshold}) drop {-tiou_delta:.4f} > "
                        f"{budget.max_tiou_drop}")
    return {
        "auc_delta": per_class,
        "mean_auc_delta": mean_auc_delta,
        "anomaly_auc_delta": anomaly_delta,
        f"mean_tiou@{budget.tiou_threshold}_delta": tiou_delta,
        "heatmap_agreement": agreement,
        "summary": other.get("summary"),
        "auc": oc["auc"],
        "passed": not failures,
        "failures": failures,
        "measured": {"mean_auc_delta": mean_auc_delta is not None, "tiou_delta": tiou_delta is not None},
    }
