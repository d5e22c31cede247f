"""Bench accuracy: each configuration scored on the labelled set by hamedge.evaluation (the one
driver) and compared with the fp32 eager reference by hamedge.compare (the one comparison)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from hamedge.bench.eager import NAME as EAGER
from hamedge.bench.results import config_name
from hamedge.compare import Budget, MaskAgreement, deltas, probability_agreement


class Capture:
    """Wraps a predict_fn for hamedge.evaluation and keeps what agreement needs, in image order:
    probabilities and the binarised maps (all 1+K, packed bits)."""

    def __init__(self, predict: Callable, spec, refined: bool) -> None:
        self.predict, self.spec, self.refined = predict, spec, refined
        self.probs: list[np.ndarray] = []
        self.anomaly: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray):
        from hamedge.evaluation import binarise

        probs, anomaly, maps = self.predict(batch)
        self.probs.append(np.asarray(probs, np.float64).reshape(len(batch), -1))
        self.anomaly.append(np.asarray(anomaly, np.float64).reshape(len(batch)))
        binary = binarise(np.asarray(maps, np.float32), self.spec, self.refined)
        self.masks.extend(np.packbits(binary[i].reshape(binary.shape[1], -1), axis=1)
                          for i in range(len(batch)))
        return probs, anomaly, maps


def agreement(ref: Capture, got: Capture, spec) -> dict[str, Any]:
    """Agreement of a configuration with the fp32 reference on the same images."""
    probs = probability_agreement(np.concatenate(ref.probs), np.concatenate(got.probs),
                                  np.concatenate(ref.anomaly), np.concatenate(got.anomaly), spec)
    masks = MaskAgreement()
    for m_ref, m in zip(ref.masks, got.masks):
        masks.add(np.unpackbits(m_ref, axis=1)[None].astype(bool),
                  np.unpackbits(m, axis=1)[None].astype(bool))
    iou = masks.result()
    return {**probs, "mean_heatmap_iou": iou["mean_iou"], "min_heatmap_iou": iou["min_iou"],
            "heatmap_pairs": iou["maps"], "both_empty_pairs": iou["both_empty"]}


def accuracy_entry(backend: str, precision: str, evaluation: dict[str, Any],
                   reference: dict[str, Any] | None, agree: dict[str, Any] | None,
                   budget: Budget, ref_evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json's accuracy entry; with a reference, its deltas and the budget's verdict."""
    from hamedge.metrics import tiou_at

    cls = evaluation["classification"]
    loc = evaluation.get("localisation")
    tiou, tior = {}, {}
    if loc and loc["mean"]["tiou"] is not None:
        tiou = {str(t): v for t, v in zip(loc["tiou_thresholds"], loc["mean"]["tiou"])}
        tior = {str(t): v for t, v in zip(loc["tior_thresholds"], loc["mean"]["tior"])}
    class_auc = dict(cls.get("auc") or {})
    entry = {"backend": backend, "precision": precision, "reference": reference is None,
             "mean_auc": cls.get("mean_auc"), "anomaly_auc": cls.get("anomaly_auc"),
             "class_auc": class_auc, "tiou": tiou, "tior": tior,
             "class_tiou_0.3": {n: tiou_at(loc, 0.3, n) for n in class_auc} if loc else {},
             "box_images": loc.get("box_images") if loc else 0,
             "images": evaluation.get("num_images"), "agreement": agree or {}, "delta": {},
             "within_budget": None, "budget_failures": []}
    if reference is not None and ref_evaluation is not None:
        d = deltas(ref_evaluation, evaluation, budget, list(class_auc))
        entry["delta"] = {"mean_auc": d.mean_auc, budget.tiou_key: d.tiou,
                          "anomaly_auc": d.anomaly_auc}
        entry["within_budget"] = d.passed
        entry["budget_failures"] = d.failures
    return entry


def run_accuracy(results, opts, eager, opened, labelled, spec, log) -> None:
    from hamedge.evaluation import run_evaluation

    batch = min(max(opts.batch_sizes), 16)
    log(f"accuracy on {len(labelled.records)} labelled images")
    ref_cap = Capture(eager.predict, spec, refined=True)
    ref_eval = run_evaluation(ref_cap, labelled, spec, batch_size=batch, limit=opts.eval_limit,
                              channels=spec.in_channels, heatmaps_refined=True)
    reference = accuracy_entry(EAGER, "fp32", ref_eval, None, None, opts.budget)
    results["accuracy"].append(reference)
    for backend in opened:
        cap = Capture(lambda b, be=backend: _raw(be.run(b)), spec, refined=backend.heatmaps_refined)
        ev = run_evaluation(cap, labelled, spec, batch_size=batch, limit=opts.eval_limit,
                            channels=backend.input_channels, heatmaps_refined=backend.heatmaps_refined)
        entry = accuracy_entry(backend.name, backend.precision, ev, reference,
                               agreement(ref_cap, cap, spec), opts.budget, ref_eval)
        results["accuracy"].append(entry)
        log(f"  {config_name(backend.name, backend.precision):22s} mean AUC {_fmt(entry['mean_auc'])}"
            f"  within budget: {entry['within_budget']}")


def _raw(out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return out.class_probs, out.anomaly_prob, out.attention_maps


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
