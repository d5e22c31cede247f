"""Comparing a graph's outputs with a reference's: one torch-free module for every "against fp32"
or "against torch" check (numpy; onnxruntime only when a graph is run)."""


# -- export parity: an exported graph against the torch model it came from -------------------------
# Self-contained section: used by `hamedge export` (hamedge.export.flow.check_parity), which feeds
# it the torch model's outputs and the graph's ONNX Runtime outputs for the same inputs.
from typing import Any

import numpy as np

from hamedge.bundle import OUTPUT_NAMES

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
    probs = max(float(np.abs(ref[k] - got[k]).max()) for k in ("class_probs", "anomaly_prob"))
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
