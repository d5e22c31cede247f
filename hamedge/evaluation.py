"""The one evaluation driver, for every way of running a model (no torch).

``run_evaluation(predict_fn, labelled_set, spec)`` reads each image of a labelled set
(hamedge.io), preprocesses it by the one rule (hamedge.preprocess), asks ``predict_fn`` for the
three network outputs, and scores them with hamedge.metrics:

    predict_fn(batch: float32 (B, C, S, S)) -> (class_probs (B, K), anomaly_probs (B,) or (B, 1),
                                                attention_maps (B, 1+K, h, w))

i.e. exactly the outputs of an exported graph / hamedge.runtime backend (channel 0 of the maps is
the anomaly map, then the classes in spec.class_names order). Raw low-resolution CAMs are
binarised with hamedge.ops.refine.binary_masks (the heatmap math's one definition); pass
``heatmaps_refined=True`` when the maps are already refined full-resolution heatmaps (B, 1+K, S, S)
and they are thresholded at spec.cam_threshold. The torch model (training.evaluate), ONNX Runtime
fp32/INT8 graphs (calibration, bench) and TensorRT engines are all scored by this same code.

Which images count, as in the reference: classification over every record of the split;
localisation over the split's box list (records with ``box_supervised``, i.e. listed in
ImageSets/bbox/<split>.txt), for each class the image has a box of (box_tags; an image in the box
list with no box at all takes its labels as tags, so a missed finding scores IoU 0). Box masks are
hamedge.datasets.box_mask at the input size S.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from hamedge import metrics
from hamedge.spec import ModelSpec

PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def box_tags_of(record: Any, class_names: Sequence[str]) -> np.ndarray:
    """The reference's bbox_tags: 1 for classes with a box on this image; for an image without
    any box, its labels."""
    boxes = getattr(record, "boxes", None) or {}
    tags = np.array([1.0 if boxes.get(name) else 0.0 for name in class_names], dtype=np.float32)
    if not tags.any():
        tags = (np.asarray(record.labels, dtype=np.float32) >= 0.5).astype(np.float32)
    return tags


def binarise(maps: np.ndarray, spec: ModelSpec, heatmaps_refined: bool = False) -> np.ndarray:
    """Class maps (B, K, h, w) raw, or (B, K, S, S) refined -> boolean (B, K, S, S) masks."""
    size = spec.input_size
    if heatmaps_refined:
        if maps.shape[-2:] != (size, size):
            raise ValueError(f"refined heatmaps must be {size}x{size}, got {maps.shape[-2:]}")
        return maps >= spec.cam_threshold
    from hamedge.ops.refine import binary_masks

    return np.asarray(binary_masks(np.ascontiguousarray(maps, dtype=np.float32), (size, size),
                                   spec), dtype=bool)


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run_evaluation(predict_fn: PredictFn, labelled_set: Any, spec: ModelSpec, *,
                   batch_size: int = 16, limit: int | None = None, channels: int | None = None,
                   heatmaps_refined: bool = False, localisation: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate ``predict_fn`` on ``labelled_set`` (a hamedge.datasets.LabelledSet whose class
    names must be the spec's). Returns a JSON-able dict: classification (see
    metrics.classification_metrics), localisation (metrics.LocalisationMeter.result), counts and
    timing. ``limit`` evaluates only the first N records; ``progress(done, total)`` is called after
    each batch."""
    from hamedge.errors import DataError

    names = tuple(labelled_set.class_names)
    if names != tuple(spec.class_names):
        raise DataError(f"the data set's classes ({', '.join(names)}) are not the model's "
                        f"({', '.join(spec.class_names)})")
    records = list(labelled_set.records)[: limit if limit else None]
    if not records:
        raise DataError("no images to evaluate")
    part = evaluate_part(predict_fn, records, spec, batch_size=batch_size, channels=channels,
                         heatmaps_refined=heatmaps_refined, localisation=localisation,
                         progress=progress)
    return score_parts([part], names, localisation)


