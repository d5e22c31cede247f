"""Compare the arm64 (QEMU) run of the slim runtime with the host's run; exit 1 on a mismatch.

Tolerances, and why:
- Decoded pixels must be bit-identical (decoders are integer code). The network input must be
  bit-identical for 8-bit sources: hamedge.preprocess resizes them with Pillow's integer
  arithmetic, then normalises in float32 in a fixed order. Float sources (DICOM, 16-bit PNG) are
  resized in Pillow's float mode, whose C code the two compilers may contract into fused
  multiply-adds differently, so their inputs may differ in the last bits: FLOAT_INPUT_TOL
  (absolute, on inputs of roughly unit scale; float32 rounding is 6e-8 per operation).
- fp32 outputs: ONNX Runtime runs different kernels on the two CPUs (NEON vs AVX2/AVX-512 MLAS
  convolutions sum in different orders), so bit equality cannot be asked for. The bound is the
  project's stated tolerance between two fp32 implementations of the same graph, the one export
  checks ONNX Runtime against torch with (PROB_TOL on probabilities, RAW_MAP_RTOL relative to the
  largest raw map value).
- INT8 outputs: the integer arithmetic is exact on both CPUs, but requantisation (a float scale and
  a rounding per tensor, done by different kernels) can land one quantisation step apart, and a
  step moves everything after it. The bound is relative to what INT8 itself costs: the two CPUs'
  INT8 results may differ by at most INT8_SHARE of the largest INT8-vs-fp32 difference on the
  host for the same images (probabilities, and maps relative to their largest value).
- `hamedge infer` result files: the same statuses and findings, and probabilities equal within the
  fp32 tolerance plus the 1e-6 rounding of the result files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hamedge.compare import PROB_TOL, RAW_MAP_RTOL

INT8_SHARE = 0.25
FLOAT_INPUT_TOL = 1e-5
FILE_ROUNDING = 1e-6


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _diffs(ref: dict, got: dict) -> dict:
    """Max probability difference and max map difference relative to the largest ref map value."""
    prob = max(_max_diff(ref["probabilities"], got["probabilities"]), _max_diff(ref["anomaly"], got["anomaly"]))
    scale = max(1.0, float(np.max(np.abs(ref["maps"]))))
    return {"prob": prob, "map_rel": _max_diff(ref["maps"], got["maps"]) / scale}


def compare_probes(host: dict, arm: dict, failures: list[str]) -> dict:
    info = arm["info"]
    if info["machine"] != "aarch64":
        failures.append(f"the emulated Python reports machine {info['machine']!r}, not aarch64")
    if info.get("sve"):
        failures.append("the emulated CPU has SVE; it should be a Neoverse-N1 (no SVE, like Orin)")
    if info["torch_installed"] or arm["modules_torch"]:
        failures.append("torch is installed in (or was imported by) the slim runtime")
    if set(host["images"]) != set(arm["images"]):
        failures.append("the two runs saw different images")
    summary = {"fp32": {"prob": 0.0, "map_rel": 0.0}, "int8": {"prob": 0.0, "map_rel": 0.0}}
    int8_cost = {"prob": 0.0, "map_rel": 0.0}  # host INT8 vs host fp32
    for path, h in host["images"].items():
        a = arm["images"].get(path)
        if a is None:
            continue
        if "error" in h or "error" in a:
            if h.get("error") != a.get("error"):
                failures.append(f"{path}: host {h.get('error', 'decoded')}, arm64 {a.get('error', 'decoded')}")
            continue
        if h["decoded_sha256"] != a["decoded_sha256"]:
            failures.append(f"{path}: decoded pixels differ ({h['decoded']} on the host, {a['decoded']} on arm64)")
        if h["input_sha256"] != a["input_sha256"]:
            input_diff = _max_diff(h["input"], a["input"])
            summary["float_input_max_diff"] = max(summary.get("float_input_max_diff", 0.0), input_diff)
            if h["decoded"].startswith("uint8") or input_diff > FLOAT_INPUT_TOL:
                failures.append(f"{path}: network input differs by up to {input_diff:.3g} ({h['decoded']})")
        for precision in ("fp32", "int8"):
            prob, map_rel = _diffs(h[precision], a[precision]).values()
            s = summary[precision]
            s["prob"], s["map_rel"] = max(s["prob"], prob), max(s["map_rel"], map_rel)
        cost = _diffs(h["fp32"], h["int8"])  # INT8 vs fp32 on the host
        int8_cost = {k: max(int8_cost[k], cost[k]) for k in int8_cost}
    summary["int8_vs_fp32_on_host"] = int8_cost
    tolerances = {"fp32": (PROB_TOL, RAW_MAP_RTOL),
                  "int8": (INT8_SHARE * int8_cost["prob"], INT8_SHARE * int8_cost["map_rel"])}
    for precision, (ptol, mtol) in tolerances.items():
        s = summary[precision]
        s["prob_tol"], s["map_rtol"] = ptol, mtol
        if s["prob"] > ptol or s["map_rel"] > mtol:
            failures.append(f"{precision}: max probability difference {s['prob']:.3g} (tol {ptol:g}), "
                            f"max relative map difference {s['map_rel']:.3g} (tol {mtol:g})")
    return summary


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {r["path"]: r for r in map(json.loads, lines)}


def compare_infer(host_dir: Path, arm_dir: Path, tol: float, failures: list[str]) -> dict:
    host, arm = _records(host_dir), _records(arm_dir)
    if set(host) != set(arm):
        failures.append(f"{arm_dir.name}: different files in results.jsonl")
    worst, statuses = 0.0, {}
    for path, h in host.items():
        a = arm.get(path, {})
        statuses[Path(path).name] = a.get("status")
        if h["status"] != a.get("status") or h.get("findings") != a.get("findings"):
            failures.append(f"{arm_dir.name} {path}: host {h['status']} {h.get('findings')}, "
                            f"arm64 {a.get('status')} {a.get('findings')} {a.get('reason', '')}")
            continue
        if h["status"] == "ok":
            names = sorted(h["probabilities"])
            if names != sorted(a["probabilities"]):
                failures.append(f"{arm_dir.name} {path}: different classes reported")
                continue
            worst = max(worst, _max_diff([h["probabilities"][n] for n in names] + [h["anomaly"]],
                                         [a["probabilities"][n] for n in names] + [a["anomaly"]]))
    if worst > tol + FILE_ROUNDING:
        failures.append(f"{arm_dir.name}: max probability difference {worst:.3g} (tol {tol:g})")
    return {"max_prob_diff": worst, "statuses": statuses}


def main(work: Path) -> int:
    failures: list[str] = []
    host = json.loads((work / "host" / "probe.json").read_text())
    arm = json.loads((work / "arm64" / "probe.json").read_text())
    report = {"arm64": arm["info"], "host": host["info"], "probe": compare_probes(host, arm, failures)}
    for precision, tol in (("fp32", PROB_TOL), ("int8", report["probe"]["int8"]["prob_tol"])):
        report[f"infer_{precision}"] = compare_infer(work / "host" / f"infer-{precision}",
                                                     work / "arm64" / f"infer-{precision}", tol, failures)
    report["failures"] = failures
    (work / "compare.json").write_text(json.dumps(report, indent=1))
    for precision in ("fp32", "int8"):
        p = report["probe"][precision]
        print(f"{precision}: max probability difference {p['prob']:.3g} (tol {p['prob_tol']:g}), "
              f"max relative raw-map difference {p['map_rel']:.3g} (tol {p['map_rtol']:g}); "
              f"hamedge infer results: {report[f'infer_{precision}']['max_prob_diff']:.3g}")
    cost = report["probe"]["int8_vs_fp32_on_host"]
    print(f"(INT8 vs fp32 on the host: {cost['prob']:.3g} probability, {cost['map_rel']:.3g} relative map; "
          f"the INT8 tolerance is {INT8_SHARE:g} of it)")
    float_diff = report["probe"].get("float_input_max_diff")
    print("decoded pixels: " + ("DIFFERENT" if any("decoded pixels" in f for f in failures) else "bit-identical")
          + "; network inputs: " + ("DIFFERENT" if any("network input" in f for f in failures)
                                    else "bit-identical" if float_diff is None else
                                    f"bit-identical for 8-bit sources, float sources within {float_diff:.2g} "
                                    f"(tol {FLOAT_INPUT_TOL:g})"))
    for line in failures:
        print("FAIL:", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
