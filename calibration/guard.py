"""INT8 accuracy guard: INT8 graphs measured against the fp32 graph, run by a runtime backend
(ONNX Runtime by default). No torch.

Both graphs are scored by the project's one evaluation driver (hamedge.evaluation.run_evaluation:
same reading, preprocessing, binarisation and metrics as every other evaluation); the comparison
(budget, heatmap agreement, deltas) is hamedge.compare's, the same as `hamedge bench` uses.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hamedge.compare import Budget, deltas, heatmap_agreement, probability_agreement
from hamedge.spec import ModelSpec

__all__ = ["Budget", "compare", "evaluate_graph", "guard_backends", "heatmap_agreement",
           "open_graph"]

# CPU backends that may run a bundle's INT8 graphs; each installed one is guarded separately,
# because their INT8 arithmetic differs (OpenVINO's and ONNX Runtime's probabilities can differ
# by several hundredths on the same Q/DQ graph).
GUARDED_BACKENDS = ("onnxruntime", "openvino")


def guard_backends() -> tuple[str, ...]:
    """The GUARDED_BACKENDS installed here (ONNX Runtime always: the slim runtime needs it)."""
    from hamedge.runtime.registry import missing_dependency

    return tuple(b for b in GUARDED_BACKENDS if b == "onnxruntime" or not missing_dependency(b))


def bf16_refusal() -> str | None:
    """Why OpenVINO cannot run bf16 on this machine (not installed, or no AMX/AVX-512 BF16), or
    None."""
    from hamedge.runtime.registry import missing_dependency

    missing = missing_dependency("openvino")
    if missing:
        return missing
    import openvino as ov

    from hamedge.runtime.measure import cpu_flags
    from hamedge.runtime.openvino import precision_refusal

    core = ov.Core()
    return precision_refusal("bf16", "CPU", cpu_flags(),
                             list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))


def open_graph(path: str | os.PathLike, spec: ModelSpec, channels: int,
               heatmaps_refined: bool = False, precision: str = "fp32", threads: int | None = None,
               backend: str = "onnxruntime"):
    """A CPU backend on one graph file that is not in a bundle yet: ONNX Runtime, or another
    registered backend with ``from_graph`` (openvino), so the guard measures the arithmetic the
    deployed runtime will actually do."""
    from hamedge.bundle import GraphInfo
    from hamedge.errors import HamedgeError
    from hamedge.runtime.registry import backend_class

    cls = backend_class(backend)
    if not hasattr(cls, "from_graph"):
        raise HamedgeError(f"the {backend} backend cannot run a graph file outside a bundle")

    size = spec.input_size
    graph = GraphInfo(input_channels=channels, input_size=size,
                      heatmaps="refined" if heatmaps_refined else "raw",
                      feature_size=spec.feature_size, opset=0)
    return cls.from_graph(path, spec, graph, precision, device="cpu", threads=threads)


def evaluate_graph(path: str | os.PathLike, labelled_set: Any, spec: ModelSpec, channels: int,
                   heatmaps_refined: bool = False, batch_size: int = 16,
                   limit: int | None = None, backend: str = "onnxruntime",
                   precision: str = "fp32") -> tuple[dict[str, Any], np.ndarray]:
    """run_evaluation of one ONNX graph; also returns the attention maps it produced, in order:
    raw low-resolution maps as they are (small), full-resolution refined maps binarised (a
    quarter of their float memory: 200 images of 15 maps at 512 px would hold 3 GB)."""
    from hamedge.evaluation import binarise, run_evaluation

    maps: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    anomaly: list[np.ndarray] = []
    with open_graph(path, spec, channels, heatmaps_refined, precision, backend=backend) as runner:
        def predict(batch: np.ndarray):
            out = runner.run(batch)
            att = out.attention_maps
            maps.append(binarise(att, spec, True) if heatmaps_refined else att)
            probs.append(out.class_probs)
            anomaly.append(out.anomaly_prob)
            return out.class_probs, out.anomaly_prob, att

        result = run_evaluation(predict, labelled_set, spec, batch_size=batch_size, limit=limit,
                                channels=channels, heatmaps_refined=heatmaps_refined)
    # kept out of the JSON: compare() reads them for the largest probability difference
    result["outputs"] = (np.concatenate(probs), np.concatenate(anomaly))
    return result, np.concatenate(maps)


def compare(ref: dict[str, Any], ref_maps: np.ndarray, other: dict[str, Any],
            other_maps: np.ndarray, spec: ModelSpec, budget: Budget,
            heatmaps_refined: bool = False) -> dict[str, Any]:
    """calibration.json's accuracy entry of ``other`` (INT8) against ``ref`` (fp32): deltas
    (other - ref, negative: INT8 worse), heatmap agreement, and whether they fit ``budget``."""
    d = deltas(ref, other, budget, spec.class_names)
    agreement = None
    if "outputs" in ref and "outputs" in other:
        (ref_probs, ref_anomaly), (probs, anomaly) = ref["outputs"], other["outputs"]
        agreement = probability_agreement(ref_probs, probs, ref_anomaly, anomaly, spec)
    return {
        "auc_delta": d.class_auc,
        "mean_auc_delta": d.mean_auc,
        "anomaly_auc_delta": d.anomaly_auc,
        f"mean_tiou@{budget.tiou_threshold}_delta": d.tiou,
        "heatmap_agreement": heatmap_agreement(ref_maps, other_maps, spec, heatmaps_refined),
        "probability_agreement": agreement,
        "summary": other.get("summary"),
        "auc": other["classification"]["auc"],
        "passed": d.passed,
        "failures": d.failures,
        "measured": {"mean_auc_delta": d.mean_auc is not None, "tiou_delta": d.tiou is not None},
    }
