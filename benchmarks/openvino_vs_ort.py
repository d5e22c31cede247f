"""ONNX Runtime and OpenVINO side by side on the same bundle files, through hamedge's backends.

For each model (the packaged default model; a resnet50/stride-8/512 HAM with random weights), each
graph of its bundle (fp32 model.onnx, the S8S8 model.int8.onnx, the U8S8 model.int8.cpu.onnx) and
batch 1 and 8: median ms per call of hamedge's onnxruntime backend and of its openvino backend,
measured one right after the other, and their ratio. OpenVINO also runs the fp32 graph at bf16
(where the CPU has it) and, as the yardstick, with OpenVINO's own defaults (no precision hint: it
silently runs bf16 on AMX CPUs), called directly without hamedge. Each row also gives the largest
probability difference from ONNX Runtime fp32 on the same batch of real (or synthetic) X-rays.

    .venv/bin/python benchmarks/openvino_vs_ort.py [--only default|resnet50] [--seconds S]

Writes benchmarks/results/openvino_vs_ort_<machine>.md and .json with the machine (lscpu model,
amx/avx512_vnni/avx512_bf16 flags), date, commit, versions and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx512_bf16", "avx_vnni")


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from hamedge.runtime.measure import cpu_model

    return cpu_model()


def default_bundle():
    from hamedge.api import resolve_bundle

    # INT8 guarded as `hamedge export --int8`; if the guard refuses, exported anyway (speed only)
    from hamedge.calibration import Int8BudgetError

    try:
        return resolve_bundle(None, int8=True, log=print)
    except Int8BudgetError as exc:
        print(f"INT8 guard: {exc}; exporting without it (speed only)")
        return resolve_bundle(None, int8=True, int8_guard=False, log=print)


def resnet50_bundle(work: Path):
    from hamedge.bundle import Bundle
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.export import ExportOptions, export_bundle
    from hamedge.model.network import random_model
    from hamedge.spec import ModelSpec

    target = work / "resnet50-s8-512.hamedge"
    if not (target / "checksums").is_file():
        spec = ModelSpec(arch="resnet50", output_stride=8, dilation=True, keep_maxpool=True,
                         input_size=512, description="random weights: speed reference only")
        ckpt = work / "resnet50-s8-512-random.safetensors"
        save_checkpoint(random_model(spec, seed=0), spec, ckpt)
        export_bundle(ckpt, ExportOptions(out=target, force=True, int8=True, calib_count=16,
                                          guard=False))
    return Bundle.open(target)


def median_ms(run, batch: int, seconds: float) -> tuple[float, int]:
    """Median ms per call: 1 warm-up call (2 at batch 1), then calls until ``seconds`` have
    passed (at least 3, at most 30)."""
    for _ in range(2 if batch == 1 else 1):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 30):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), len(times)


def raw_openvino(path: Path):
    """OpenVINO called directly with its defaults (the yardstick a user would try first)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    request = compiled.create_infer_request()

    def run(x: np.ndarray):
        request.infer({"image": x})
        return np.array(request.get_tensor("class_probs").data)

    return run, str(compiled.get_property("INFERENCE_PRECISION_HINT"))


def input_batch(bundle, batch: int) -> tuple[np.ndarray, str]:
    """Real chest X-rays (the NIH samples beside the checkout) preprocessed by the project's rule,
    else synthetic ones from hamedge.synth: INT8 ranges were calibrated on X-rays, so random noise
    would exaggerate INT8's probability differences."""
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess_batch

    nih = sorted((ROOT.parent / "shared" / "data" / "nih-samples" / "images").glob("*.png"))
    if nih:
        files, what = nih, "NIH sample X-rays"
    else:
        from hamedge import synth

        folder = Path(tempfile.gettempdir()) / "hamedge-ov-bench-synth"
        if not (folder / "dataset.json").is_file():
            synth.generate(folder, 8, seed=0, size=512, overwrite=True, workers=1)
        files, what = sorted((folder / "images").glob("*.png")), "synthetic X-rays (hamedge.synth)"
    images = [read_image(files[i % len(files)]) for i in range(batch)]
    return preprocess_batch(images, bundle.spec, bundle.graph.input_channels), what


