"""Client of ``hamedge serve`` (tritonclient over HTTP or gRPC), and ``RemoteBackend``: a backend
whose ``run`` is a request to the server, so ``hamedge infer --server URL`` runs the unchanged
folder pipeline (reading, preprocessing, heatmaps, results store) with the model on the server.

    from hamedge.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.infer_file("chest.dcm", heatmaps=True)   # read on the server
        raw = client.infer_tensors(batch)                         # RawOutputs, like a backend

Every call has a timeout: a server that dies or hangs gives a ServerError, never a hang.
No torch.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from hamedge.errors import HamedgeError
from hamedge.runtime.base import OUTPUT_NAMES, Backend, RawOutputs
from hamedge.spec import ModelSpec

TENSOR_MODEL = "hamedge"
IMAGE_MODEL = "hamedge_image"
IMAGE_INPUT = "image_bytes"
TOKEN_HEADER = "hamedge-token"
# Triton's restricted gRPC protocols read the key from metadata named with this prefix.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


class ServerError(HamedgeError):
    """The server refused a request, failed it, or could not be reached in time."""


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    input_name: str
    input_shape: tuple[int, int, int]
    max_batch: int
    backend: str
    precision: str
    model_id: str
    heatmaps_refined: bool


def _tritonclient(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise HamedgeError("the hamedge client needs tritonclient: pip install 'hamedge[serve]'") \
            from None
    return module


def parse_url(url: str) -> tuple[str, str]:
    """'http://h:p', 'grpc://h:p', 'grpcs://h:p' or 'h:p' (HTTP) -> (protocol, 'h:p')."""
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "grpc", "grpcs") or not parsed.hostname:
        raise HamedgeError(f"server URL {url!r}: use http://HOST:PORT or grpc://HOST:PORT")
    default = 8000 if parsed.scheme == "http" else 8001
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return parsed.scheme, f"{host}:{parsed.port or default}"


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


class Client:
    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.url = url
        self.scheme, self.address = parse_url(url)
        self.protocol = "grpc" if self.scheme.startswith("grpc") else "http"
        self.timeout = float(timeout)
        header = (GRPC_HEADER_PREFIX + TOKEN_HEADER) if self.protocol == "grpc" else TOKEN_HEADER
        self.headers = {header: token} if token else {}
        self.module = _tritonclient(self.protocol)
        self._local = threading.local()  # one connection per thread (HTTP clients are not shared)
        self._tls_ca = tls_ca
        self._clients: list = []
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                kwargs = {}
                if self.scheme == "grpcs":
                    kwargs = {"ssl": True, "root_certificates": self._tls_ca}
                client = self.module.InferenceServerClient(self.address, **kwargs)
            else:
                client = self.module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout, network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)
        if self.headers:
            kwargs.setdefault("headers", self.headers)
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise ServerError(f"{self.url}: {what}: {_one_line(exc)}") from None
        except Exception as exc:  # connection refused, reset, timed out (gevent/socket/grpc)
            raise ServerError(f"{self.url}: {what}: {type(exc).__name__}: {_one_line(exc)}") \
                from None

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        self._local = threading.local()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- health and metadata ----------------------------------------------------------------
    def ready(self) -> bool:
        try:
            return bool(self._call("readiness", self._client().is_server_ready))
        except ServerError:
            return False

    def model_config(self, model: str = TENSOR_MODEL) -> dict:
        config = self._call("model config", self._client().get_model_config, model,
                            **({"as_json": True} if self.protocol == "grpc" else {}))
        return config.get("config", config)

    def served_model(self, model: str = TENSOR_MODEL) -> ServedModel:
        config = self.model_config(model)
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if "spec_json" not in params:
            raise ServerError(f"{self.url}: model {model!r} is not a hamedge model")
        dims = tuple(int(d) for d in config["input"][0]["dims"])
        return ServedModel(ModelSpec.from_json(params["spec_json"]), config["input"][0]["name"],
                           dims, int(config.get("max_batch_size", 0) or 1),
                           params.get("backend", ""), params.get("precision", "fp32"),
                           params.get("model_id", ""), params.get("heatmaps") == "refined")

    def statistics(self, model: str = "") -> dict:
        stats = self._call("statistics", self._client().get_inference_statistics, model,
                           **({"as_json": True} if self.protocol == "grpc" else {}))
        return stats

    # -- inference --------------------------------------------------------------------------
    def _outputs(self, names):
        return [self.module.InferRequestedOutput(n, **({"binary_data": True}
                                                       if self.protocol == "http" else {}))
                for n in names]

    def infer_tensors(self, batch: np.ndarray, model: str = TENSOR_MODEL,
                      input_name: str = "image") -> RawOutputs:
        batch = np.ascontiguousarray(batch, np.float32)
        tensor = self.module.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = self._call("inference", self._client().infer, model, [tensor],
                            outputs=self._outputs(OUTPUT_NAMES))
        return RawOutputs(*(np.asarray(result.as_numpy(n), np.float32) for n in OUTPUT_NAMES))

    def infer_file(self, source, heatmaps: bool = False, model: str = IMAGE_MODEL) -> dict:
        """One encoded file (a path or its bytes), read and preprocessed on the server. Returns the
        result dict (probabilities, anomaly, anomalous, findings, boxes, height, width); with
        ``heatmaps`` also 'heatmaps': uint8 (1+K, S, S) refined maps, channel 0 the anomaly."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                source = handle.read()
        data = np.frombuffer(bytes(source), np.uint8).reshape(1, -1)
        tensor = self.module.InferInput(IMAGE_INPUT, list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        names = ["result", "heatmaps"] if heatmaps else ["result"]
        result = self._call("inference", self._client().infer, model, [tensor],
                            outputs=self._outputs(names))
        record = json.loads(result.as_numpy("result")[0].tobytes().decode())
        if heatmaps:
            record["heatmaps"] = result.as_numpy("heatmaps")[0]
        return record


class RemoteBackend(Backend):
    """A Backend whose ``run`` sends the preprocessed batch to ``hamedge serve``: the server runs
    the same bundle on the same backend, so outputs equal a local run's."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.client = Client(url, timeout, token, tls_ca)
        try:
            served = self.client.served_model()
        except BaseException:
            self.client.close()
            raise
        self.name = served.backend or "remote"
        self.model_id = served.model_id
        self.input_name = served.input_name
        super().__init__(served.spec, served.input_shape[0], served.precision,
                         f"server {url}", heatmaps_refined=served.heatmaps_refined,
                         max_batch=served.max_batch)
        if served.input_shape[1:] != (served.spec.input_size, served.spec.input_size):
            raise ServerError(f"{url}: served input {served.input_shape} does not match its spec")

    @property
    def description(self) -> str:
        return f"{self.name} {self.precision} on {self.client.url}"

    def _run(self, batch: np.ndarray) -> RawOutputs:
        raw = self.client.infer_tensors(batch, input_name=self.input_name)
        raw.heatmaps_refined = self.heatmaps_refined
        return raw

    def _close(self) -> None:
        self.client.close()


def read_token_file(path: str | os.PathLike | None) -> str | None:
    """A shared secret from a file only its owner can read (like ssh keys): one line."""
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise HamedgeError(f"{path}: cannot read the token file ({exc.strerror})") from None
    if mode & 0o077:
        raise HamedgeError(f"{path}: the token file is readable by others; chmod 600 it")
    if not token or any(c.isspace() or c in ",:=" for c in token) or len(token) < 16:
        raise HamedgeError(f"{path}: the token must be one word of at least 16 characters "
                           "without spaces, ',', ':' or '=' (e.g. python -c 'import secrets; "
                           "print(secrets.token_urlsafe(32))')")
    return token
