"""`hamedge serve`: the model behind Triton Inference Server (HTTP, gRPC, metrics, dynamic
batching); see hamedge.serve.server for the process layout and how it always cleans up."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app
from hamedge.errors import HamedgeError


def _int_list(text: Optional[str], what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise HamedgeError(f"{what} must be a comma-separated list of integers, got {text!r}") \
            from None


def default_max_batch(bundle, backend: str, precision: str) -> int:
    """The engine profile's max batch for TensorRT, else 16 (batches beyond that gain little on
    CPUs and only add queueing)."""
    if backend == "tensorrt":
        from hamedge.runtime import tensorrt as trt_backend

        version = trt_backend.tensorrt_version()
        gpu = trt_backend.gpu_info() if version else None
        record, _ = trt_backend.select_engine(bundle.engines, gpu, version, precision)
        if record is not None:
            return int(record.max_batch)
    return 16


@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="Bundle folder or .safetensors checkpoint; default: "
                                              "the packaged demo model."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | tensorrt | torch"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8"),
    http_address: str = typer.Option("127.0.0.1", help="HTTP address (loopback by default)."),
    http_port: int = typer.Option(8000),
    grpc_address: str = typer.Option("127.0.0.1", help="gRPC address (loopback by default)."),
    grpc_port: int = typer.Option(8001),
    metrics_address: str = typer.Option("127.0.0.1", help="Prometheus metrics address."),
    metrics_port: int = typer.Option(8002),
    max_batch: Optional[int] = typer.Option(None, help="Largest batch the dynamic batcher forms "
                                                       "(default: the engine profile's, else 16)."),
    queue_delay_us: int = typer.Option(2000, help="How long a request may wait for others to "
                                                  "batch with (microseconds)."),
    preferred_batch_sizes: Optional[str] = typer.Option(None, help="e.g. 4,8,16 (default: powers "
                                                                   "of two up to --max-batch)."),
    dynamic_batching: bool = typer.Option(True, "--dynamic-batching/--no-dynamic-batching"),
    instances: int = typer.Option(1, help="Model instances (each its own process and session)."),
    threads: int = typer.Option(0, help="Backend threads per instance (0: cores / instances)."),
    decode_workers: int = typer.Option(2, help="Threads per instance reading encoded images."),
    drain_seconds: int = typer.Option(10, help="On SIGTERM, how long in-flight requests and open "
                                               "connections may take before a forced stop."),
    allow_remote: bool = typer.Option(False, "--allow-remote",
                                      help="Permit non-loopback addresses (then a token and TLS "
                                           "are required)."),
    token_file: Optional[Path] = typer.Option(None, help="File (mode 600) with the shared secret "
                                                         "clients send as the hamedge-token "
                                                         "header; required off loopback."),
    tls_cert: Optional[Path] = typer.Option(None, help="gRPC TLS certificate (PEM)."),
    tls_key: Optional[Path] = typer.Option(None, help="gRPC TLS private key (PEM)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Triton's info log too."),
) -> None:
    """Serve a model on Triton Inference Server until SIGTERM or Ctrl-C.

    Models: 'hamedge' takes preprocessed tensors (what `hamedge infer --server` sends); 'hamedge_image' takes encoded PNG/JPEG/DICOM bytes and answers with probabilities, findings, boxes and, when asked, heatmaps. Health: /v2/health/ready; metrics: /metrics on the metrics port.
    """
    from hamedge.api import resolve_bundle
    from hamedge.client import read_token_file
    from hamedge.pipeline import model_id
    from hamedge.runtime import resolve_backend
    from hamedge.serve.repository import Batching
    from hamedge.serve.server import ServeConfig, ServerProcess
    from hamedge.serve.tritonserver import find_tritonserver

    find_tritonserver()  # fail fast, with the way to install it
    bundle = resolve_bundle(model)
    resolved, _ = resolve_backend(bundle, backend, precision)
    batching = Batching(max_batch=max_batch or default_max_batch(bundle, resolved, precision),
                        queue_delay_us=queue_delay_us,
                        preferred=_int_list(preferred_batch_sizes, "--preferred-batch-sizes"),
                        instances=instances, dynamic=dynamic_batching)
    batching.validate()
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise HamedgeError(f"{path}: no such file")
    config = ServeConfig(str(bundle.root), resolved, precision, http_address, http_port,
                         grpc_address, grpc_port, metrics_address, metrics_port, batching,
                         threads, decode_workers, drain_seconds, read_token_file(token_file),
                         str(tls_cert) if tls_cert else None, str(tls_key) if tls_key else None,
                         allow_remote, model_id(bundle), verbose)
    server = ServerProcess(config)
    stop = {"signal": None}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.perf_counter()
    server.start()
    print(f"serving {bundle.root.name} ({resolved} {precision}, max batch {batching.max_batch}) "
          f"in {time.perf_counter() - started:.1f} s: HTTP {config.http_url}, gRPC "
          f"{config.grpc_url}, metrics {config.metrics_url}", file=sys.stderr, flush=True)
    try:
        while stop["signal"] is None and server.running():
            time.sleep(0.2)
    finally:
        unexpected = stop["signal"] is None and not server.running()
        print("stopping: draining in-flight requests", file=sys.stderr, flush=True)
        code = server.stop()
    if unexpected:
        raise HamedgeError(f"tritonserver stopped unexpectedly (exit {code}); its log is above")
    print("stopped", file=sys.stderr, flush=True)
