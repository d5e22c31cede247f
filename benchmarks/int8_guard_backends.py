"""The export's accuracy guard per backend on the packaged demo model: for each INT8 graph and
each guarded CPU backend (ONNX Runtime; OpenVINO where installed), and for OpenVINO bf16, the mean
AUC delta, the mean T(IoU=0.3) delta and the largest probability difference against fp32, as
`hamedge export --int8` records them in calibration.json (default synthetic held-out set and
default budget).

    .venv/bin/python benchmarks/int8_guard_backends.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from _common import RESULTS, run_record

from hamedge.cli import run_app

KEYS = ("mean_auc_delta", "mean_tiou@0.3_delta", "max_prob_diff", "passed")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.hamedge"
        start = time.perf_counter()
        code = run_app(["export", "--out", str(out), "--int8"])
        seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"export failed with exit code {code}")
        cal = json.loads((out / "calibration.json").read_text())
    rows = []
    for target, acc in cal["accuracy"].items():
        for backend, verdict in acc["backends"].items():
            rows.append({"graph": acc["file"], "precision": "int8", "backend": backend,
                         **{k: verdict.get(k) for k in KEYS}})
    bf16 = cal["bf16"]
    rows.append({"graph": "model.onnx", "precision": "bf16", "backend": bf16["backend"],
                 **({k: bf16.get(k) for k in KEYS} if bf16["measured"]
                    else {"not_measured": bf16["reason"]})})
    record = run_record(model="packaged demo model", export_seconds=round(seconds, 1),
                        budget=cal["budget"], validation_images=cal["validation"]["count"],
                        fallback_rounds=len(cal["rounds"]) - 1, rows=rows,
                        note="machine shared with other jobs and busy during the run")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_guard_backends.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Export accuracy guard per backend, packaged demo model",
             "", f"{record['date']}, commit {record['commit']}, {record['machine'].get('cpu')}, "
             f"load average {record['load_average_1min']} (machine shared and busy)", "",
             "CPU flags (of those that matter here): " + ", ".join(
                 f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                 if f in record["machine"].get("cpu_flags", ())), "",
             f"{record['validation_images']} synthetic held-out images, budget {cal['budget']}", "",
             "| graph | precision | backend | mean AUC delta | T(IoU=0.3) delta | max prob diff | passed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v: "n/a" if v is None else (f"{v:+.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        lines.append(f"| {r['graph']} | {r['precision']} | {r['backend']} | "
                     + " | ".join(fmt(r.get(k)) for k in KEYS) + " |")
    lines += ["", "max prob diff: largest absolute difference of any class or anomaly probability "
              "from ONNX Runtime fp32 over the held-out images; deltas are candidate minus fp32."]
    (RESULTS / "int8_guard_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
