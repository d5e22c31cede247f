"""Evaluation metrics, as the HAM reference code computes them. No torch.

Classification: ROC AUC per class with scikit-learn's roc_curve + auc (as the reference's
calculate_auc), their mean, and the anomaly AUC against "any finding" (max over the class labels).

One deliberate difference from the reference: a class whose labels take a single value in the set
has no defined AUC. The reference turned that NaN into 0 and averaged it in, which drags the mean
down for reasons that have nothing to do with the model. Here such a class reports None and is left
out of ``mean_auc``; ``mean_auc_reference_style`` keeps the reference's number (0, averaged over
every class) for comparison with published figures.

Localisation (box images only): for each class the image has a box for (box_tags == 1),
IoU = |P & G| / max(|P| + |G| - |P & G|, 1) and IoR = |P & G| / max(|P|, 1) between the binarised
refined map P and the box mask G. T(IoU) at t is the fraction of that class's box images whose
IoU >= t; likewise T(IoR). Means are over the classes that have at least one box image (the
reference averaged over all classes, counting box-less classes as 0); the classes left out are
listed in the result.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# The reference's threshold lists (utils/config.py thresh_TIOU / thresh_TIOR), as literals so the
# comparisons iou >= t give exactly the reference's counts.
TIOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
TIOR_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


def _as_2d(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, K), got shape {arr.shape}")
    return arr


def roc_auc(scores: Any, labels: Any) -> float | None:
    """ROC AUC of one score column against binary labels; None when only one label value occurs."""
    from sklearn import metrics as skm  # lazily: the slim runtime may lack scikit-learn

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() >= 0.5
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    fpr, tpr, _ = skm.roc_curve(labels, scores, pos_label=True)
    return float(skm.auc(fpr, tpr))


def classification_metrics(probs: Any, labels: Any, class_names: Sequence[str],
                           anomaly_probs: Any = None) -> dict[str, Any]:
    """Per-class ROC AUC, their mean, and the anomaly AUC (JSON-able dict).

    ``probs`` and ``labels`` are (N, K) in ``class_names`` order; ``anomaly_probs`` (N,) or (N, 1)
    scores "any finding" (labels: max over the class labels)."""
    probs = _as_2d(probs, "probs")
    labels = _as_2d(labels, "labels")
    if probs.shape != labels.shape or probs.shape[1] != len(class_names):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be "
                         f"(N, {len(class_names)})")
    per_class = {name: roc_auc(probs[:, k], labels[:, k]) for k, name in enumerate(class_names)}
    defined = [v for v in per_class.values() if v is not None]
    any_finding = labels.max(axis=1) if labels.shape[0] else np.zeros(0)
    anomaly_auc = None
    if anomaly_probs is not None:
        anomaly_probs = np.asarray(anomaly_probs, dtype=np.float64).reshape(-1)
        if anomaly_probs.shape[0] != labels.shape[0]:
            raise ValueError("anomaly_probs needs one score per image")
        anomaly_auc = roc_auc(anomaly_probs, any_finding)
    return {
        "num_images": int(labels.shape[0]),
        "positives": {name: int((labels[:, k] >= 0.5).sum()) for k, name in enumerate(class_names)},
        "auc": per_class,
        "mean_auc": float(np.mean(defined)) if defined else None,
        "mean_auc_reference_style": float(sum(defined) / len(class_names)),
        "undefined_auc_classes": [name for name, v in per_class.items() if v is None],
        "anomaly_auc": anomaly_auc,
        "num_abnormal": int((any_finding >= 0.5).sum()),
    }


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|P & G|, |P|, |G|) per map for boolean-able (..., H, W) arrays."""
    p = np.asarray(pred).astype(bool, copy=False)
    g = np.asarray(gt) > 0.5 if np.asarray(gt).dtype != bool else np.asarray(gt)
    axes = (-2, -1)
    return (np.logical_and(p, g).sum(axis=axes), p.sum(axis=axes), g.sum(axis=axes))


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray | float:
    """Pixel IoU = |P&G| / max(|P|+|G|-|P&G|, 1) (the reference's single_IOU), per map."""
    inter, p, g = overlap_counts(pred, gt)
    out = inter / np.maximum(p + g - inter, 1)
    return float(out) if np.ndim(out) == 0 else out


def ior(pred: np.ndarray, gt: np.ndarray) -> np.ndarray | float:
    """Intersection over the prediction = |P&G| / max(|P|, 1) (the reference's single_IOR)."""
    inter, p, _ = overlap_counts(pred, gt)
    out = inter / np.maximum(p, 1)
    return float(out) if np.ndim(out) == 0 else out


