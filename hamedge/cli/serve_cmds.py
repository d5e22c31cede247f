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
    instances: int = typer.Option(1, help="Model instances (each its own process and session); on "
                                          "CPUs 2 lets one read files while the other runs."),
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


@app.command()
def listen(
    allow_ae: str = typer.Option(..., "--allow-ae",
                                 help="Calling AE titles allowed to send, comma-separated."),
    out: Path = typer.Option(Path("hamedge-listen"), "--out", "-o",
                             help="Results folder (owner-only), as `hamedge infer` writes it; "
                                  "received instances are kept in its received/."),
    ae_title: str = typer.Option("HAMEDGE", help="This receiver's AE title."),
    address: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(11112),
    allow_remote: bool = typer.Option(False, "--allow-remote",
                                      help="Permit a non-loopback --address (DICOM here has no "
                                           "TLS: use it on a trusted network or a VPN)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Bundle or checkpoint."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | tensorrt | torch"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8"),
    server: Optional[str] = typer.Option(None, "--server", help="Run on `hamedge serve` at URL."),
    token_file: Optional[Path] = typer.Option(None, help="Token file for --server."),
    batch: int = typer.Option(8, "--batch", "-b"),
    heatmaps: str = typer.Option("overlay", help="overlay | png | npy | none"),
) -> None:
    """Receive DICOM instances (C-STORE) and run each through the infer pipeline until SIGTERM or Ctrl-C."""
    import logging

    from hamedge.pipeline import InferOptions, model_id
    from hamedge.serve.listener import Listener
    from hamedge.serve.server import is_loopback

    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        raise HamedgeError("hamedge listen needs pynetdicom: pip install 'hamedge[serve]'") from None
    if not is_loopback(address) and not allow_remote:
        raise HamedgeError(f"--address {address} is reachable from other machines; add "
                           "--allow-remote (DICOM here has no TLS) or keep 127.0.0.1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    options = InferOptions(batch=batch, heatmaps=heatmaps)
    options.validate()
    if server is not None:
        from hamedge.client import RemoteBackend, read_token_file

        runner = RemoteBackend(server, token=read_token_file(token_file))
        key = runner.model_id
    else:
        from hamedge.api import resolve_bundle
        from hamedge.runtime import open_backend

        bundle = resolve_bundle(model)
        runner = open_backend(bundle, backend, precision)
        key = model_id(bundle)
    titles = tuple(t.strip() for t in allow_ae.split(",") if t.strip())
    stop = {"signal": None}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    with runner, Listener(runner, out, ae_title, address, port, titles, options, key) as listener:
        while stop["signal"] is None:
            time.sleep(0.2)
        counts = listener.counts
    print(f"stopped: {counts['received']} received, {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['rejected']} association(s) rejected", file=sys.stderr)