def evaluate_part(predict_fn: PredictFn, records: Sequence[Any], spec: ModelSpec, *,
                  batch_size: int = 16, channels: int | None = None,
                  heatmaps_refined: bool = False, localisation: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Predictions and localisation counts of some records, to be merged by ``score_parts`` (a
    multi-process validation runs one part per process). Plain numpy arrays and numbers."""
    from hamedge.datasets import box_mask
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess_batch

    names = tuple(spec.class_names)
    k, size = spec.num_classes, spec.input_size
    probs = np.zeros((len(records), k), np.float64)
    anomaly = np.zeros(len(records), np.float64)
    labels = (np.stack([np.asarray(r.labels, np.float32) for r in records]) if records
              else np.zeros((0, k), np.float32))
    meter = metrics.LocalisationMeter(names)
    start = time.perf_counter()
    done = 0
    predict_s = 0.0
    for chunk in _batches(records, batch_size):
        images = [read_image(r.path) for r in chunk]
        batch = preprocess_batch(images, spec, channels)
        t0 = time.perf_counter()
        cls_p, ano_p, maps = predict_fn(batch)
        predict_s += time.perf_counter() - t0
        cls_p, maps = np.asarray(cls_p), np.asarray(maps)
        probs[done:done + len(chunk)] = cls_p.reshape(len(chunk), k)
        anomaly[done:done + len(chunk)] = np.asarray(ano_p).reshape(len(chunk))
        wanted = [i for i, r in enumerate(chunk) if localisation and r.box_supervised]
        if wanted:
            binary = binarise(maps[wanted, 1:], spec, heatmaps_refined)
            for j, i in enumerate(wanted):
                record, image_hw = chunk[i], images[i].shape[:2]
                gt = np.stack([box_mask(record, name, size, image_hw) for name in names])
                meter.update(binary[j], gt, box_tags_of(record, names))
        done += len(chunk)
        if progress is not None:
            progress(done, len(records))
    return {"probs": probs, "anomaly": anomaly, "labels": labels,
            "meter": {key: getattr(meter, key) for key in _METER_COUNTS},
            "seconds": time.perf_counter() - start, "predict_seconds": predict_s}


_METER_COUNTS = ("counts", "tiou_hits", "tior_hits", "iou_sum")


def score_parts(parts: Sequence[dict[str, Any]], class_names: Sequence[str],
                localisation: bool = True) -> dict[str, Any]:
    """Metrics over the union of ``evaluate_part`` results (the record order does not matter)."""
    names = tuple(class_names)
    meter = metrics.LocalisationMeter(names)
    for key in _METER_COUNTS:
        setattr(meter, key, sum(p["meter"][key] for p in parts))
    probs = np.concatenate([p["probs"] for p in parts])
    anomaly = np.concatenate([p["anomaly"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    result = {
        "classification": metrics.classification_metrics(probs, labels, names, anomaly),
        "localisation": meter.result() if localisation else None,
        "num_images": int(len(probs)),
        "seconds": max(p["seconds"] for p in parts),
        "predict_seconds": max(p["predict_seconds"] for p in parts),
    }
    result["summary"] = summary(result)
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers: mean AUC, anomaly AUC, mean T(IoU) at 0.3, mean T(IoR) at 0.5."""
    cls = result.get("classification") or {}
    loc = result.get("localisation")
    out = {"mean_auc": cls.get("mean_auc"), "anomaly_auc": cls.get("anomaly_auc"),
           "mean_tiou@0.3": None, "mean_tior@0.5": None}
    if loc and loc["mean"]["tiou"] is not None:
        out["mean_tiou@0.3"] = metrics.tiou_at(loc, 0.3)
        j = loc["tior_thresholds"].index(0.5)
        out["mean_tior@0.5"] = loc["mean"]["tior"][j]
    return out


def selection_score(result: dict[str, Any]) -> float:
    """The rule that picks best.safetensors during training: mean AUC + mean T(IoU@0.3) on the
    validation split (missing parts count 0). Both lie in [0, 1], so each weighs the same."""
    s = summary(result)
    return float((s["mean_auc"] or 0.0) + (s["mean_tiou@0.3"] or 0.0))


def centred_blob_maps(spec: ModelSpec, batch: int, sigma: float = 0.25) -> np.ndarray:
    """A fixed centred Gaussian blob (sigma as a fraction of the side) as raw (B, 1+K, h, w) maps."""
    h = spec.feature_size
    axis = (np.arange(h) - (h - 1) / 2) / (sigma * h)
    blob = np.exp(-0.5 * (axis[:, None] ** 2 + axis[None, :] ** 2)).astype(np.float32)
    return np.broadcast_to(blob, (batch, 1 + spec.num_classes, h, h)).copy()


def centred_blob_baseline(labelled_set: Any, spec: ModelSpec, *, sigma: float = 0.25,
                          limit: int | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Localisation of a "model" that predicts the same centred blob for every class of every
    image, binarised and scored by the same code; the floor a real model must clear. Its AUCs are
    0.5 by construction (constant scores)."""
    k = spec.num_classes

    def predict(batch: np.ndarray):
        n = batch.shape[0]
        return np.full((n, k), 0.5), np.full(n, 0.5), centred_blob_maps(spec, n, sigma)

    result = run_evaluation(predict, labelled_set, spec, batch_size=batch_size, limit=limit)
    result["baseline"] = {"kind": "centred_gaussian_blob", "sigma_fraction": sigma}
    return result