class LocalisationMeter:
    """Accumulates T(IoU) and T(IoR) over box images, one image per update."""

    def __init__(self, class_names: Sequence[str],
                 tiou_thresholds: Sequence[float] = TIOU_THRESHOLDS,
                 tior_thresholds: Sequence[float] = TIOR_THRESHOLDS) -> None:
        self.class_names = tuple(class_names)
        self.tiou_thresholds = tuple(tiou_thresholds)
        self.tior_thresholds = tuple(tior_thresholds)
        k = len(self.class_names)
        self.counts = np.zeros(k, dtype=np.int64)
        self.tiou_hits = np.zeros((k, len(self.tiou_thresholds)), dtype=np.int64)
        self.tior_hits = np.zeros((k, len(self.tior_thresholds)), dtype=np.int64)
        self.iou_sum = np.zeros(k, dtype=np.float64)

    def update(self, binary_pred: np.ndarray, gt_masks: np.ndarray, box_tags: Any) -> None:
        """One image: binary_pred (K, H, W) bool, gt_masks (K, H, W), box_tags (K,) 0/1."""
        k = len(self.class_names)
        tags = np.asarray(box_tags).reshape(-1) >= 0.5
        if binary_pred.shape[0] != k or gt_masks.shape[0] != k or tags.shape[0] != k:
            raise ValueError(f"expected {k} maps, masks and tags; got {binary_pred.shape}, "
                             f"{gt_masks.shape}, {tags.shape}")
        if binary_pred.shape != gt_masks.shape:
            raise ValueError(f"prediction {binary_pred.shape} and masks {gt_masks.shape} differ")
        idx = np.flatnonzero(tags)
        if idx.size == 0:
            return
        ious = np.atleast_1d(iou(binary_pred[idx], gt_masks[idx]))
        iors = np.atleast_1d(ior(binary_pred[idx], gt_masks[idx]))
        self.counts[idx] += 1
        self.iou_sum[idx] += ious
        self.tiou_hits[idx] += ious[:, None] >= np.asarray(self.tiou_thresholds)[None, :]
        self.tior_hits[idx] += iors[:, None] >= np.asarray(self.tior_thresholds)[None, :]

    def result(self) -> dict[str, Any]:
        """Per class and mean T(IoU)/T(IoR) (JSON-able); box-less classes are None and excluded."""
        per_class: dict[str, Any] = {}
        with_boxes = self.counts > 0
        for k, name in enumerate(self.class_names):
            n = int(self.counts[k])
            if n == 0:
                per_class[name] = None
                continue
            per_class[name] = {
                "box_images": n,
                "tiou": [float(v) for v in self.tiou_hits[k] / n],
                "tior": [float(v) for v in self.tior_hits[k] / n],
                "mean_iou": float(self.iou_sum[k] / n),
            }
        if with_boxes.any():
            c = self.counts[with_boxes][:, None]
            mean_tiou = [float(v) for v in (self.tiou_hits[with_boxes] / c).mean(axis=0)]
            mean_tior = [float(v) for v in (self.tior_hits[with_boxes] / c).mean(axis=0)]
            mean_iou = float((self.iou_sum[with_boxes] / self.counts[with_boxes]).mean())
        else:
            mean_tiou = mean_tior = None
            mean_iou = None
        return {
            "tiou_thresholds": list(self.tiou_thresholds),
            "tior_thresholds": list(self.tior_thresholds),
            "per_class": per_class,
            "mean": {"tiou": mean_tiou, "tior": mean_tior, "mean_iou": mean_iou},
            "classes_without_boxes": [n for n, c in zip(self.class_names, self.counts) if c == 0],
            "box_images": int(self.counts.sum()),
        }


def tiou_at(loc_result: dict[str, Any], threshold: float = 0.3, class_name: str | None = None
            ) -> float | None:
    """T(IoU) at one threshold from a LocalisationMeter result (mean, or one class)."""
    thresholds = loc_result["tiou_thresholds"]
    j = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - threshold))
    if not math.isclose(thresholds[j], threshold, abs_tol=1e-9):
        raise ValueError(f"T(IoU) was not computed at {threshold}")
    entry = loc_result["mean"] if class_name is None else loc_result["per_class"].get(class_name)
    if entry is None or entry.get("tiou") is None:
        return None
    return entry["tiou"][j]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def format_table(results: dict[str, Any], title: str | None = None):
    """A rich Table of an evaluation result: per class AUC, box count, T(IoU) and T(IoR), then the
    mean row and the anomaly AUC. ``results`` holds "classification" and/or "localisation" as
    returned by classification_metrics / LocalisationMeter.result (what evaluation returns)."""
    from rich.table import Table

    cls = results.get("classification") or {}
    loc = results.get("localisation") or {}
    tiou_t = loc.get("tiou_thresholds", list(TIOU_THRESHOLDS))
    tior_t = loc.get("tior_thresholds", list(TIOR_THRESHOLDS))
    names = list((cls.get("auc") or {}).keys()) or list((loc.get("per_class") or {}).keys())
    table = Table(title=title, show_lines=False)
    table.add_column("class", style="bold")
    table.add_column("AUC", justify="right")
    table.add_column("boxes", justify="right")
    for t in tiou_t:
        table.add_column(f"IoU≥{t:g}", justify="right")
    for t in tior_t:
        table.add_column(f"IoR≥{t:g}", justify="right")
    per_loc = loc.get("per_class") or {}
    for name in names:
        entry = per_loc.get(name)
        row = [name, _fmt((cls.get("auc") or {}).get(name)),
               str(entry["box_images"]) if entry else "0"]
        row += [_fmt(v, 2) for v in (entry["tiou"] if entry else [None] * len(tiou_t))]
        row += [_fmt(v, 2) for v in (entry["tior"] if entry else [None] * len(tior_t))]
        table.add_row(*row)
    mean = loc.get("mean") or {}
    table.add_section()
    table.add_row("mean", _fmt(cls.get("mean_auc")), str(loc.get("box_images", 0)),
                  *[_fmt(v, 2) for v in (mean.get("tiou") or [None] * len(tiou_t))],
                  *[_fmt(v, 2) for v in (mean.get("tior") or [None] * len(tior_t))], style="bold")
    if cls.get("anomaly_auc") is not None:
        table.add_row("anomaly", _fmt(cls.get("anomaly_auc")), "",
                      *[""] * (len(tiou_t) + len(tior_t)))
    return table
