"""`hamedge serve` against `hamedge infer` on the same files, on this machine.

    python benchmarks/serve_bench.py [--images 48] [--seconds 8]

Measures, in one run: `hamedge infer`'s local throughput (ONNX Runtime fp32, batch 8, 2 reader
threads, no heatmap files) on N copies of the NIH sample X-rays; the served throughput of the
image model (files read and preprocessed on the server) at 1, 16 and 32 concurrent clients with
dynamic batching, and at 32 clients without it; p50/p99 at 1 and 32 clients; cold start to ready.
The clients run on the same cores as the server (a 2-core machine here), so served numbers pay
for the load generator too. Writes benchmarks/results/serve_cpu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, record_line, run_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

NOTE = '- The machine was shared with other jobs during the run (1-minute load average above, on 2 cores): every figure is pessimistic and noisy; the ratios, measured side by side, are indicative only. On CPUs two instances of one thread each let one instance read PNGs while the other runs the model (`hamedge serve --instances 2`).' 


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    from serve_helpers import free_ports  # noqa: E402

    from hamedge.api import resolve_bundle
    from hamedge.pipeline import InferOptions, model_id, run_inference
    from hamedge.runtime import open_backend
    from hamedge.serve.loadgen import run_load
    from hamedge.serve.repository import Batching
    from hamedge.serve.server import ServeConfig, ServerProcess

    bundle = resolve_bundle(None)
    samples = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-samples"
                      / "images").glob("*.png"))
    if not samples:
        sys.exit("needs ../shared/data/nih-samples/images")
    record = run_record(images=args.images, seconds_per_level=args.seconds,
                        model="packaged demo model (resnet18/16/128)", backend="onnxruntime fp32")
    result: dict = {"record": record}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        files = []
        for i in range(args.images):
            src = samples[i % len(samples)]
            files.append(folder / f"{i:03d}_{src.name}")
            shutil.copyfile(src, files[-1])
        payloads = [f.read_bytes() for f in files]

        with open_backend(bundle, "onnxruntime", "fp32") as backend:
            options = InferOptions(batch=8, workers=2, heatmaps="none")
            run_inference(files[:8], backend, None, options)  # warm-up
            local = []
            for _ in range(2):
                t0 = time.perf_counter()
                summary = run_inference(files, backend, Path(tmp) / f"out{len(local)}", options,
                                        model_id(bundle))
                local.append(summary.ok / (time.perf_counter() - t0))
        result["local_images_per_s"] = max(local)
        print(f"local hamedge infer: {max(local):.1f} images/s", flush=True)

        for key, dynamic, instances, levels in (("dynamic", True, 1, [1, 16, 32]),
                                                ("two_instances", True, 2, [16, 32]),
                                                ("no_batching", False, 1, [32])):
            http, grpc, metrics = free_ports(3)
            config = ServeConfig(str(bundle.root), "onnxruntime", "fp32", http_port=http,
                                 grpc_port=grpc, metrics_port=metrics,
                                 batching=Batching(max_batch=16, dynamic=dynamic,
                                                   instances=instances),
                                 drain_seconds=2, model_key=model_id(bundle))
            t0 = time.perf_counter()
            with ServerProcess(config) as server:
                cold = time.perf_counter() - t0
                rows = run_load(server.config.http_url, levels, payloads, seconds=args.seconds,
                                log=lambda line: print(line, flush=True))
            result[key] = {"cold_start_s": cold, "levels": [r.to_dict() for r in rows]}
            print(f"{key}: cold start {cold:.2f} s", flush=True)

    dyn = {r["concurrency"]: r for r in result["dynamic"]["levels"]}
    two = {r["concurrency"]: r for r in result["two_instances"]["levels"]}
    flat = result["no_batching"]["levels"][0]
    best = max(r["throughput"] for r in (dyn[16], dyn[32], two[16], two[32]))
    result["served_vs_local"] = best / result["local_images_per_s"]
    result["dynamic_vs_none_at_32"] = dyn[32]["throughput"] / flat["throughput"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# hamedge serve vs hamedge infer (CPU)", "", record_line(record), "",
             f"{args.images} copies of the {len(samples)} NIH sample PNGs (1024 px), packaged demo "
             "model, ONNX Runtime fp32, one model instance unless said, max batch 16, queue delay "
             "2 ms; "
             "served requests carry the encoded PNG (read and preprocessed on the server); the "
             "load generator's threads share the machine's cores with the server.", "",
             "| what | images/s | p50 ms | p99 ms | server queue ms | server compute ms | mean batch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| `hamedge infer` local (batch 8, 2 readers) | {result['local_images_per_s']:.1f} | | | | | |"]
    for label, r in ([(f"served, {c} client(s), dynamic batching", dyn[c]) for c in (1, 16, 32)]
                     + [(f"served, {c} clients, dynamic batching, 2 instances x 1 thread", two[c])
                        for c in (16, 32)]
                     + [("served, 32 clients, no dynamic batching", flat)]):
        lines.append(f"| {label} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['server_queue_ms']:.2f} | {r['server_compute_ms']:.2f} | "
                     f"{r['mean_batch']:.2f} |")
    lines += ["", f"- served (best at 16/32 clients) / local: **{result['served_vs_local']:.2f}**"
              " (goal >= 0.85)",
              f"- dynamic batching / none at 32 clients: **{result['dynamic_vs_none_at_32']:.2f}x**",
              f"- cold start to ready (supervisor + tritonserver + 2 Python-backend stubs loading "
              f"the bundle): {result['dynamic']['cold_start_s']:.2f} s",
              NOTE, ""]
    (RESULTS / "serve_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
