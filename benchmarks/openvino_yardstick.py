"""hamedge's best CPU configuration against OpenVINO's own benchmark on the bundle's graphs.

The yardstick is OpenVINO's `benchmark_app` (installed with the openvino wheel) run as a user
would run it on each of the bundle's graphs (fp32 model.onnx, the S8S8 model.int8.onnx, the
U8S8 model.int8.cpu.onnx): its defaults (so bf16 float layers on CPUs with AMX), a static input
shape, `-hint latency` at batch 1 and `-hint throughput` at batch 1 and 8, reporting images/s.
OpenVINO's best is the fastest graph and hint at each batch size.

hamedge is measured the way its callers use it, on the same graphs through its backends:
- batch 1, "latency": one `Backend.run` call after another (the API, a served request);
- "throughput" (batch 1 and 8): the backend opened for throughput (as `hamedge infer` opens it),
  with as many whole batches in flight through `Backend.submit` as it has parallel requests (the
  folder pipeline's loop without the files).
Every configuration hamedge can run here competes: onnxruntime fp32/int8, openvino fp32/bf16/int8
(int8: the Q/DQ graph each backend measured fastest). The ratio hamedge best / OpenVINO best is
the figure to read; both are measured one right after the other on the same machine.

    .venv/bin/python benchmarks/openvino_yardstick.py [--only default|resnet50] [--seconds S]

Writes benchmarks/results/openvino_yardstick_<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from _common import RESULTS, load_average, record_line, run_record
from openvino_vs_ort import default_bundle, input_batch, resnet50_bundle

from hamedge.fsutil import write_text

GRAPHS = ("model.onnx", "model.int8.onnx", "model.int8.cpu.onnx")
HAMEDGE_CONFIGS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                   ("openvino", "bf16"), ("openvino", "int8"))
MODES = ((1, "latency"), (1, "throughput"), (8, "throughput"))


def benchmark_app(graph: Path, shape: str, batch: int, hint: str, seconds: float) -> dict:
    """OpenVINO's benchmark_app on one graph: images/s and median latency, or the error line."""
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe), "-m", str(graph), "-d", "CPU", "-hint", hint, "-shape", shape,
           "-t", str(max(1, int(seconds)))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    fps = re.search(r"Throughput:\s+([\d.]+) FPS", text)
    median = re.search(r"Median:\s+([\d.]+) ms", text)
    precision = re.search(r"INFERENCE_PRECISION_HINT: (.+)", text)
    if proc.returncode or not fps:
        lines = [ln for ln in text.splitlines() if "ERROR" in ln] or text.splitlines()[-1:]
        return {"error": (lines or ["benchmark_app failed"])[0].strip()}
    return {"images_per_s": float(fps.group(1)), "median_ms": float(median.group(1)) if median else None,
            "precision": precision.group(1).strip() if precision else None}


def hamedge_rate(bundle, backend: str, precision: str, batch: int, use: str, seconds: float) -> dict:
    """Images/s of one hamedge configuration, used as its callers use it (module docstring)."""
    from hamedge.errors import HamedgeError
    from hamedge.runtime import open_backend

    x, _ = input_batch(bundle, batch)
    try:
        backend_ = open_backend(bundle, backend, precision, use=use)
    except HamedgeError as exc:
        return {"error": str(exc)}
    with backend_ as b:
        graph = b.artifact.name if b.artifact is not None else None
        window: deque = deque()
        in_flight = max(1, b.parallel_requests) if use == "throughput" else 1

        def step() -> None:
            if in_flight == 1:
                b.run(x)
                return
            window.append(b.submit(x))
            while len(window) >= in_flight:
                window.popleft().result()

        for _ in range(3 + in_flight):  # warm-up, and fill the requests
            step()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 5:
            step()
            calls += 1
        while window:  # the last batches count when they finish
            window.popleft().result()
        elapsed = time.perf_counter() - start
    return {"images_per_s": calls * batch / elapsed, "graph": graph, "in_flight": in_flight}