def measure_model(label: str, bundle, seconds: float, batches=(1, 8)) -> list[dict]:
    from hamedge.runtime.onnxruntime import OnnxRuntimeBackend
    from hamedge.runtime.openvino import OpenVINOBackend

    spec, graph = bundle.spec, bundle.graph
    graphs = [("fp32", "model.onnx"), ("int8", "model.int8.onnx"), ("int8", "model.int8.cpu.onnx")]
    rows = []
    for batch in batches:
        x, inputs = input_batch(bundle, batch)
        use = "latency" if batch == 1 else "throughput"
        with OnnxRuntimeBackend.from_graph(bundle.root / "model.onnx", spec, graph) as ref:
            reference = ref.run(x).class_probs
        for precision, rel in graphs:
            if not bundle.has(rel):
                continue
            path = bundle.root / rel
            row = {"model": label, "graph": rel, "batch": batch, "inputs": inputs}
            with OnnxRuntimeBackend.from_graph(path, spec, graph, precision) as ort_b:
                row["ort_ms"], row["ort_calls"] = median_ms(lambda: ort_b.run(x), batch, seconds)
                row["ort_max_prob_diff"] = float(np.abs(ort_b.run(x).class_probs - reference).max())
            with OpenVINOBackend.from_graph(path, spec, graph, precision, use=use) as ov_b:
                row["ov_ms"], row["ov_calls"] = median_ms(lambda: ov_b.run(x), batch, seconds)
                row["ov_max_prob_diff"] = float(np.abs(ov_b.run(x).class_probs - reference).max())
            raw, hint = raw_openvino(path)
            row["ov_default_ms"], _ = median_ms(lambda: raw(x), batch, seconds)
            row["ov_default_precision"] = hint
            row["ov_default_max_prob_diff"] = float(np.abs(raw(x) - reference).max())
            if precision == "fp32":
                try:
                    with OpenVINOBackend.from_graph(path, spec, graph, "bf16", use=use) as bf:
                        row["ov_bf16_ms"], _ = median_ms(lambda: bf.run(x), batch, seconds)
                        row["ov_bf16_max_prob_diff"] = float(
                            np.abs(bf.run(x).class_probs - reference).max())
                except Exception as exc:  # noqa: BLE001 - recorded: a CPU without bf16
                    row["ov_bf16"] = f"not run: {exc}"
            row["ratio_ort_over_ov"] = row["ort_ms"] / row["ov_ms"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def best_int8(rows: list[dict], model: str, batch: int) -> dict:
    mine = [r for r in rows if r["model"] == model and r["batch"] == batch and "int8" in r["graph"]]
    if not mine:
        return {}
    ort = min(mine, key=lambda r: r["ort_ms"])
    ov = min(mine, key=lambda r: r["ov_ms"])
    return {"ort_graph": ort["graph"], "ort_ms": ort["ort_ms"], "ov_graph": ov["graph"],
            "ov_ms": ov["ov_ms"], "ratio": ort["ort_ms"] / ov["ov_ms"]}


def write(rows: list[dict], meta: dict, tag: str) -> None:
    from hamedge.fsutil import write_text

    f = lambda v, n=2: "-" if v is None else f"{v:.{n}f}"  # noqa: E731
    lines = ["# ONNX Runtime vs OpenVINO on the same bundle files (hamedge backends)", "",
             f"- machine: {meta['cpu']} ({meta['cores']} usable cores); flags: "
             f"{', '.join(meta['flags']) or 'none of ' + ', '.join(FLAGS)}",
             f"- date: {meta['date']}; commit: {meta['commit']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
             f"- 1-minute load average before / after: {meta['load_start']:.2f} / "
             f"{meta['load_end']:.2f}. The machine is shared with other jobs: absolute times are "
             "pessimistic and noisy; the two runtimes were measured one right after the other, "
             "so their ratio is the figure to read.",
             "- median ms per call; batch 1 with the LATENCY hint, batch 8 with THROUGHPUT "
             "(hamedge's folder runs); OpenVINO with an explicit precision (f32 for fp32 and INT8 "
             "float layers); 'OV default' = OpenVINO called directly with no hint; "
             "max dp = largest class-probability difference from ONNX Runtime fp32 on the same "
             f"batch ({rows[0]['inputs'] if rows else '-'}; on the random resnet50 they are "
             "speed-only numbers).", "",
             "| model | graph | batch | ONNX Runtime ms | OpenVINO ms | ORT / OV | OV bf16 ms | "
             "OV default ms (precision) | max dp ORT | max dp OV | max dp OV bf16 | max dp OV default |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['graph']} | {r['batch']} | {f(r['ort_ms'])} | {f(r['ov_ms'])} | "
            f"{f(r['ratio_ort_over_ov'])}x | {f(r.get('ov_bf16_ms'))} | "
            f"{f(r['ov_default_ms'])} ({r['ov_default_precision']}) | "
            f"{f(r['ort_max_prob_diff'], 5)} | {f(r['ov_max_prob_diff'], 5)} | "
            f"{f(r.get('ov_bf16_max_prob_diff'), 5)} | {f(r['ov_default_max_prob_diff'], 5)} |")
    lines += ["", "Best INT8 graph of each runtime:", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["model"] == model}):
            b = best_int8(rows, model, batch)
            if b:
                lines.append(f"- {model}, batch {batch}: ONNX Runtime {f(b['ort_ms'])} ms "
                             f"({b['ort_graph']}), OpenVINO {f(b['ov_ms'])} ms ({b['ov_graph']}): "
                             f"OpenVINO {f(b['ratio'])}x faster" if b["ratio"] >= 1 else
                             f"- {model}, batch {batch}: ONNX Runtime {f(b['ort_ms'])} ms "
                             f"({b['ort_graph']}), OpenVINO {f(b['ov_ms'])} ms ({b['ov_graph']}): "
                             f"ONNX Runtime {f(1 / b['ratio'])}x faster")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / f"openvino_vs_ort_{tag}.md", "\n".join(lines) + "\n")
    write_text(RESULTS / f"openvino_vs_ort_{tag}.json",
               json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("default", "resnet50"))
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement (at least 3 calls)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hamedge-reference")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from _common import run_record  # the machine/commit/versions/load record every script writes
    from hamedge.runtime.measure import cpu_flags

    record = run_record()
    meta = {"cpu": lscpu_model(), "cores": record["machine"]["cores"],
            "flags": [f for f in FLAGS if f in cpu_flags()], "date": record["date"],
            "commit": record["commit"], "load_start": record["load_average_1min"],
            "versions": {k: v for k, v in record["versions"].items()
                         if k in ("onnxruntime", "openvino", "numpy")}}
    rows: list[dict] = []
    if args.only in (None, "default"):
        rows += measure_model("default model", default_bundle(), args.seconds)
    if args.only in (None, "resnet50"):
        rows += measure_model("resnet50/8/512 (random)", resnet50_bundle(args.work), args.seconds)
    meta["load_end"] = os.getloadavg()[0]
    tag = f"cpu{meta['cores']}" + (f"_{args.only}" if args.only else "")
    write(rows, meta, tag)


if __name__ == "__main__":
    sys.exit(main())
