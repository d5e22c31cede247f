"""The load generator of ``hamedge bench --server``, after perf_analyzer: for each concurrency
level, that many client threads send requests back to back for a fixed time; client-side latency
percentiles and throughput, and the server's own queue and compute times and batch sizes from
Triton's statistics endpoint (differences over the level). No torch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from hamedge.client import IMAGE_MODEL, TENSOR_MODEL, Client, ServerError

COLUMNS = ["clients", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms",
           "server queue ms", "server compute ms", "mean batch"]


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    server_queue_ms: float | None
    server_compute_ms: float | None
    mean_batch: float | None
    first_error: str = ""

    def row(self) -> list[str]:
        def f(v, d=1):
            return "-" if v is None else f"{v:.{d}f}"

        return [str(self.concurrency), str(self.requests), str(self.errors), f(self.throughput),
                f(self.p50_ms, 2), f(self.p90_ms, 2), f(self.p99_ms, 2), f(self.server_queue_ms, 2),
                f(self.server_compute_ms, 2), f(self.mean_batch, 2)]

    def to_dict(self) -> dict:
        return asdict(self)


def _server_counters(client: Client, model: str) -> dict[str, int]:
    stats = client.statistics(model)["model_stats"][0]
    inference = stats.get("inference_stats", {})

    def ns(key: str) -> int:
        return int(inference.get(key, {}).get("ns", 0) or 0)

    return {"inferences": int(stats.get("inference_count", 0) or 0),
            "executions": int(stats.get("execution_count", 0) or 0),
            "success": int(inference.get("success", {}).get("count", 0) or 0),
            "queue_ns": ns("queue"),
            "compute_ns": ns("compute_input") + ns("compute_infer") + ns("compute_output")}


def run_level(client: Client, model: str, payloads: list, concurrency: int,
              seconds: float, warmup_seconds: float = 0.5) -> LevelResult:
    send = (client.infer_file if model != TENSOR_MODEL else client.infer_tensors)
    latencies: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error = [""]
    start_gate = threading.Barrier(concurrency + 1)
    state = {"measuring": False, "stop": False}

    def worker(index: int) -> None:
        start_gate.wait()
        i = index
        while not state["stop"]:
            payload = payloads[i % len(payloads)]
            i += 1
            t0 = time.perf_counter_ns()
            try:
                if model == TENSOR_MODEL:
                    send(payload)
                else:
                    send(payload, model=model)
                ok = True
            except ServerError as exc:
                ok = False
                if not first_error[0]:
                    first_error[0] = str(exc)
            if state["measuring"]:
                if ok:
                    latencies[index].append(time.perf_counter_ns() - t0)
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    time.sleep(warmup_seconds)
    before = _server_counters(client, model)
    state["measuring"] = True
    t0 = time.perf_counter()
    time.sleep(seconds)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    after = _server_counters(client, model)
    state["stop"] = True
    for t in threads:
        t.join(client.timeout + 5)
    samples = np.array([v for part in latencies for v in part], np.int64) / 1e6
    done = int(samples.size)
    served = after["success"] - before["success"]
    executions = after["executions"] - before["executions"]
    inferences = after["inferences"] - before["inferences"]

    def pct(q):
        return float(np.percentile(samples, q)) if done else None

    return LevelResult(
        concurrency, done, sum(errors), elapsed, done / elapsed if elapsed > 0 else 0.0,
        pct(50), pct(90), pct(99), float(samples.mean()) if done else None,
        (after["queue_ns"] - before["queue_ns"]) / served / 1e6 if served else None,
        (after["compute_ns"] - before["compute_ns"]) / served / 1e6 if served else None,
        inferences / executions if executions else None, first_error[0])


def run_load(url: str, levels: list[int], payloads: list, model: str = IMAGE_MODEL,
             seconds: float = 10.0, timeout: float = 30.0, token: str | None = None,
             log=None) -> list[LevelResult]:
    results = []
    with Client(url, timeout=timeout, token=token) as client:
        if not client.ready():
            raise ServerError(f"{url}: the server is not ready")
        for level in levels:
            result = run_level(client, model, payloads, level, seconds)
            if log is not None:
                log(" | ".join(f"{c} {v}" for c, v in zip(COLUMNS, result.row())))
            results.append(result)
    return results


def markdown(results: list[LevelResult], header: list[str]) -> str:
    lines = ["# hamedge bench --server", ""] + [f"- {h}" for h in header] + [""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("| " + " | ".join("---" for _ in COLUMNS) + " |")
    lines += ["| " + " | ".join(r.row()) + " |" for r in results]
    errors = [r.first_error for r in results if r.first_error]
    if errors:
        lines += ["", f"first error: {errors[0]}"]
    return "\n".join(lines) + "\n"
