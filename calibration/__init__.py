"""INT8 calibration for hamedge bundles (no torch: onnx + onnxruntime only).

``build_int8`` is the whole flow behind ``hamedge export --int8``: calibrate the fp32 graph once
on held-out X-rays (calibration.data), write the TensorRT (S8S8) and CPU (U8S8) Q/DQ graphs from
those ranges (calibration.quantize), measure both against fp32 on a labelled held-out set
(calibration.guard), and while the budget is not met keep the most sensitive layers in floating
point and retry. Returns the calibration.json content.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable

from hamedge.calibration.data import CalibrationSet, load_calibration_set  # noqa: F401
from hamedge.calibration.guard import (Budget, bf16_refusal, compare, evaluate_graph,
                                       guard_backends)
from hamedge.calibration.quantize import (calibrate, layer_sensitivity, qdq_problems, quantize,
                                  quantizable_nodes)
from hamedge.bundle import INT8_GRAPHS, TARGETS, GraphInfo
from hamedge.errors import HamedgeError
from hamedge.spec import ModelSpec

CALIBRATION_FORMAT = "hamedge-calibration/1"


class Int8BudgetError(HamedgeError):
    """INT8 graphs stayed outside the accuracy budget after every fallback round."""


def build_int8(fp32_path: str | os.PathLike, out_dir: str | os.PathLike, spec: ModelSpec,
               graph: GraphInfo, calib: CalibrationSet, checkpoint_sha256: str, *,
               val_set: Any = None, val_limit: int | None = None, val_info: dict | None = None,
               method: str = "max",
               budget: Budget = Budget(), max_rounds: int = 4, targets=TARGETS,
               enforce_budget: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``out_dir``/model.int8.onnx and model.int8.cpu.onnx; return calibration.json's dict.

    ``val_set`` None skips the guard (recorded as not measured). When the budget still fails after
    ``max_rounds`` fallback rounds, raise Int8BudgetError if ``enforce_budget`` (the graphs are left
    in ``out_dir`` for inspection but the caller's bundle is not committed)."""
    import onnx

    out_dir = Path(out_dir)
    ranges_path = out_dir / ".calibration.ranges.json"
    backends = guard_backends()
    refined = graph.heatmaps == "refined"
    try:
        # small batches: the calibrator holds every activation of a batch (see quantize._reader)
        ranges_sha = calibrate(fp32_path, calib.batches(2), ranges_path, method=method)
        fp32_model = onnx.load(str(fp32_path))
        candidates = quantizable_nodes(fp32_model)
        ref = ref_maps = None
        if val_set is not None:
            log(f"guard: fp32 on {len(val_set.records) if val_limit is None else val_limit} "
                "held-out images")
            ref, ref_maps = evaluate_graph(fp32_path, val_set, spec, graph.input_channels,
                                           refined, limit=val_limit)
            log(f"guard: INT8 graphs checked on {', '.join(backends)}")
        excluded: list[str] = []
        rounds: list[dict[str, Any]] = []
        for round_no in range(max_rounds + 1):
            results: dict[str, Any] = {}
            for target in targets:
                path = out_dir / INT8_GRAPHS[target]
                kept = quantize(fp32_path, path, ranges_path, target, method, exclude=excluded)
                problems = qdq_problems(onnx.load(str(path)), target)
                if problems:
                    raise HamedgeError(f"{INT8_GRAPHS[target]} breaks the {target} Q/DQ rules: "
                                       f"{problems[0]}")
                entry: dict[str, Any] = {"file": INT8_GRAPHS[target], "float_nodes": len(kept)}
                if ref is not None:
                    entry.update(_guard_graph(path, backends, ref, ref_maps, val_set, spec, graph,
                                              budget, val_limit))
                results[target] = entry
            passed = all(r.get("passed", True) for r in results.values())
            rounds.append({"round": round_no, "excluded": list(excluded), "passed": passed,
                           "targets": {t: _short(r) for t, r in results.items()}})
            for target, r in results.items():
                log(f"guard round {round_no} {target}: {_describe(r)}")
            if passed or ref is None or round_no == max_rounds:
                break
            # keep the worst layers of every failing target in float, more each round (1, 2, 4, ...)
            worst: list[str] = []
            sample = calib.inputs[: min(8, len(calib))]
            for target, r in results.items():
                if not r["passed"]:
                    ranked = layer_sensitivity(fp32_path, out_dir / INT8_GRAPHS[target], sample,
                                               exclude=excluded)
                    worst += [name for name, _ in ranked if name not in excluded + worst]
            add = worst[: 2 ** round_no]
            if not add:
                break
            excluded += add
            log(f"guard: INT8 outside the budget; keeping {len(add)} more layer(s) in float: "
                + ", ".join(add))
        passed = rounds[-1]["passed"]
        record = {
            "format": CALIBRATION_FORMAT,
            "checkpoint_sha256": checkpoint_sha256,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": method,
            "count": len(calib),
            "calibration_images": calib.describe(),
            "tensor_ranges_sha256": ranges_sha,
            "quantised_ops": ["Conv", "MatMul", "Gemm"],
            "quantisable_nodes": len(candidates),
            "excluded_nodes": excluded,
            "float_tail_prefix": "/head/",
            "targets": {t: {"file": INT8_GRAPHS[t],
                            "activations": "int8 symmetric" if t == "tensorrt" else "uint8 asymmetric",
                            "weights": "int8 symmetric per-channel",
                            "bias": "float" if t == "tensorrt" else "int32"} for t in targets},
            "budget": budget.to_dict(),
            "validation": None if ref is None else _validation(val_set, ref, val_info),
            "accuracy": {t: results[t] for t in targets} if ref is not None else None,
            "guard_backends": list(backends) if ref is not None else [],
            "bf16": None if ref is None else _guard_bf16(fp32_path, ref, ref_maps, val_set, spec,
                                                          graph, budget, val_limit, log),
            "rounds": rounds,
            "passed": passed if ref is not None else None,
            "warnings": list(calib.warnings),
        }
        if ref is not None and not passed and enforce_budget:
            fails = "; ".join(f"{f}: {', '.join(r['failures'])}" for f, r in results.items()
                              if r.get("failures"))
            raise Int8BudgetError(f"INT8 outside the accuracy budget after {len(rounds)} round(s) "
                                  f"({len(excluded)} layers kept in float): {fails} "
                                  "(raise the budget with --max-auc-drop/--max-tiou-drop or skip "
                                  "the guard with --no-int8-guard)")
        return record
    finally:
        if ranges_path.exists():
            ranges_path.unlink()