def measure(label: str, bundle, seconds: float) -> dict:
    spec, graph = bundle.spec, bundle.graph
    rows: dict = {"model": label, "yardstick": [], "hamedge": []}
    for batch, hint in MODES:
        shape = f"{graph.input_name}[{batch},{graph.input_channels},{spec.input_size},{spec.input_size}]"
        for rel in GRAPHS:
            if not bundle.has(rel):
                continue
            print(f"{label}: benchmark_app {rel} b{batch} {hint}", flush=True)
            rows["yardstick"].append({"graph": rel, "batch": batch, "hint": hint,
                                      **benchmark_app(bundle.root / rel, shape, batch, hint, seconds)})
        for backend, precision in HAMEDGE_CONFIGS:
            print(f"{label}: hamedge {backend} {precision} b{batch} {hint}", flush=True)
            rows["hamedge"].append({"backend": backend, "precision": precision, "batch": batch,
                                    "use": hint, **hamedge_rate(bundle, backend, precision, batch,
                                                                hint, seconds)})
    return rows


def best(entries: list[dict], batch: int) -> dict | None:
    ok = [e for e in entries if e["batch"] == batch and "images_per_s" in e]
    return max(ok, key=lambda e: e["images_per_s"]) if ok else None


def report(record: dict, models: list[dict]) -> str:
    lines = ["# hamedge against OpenVINO's benchmark_app on the bundle's graphs", "",
             f"- measured {record_line(record)}",
             f"- OpenVINO {record['versions'].get('openvino', '?')}, ONNX Runtime "
             f"{record['versions'].get('onnxruntime', '?')}; {record['seconds']:g} s per measurement",
             "- yardstick: `benchmark_app -d CPU -hint latency|throughput`, static shape, "
             "OpenVINO's defaults (its float precision is shown); hamedge: latency = one `run` "
             "after another, throughput = opened for throughput with whole batches in flight "
             "through `submit` (the folder pipeline's loop). Images/s; the best of each side at "
             "each batch size is compared.", ""]
    for m in models:
        lines += [f"## {m['model']}", "", "| who | graph / configuration | batch | images/s | note |",
                  "| --- | --- | ---: | ---: | --- |"]
        for e in m["yardstick"]:
            rate = f"{e['images_per_s']:.1f}" if "images_per_s" in e else "-"
            note = e.get("error") or f"precision {e.get('precision')}, median {e.get('median_ms')} ms"
            lines.append(f"| benchmark_app | {e['graph']} -hint {e['hint']} | {e['batch']} | {rate} | {note} |")
        for e in m["hamedge"]:
            rate = f"{e['images_per_s']:.1f}" if "images_per_s" in e else "-"
            note = e.get("error") or f"runs {e['graph']}, {e['in_flight']} batch(es) in flight"
            lines.append(f"| hamedge | {e['backend']} {e['precision']} {e['use']} | {e['batch']} | {rate} | {note} |")
        lines.append("")
        for batch in sorted({e["batch"] for e in m["yardstick"] + m["hamedge"]}):
            ours, theirs = best(m["hamedge"], batch), best(m["yardstick"], batch)
            if ours and theirs:
                ratio = ours["images_per_s"] / theirs["images_per_s"]
                lines.append(f"- batch {batch}: hamedge best {ours['images_per_s']:.1f} images/s "
                             f"({ours['backend']} {ours['precision']} {ours['use']}) against "
                             f"benchmark_app best {theirs['images_per_s']:.1f} ({theirs['graph']} "
                             f"-hint {theirs['hint']}): **{ratio:.2f}x**")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("default", "resnet50"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hamedge-reference")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    record = run_record(seconds=args.seconds)
    models = []
    if args.only in (None, "default"):
        models.append(measure("default model", default_bundle(), args.seconds))
    if args.only in (None, "resnet50"):
        models.append(measure("resnet50 / stride 8 / 512 (random weights)",
                              resnet50_bundle(args.work), args.seconds))
    record["load_average_1min_after"] = load_average()
    tag = f"cpu{record['machine']['cores']}" + (f"_{args.only}" if args.only else "")
    text = report(record, models) + f"\n1-minute load average after: {record['load_average_1min_after']}\n"
    write_text(RESULTS / f"openvino_yardstick_{tag}.md", text)
    write_text(RESULTS / f"openvino_yardstick_{tag}.json",
               json.dumps({"record": record, "models": models}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