def _guard_graph(path, backends, ref, ref_maps, val_set, spec, graph, budget, val_limit
                 ) -> dict[str, Any]:
    """One INT8 graph on every guarded backend. The top-level keys stay ONNX Runtime's full entry
    (what bundles before per-backend entries had); "backends" holds each backend's verdict and
    "passed" is True only when every backend passed."""
    refined = graph.heatmaps == "refined"
    per_backend: dict[str, Any] = {}
    full: dict[str, Any] = {}
    for backend in backends:
        got, maps = evaluate_graph(path, val_set, spec, graph.input_channels, refined,
                                   limit=val_limit, backend=backend)
        result = compare(ref, ref_maps, got, maps, spec, budget, refined)
        full = full or result
        per_backend[backend] = _short(result)
    failures = [f"{b}: {f}" for b, r in per_backend.items() for f in r["failures"]]
    return {**full, "backends": per_backend,
            "passed": all(r["passed"] for r in per_backend.values()), "failures": failures}


def _guard_bf16(fp32_path, ref, ref_maps, val_set, spec, graph, budget, val_limit,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The fp32 graph run in bf16 by OpenVINO against fp32, with the INT8 budget; not measured
    (and so not refused at run time) where OpenVINO cannot run bf16 here."""
    reason = bf16_refusal()
    if reason:
        log(f"guard: bf16 not measured ({reason})")
        return {"backend": "openvino", "measured": False, "reason": reason}
    refined = graph.heatmaps == "refined"
    got, maps = evaluate_graph(fp32_path, val_set, spec, graph.input_channels, refined,
                               limit=val_limit, backend="openvino", precision="bf16")
    result = {"backend": "openvino", "measured": True,
              **_short(compare(ref, ref_maps, got, maps, spec, budget, refined))}
    log(f"guard bf16 openvino: {_describe(result)}")
    return result


def _validation(val_set: Any, ref: dict[str, Any], info: dict | None) -> dict[str, Any]:
    """Enough to recompute the deltas elsewhere: which images (names + sha256), how they were
    made (``info``, e.g. the synthetic generator's seed), and the fp32 numbers."""
    from hamedge.fsutil import sha256_file

    records = list(val_set.records)
    return {"source": str(getattr(val_set, "root", "")), **(info or {}),
            "images": [{"name": r.name, "sha256": sha256_file(r.path)} for r in records],
            "count": ref["num_images"], "fp32": {
                "summary": ref["summary"], "auc": ref["classification"]["auc"],
                "box_images": (ref.get("localisation") or {}).get("box_images")}}


def _short(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("mean_auc_delta", "anomaly_auc_delta", "passed", "failures")
    out = {k: r.get(k) for k in keys if k in r}
    out.update({k: v for k, v in r.items() if k.startswith("mean_tiou@")})
    if "heatmap_agreement" in r:
        out["heatmap_mean_iou"] = r["heatmap_agreement"]["mean_iou"]
    if r.get("probability_agreement"):
        out["max_prob_diff"] = r["probability_agreement"]["max_prob_diff"]
        out["decision_flips"] = r["probability_agreement"]["flips"]
    if "backends" in r:
        out["backends"] = {b: {k: v.get(k) for k in ("passed", "max_prob_diff")}
                           for b, v in r["backends"].items()}
    return out


def _fmt(v: float | None, spec: str = "+.4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _describe(r: dict[str, Any]) -> str:
    if "passed" not in r:
        return f"{r['file']} written (accuracy not measured)"
    tiou = next((v for k, v in r.items() if k.startswith("mean_tiou@")), None)
    agree = r["heatmap_agreement"]["mean_iou"] if "heatmap_agreement" in r else r.get(
        "heatmap_mean_iou")
    if "backends" in r:
        return "; ".join(f"{b}: {_describe(v)}" for b, v in r["backends"].items())
    return (f"mean AUC {_fmt(r['mean_auc_delta'])}, anomaly AUC {_fmt(r['anomaly_auc_delta'])}, "
            f"T(IoU) {_fmt(tiou)}, max prob diff {_fmt(r.get('max_prob_diff'), '.4f')}, heatmap IoU vs fp32 "
            f"{'n/a' if agree is None else f'{agree:.3f}'} -> {'pass' if r['passed'] else 'FAIL'}")


__all__ = ["build_int8", "Budget", "CalibrationSet", "load_calibration_set", "Int8BudgetError"]
