"""hamedge serve on the real tritonserver (127.0.0.1, free ports): tensors and encoded files give
what a local run gives, bad requests get reasons while the server keeps serving, dynamic batching
merges concurrent requests, `hamedge infer --server` writes the files a local run writes, and the
server never hangs a client."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from infer_helpers import write_dicom
from serve_helpers import free_ports, leftovers, require_triton

from hamedge.cli import run_app


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def server(bundle_dir):
    require_triton()
    from hamedge.bundle import Bundle
    from hamedge.pipeline import model_id
    from hamedge.serve.repository import Batching
    from hamedge.serve.server import ServeConfig, ServerProcess

    http, grpc, metrics = free_ports(3)
    config = ServeConfig(str(bundle_dir), "onnxruntime", "fp32", http_port=http, grpc_port=grpc,
                         metrics_port=metrics, batching=Batching(max_batch=8, queue_delay_us=5000),
                         threads=1, drain_seconds=2, model_key=model_id(Bundle.open(bundle_dir)))
    process = ServerProcess(config).start()
    yield process
    supervisor = process.proc.pid
    process.stop()
    assert leftovers(supervisor) == []


@pytest.fixture(scope="module")
def local(bundle_dir):
    from hamedge.runtime import open_backend

    with open_backend(bundle_dir, "onnxruntime", "fp32", threads=1) as backend:
        yield backend


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_tensor_model_gives_exactly_the_local_outputs(server, local, scheme):
    from hamedge.client import RemoteBackend

    url = server.config.http_url if scheme == "http" else f"grpc://{server.config.grpc_url}"
    batch = np.random.default_rng(0).standard_normal((11, *local.input_shape)).astype(np.float32)
    with RemoteBackend(url, timeout=30) as remote:
        assert remote.spec == local.spec and remote.input_shape == local.input_shape
        assert remote.max_batch == 8  # 11 images go as 8 + 3
        got, want = remote.run(batch), local.run(batch)
    for name in ("class_probs", "anomaly_prob", "attention_maps"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_image_model_reads_files_like_infer(server, bundle_dir, nih_images, tmp_path):
    import hamedge
    from hamedge.client import Client

    dicom = tmp_path / "study.dcm"
    write_dicom(dicom, (np.arange(200 * 160).reshape(200, 160) % 4096).astype(np.uint16))
    model = hamedge.load(bundle_dir, backend="onnxruntime")  # the server runs ONNX Runtime
    with Client(server.config.http_url, timeout=30) as client:
        for path in (nih_images[0], dicom):
            got = client.infer_file(path, heatmaps=True)
            want = model.predict(str(path))
            expected = want.to_dict()
            expected.pop("path")
            heat = got.pop("heatmaps")
            assert got == expected
            assert heat.shape == (1 + want.spec.num_classes, 64, 64) and heat.dtype == np.uint8
            np.testing.assert_allclose(heat[0] / 255, want.heatmap("anomaly"), atol=0.5 / 255 + 1e-6)


def test_bad_requests_get_reasons_and_the_server_keeps_serving(server, nih_images, local):
    from hamedge.client import Client, ServerError

    with Client(server.config.http_url, timeout=30) as client:
        with pytest.raises(ServerError, match="not an image"):
            client.infer_file(b"this is not an image" * 20)
        with pytest.raises(ServerError, match="DICOM"):
            client.infer_file(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
        with pytest.raises(ServerError, match="unexpected shape|shape"):
            client.infer_tensors(np.zeros((1, 1, 32, 32), np.float32))
        import pydicom

        ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
        with pytest.raises(ServerError, match="refused by the input gate"):
            client.infer_file(ct)  # a CT slice is not a chest radiograph
        import cv2

        png = cv2.imencode(".png", np.zeros((32, 32), np.uint8))[1].tobytes()
        with pytest.raises(ServerError, match="blank image"):
            client.infer_file(png)  # a blank frame holds no radiograph
        assert client.infer_file(nih_images[1])["height"] > 0
        assert client.ready()


def test_dynamic_batching_merges_concurrent_requests(server, local):
    from hamedge.client import Client, TENSOR_MODEL

    image = np.zeros((1, *local.input_shape), np.float32)
    with Client(f"grpc://{server.config.grpc_url}", timeout=30) as client:
        before = _counts(client.statistics(TENSOR_MODEL))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: client.infer_tensors(image), range(96)))
        after = _counts(client.statistics(TENSOR_MODEL))
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 96
    assert executions < inferences  # requests were merged into batches


def _counts(stats: dict) -> tuple[int, int]:
    model = stats["model_stats"][0]
    # gRPC's JSON leaves out zero counts
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def test_health_and_metrics_without_patient_data(server, tmp_path):
    from hamedge.client import Client

    dicom = tmp_path / "named.dcm"
    write_dicom(dicom, np.tile(np.arange(64, dtype=np.uint16) * 50, (64, 1)))  # PatientName Test^Patient
    with Client(server.config.http_url, timeout=30) as client:
        client.infer_file(dicom)
    with urllib.request.urlopen(server.config.http_url + "/v2/health/ready", timeout=5) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(server.config.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    assert 'nv_inference_request_success{model="hamedge_image"' in text
    assert "Test^Patient" not in text and "named.dcm" not in text


def test_infer_server_writes_what_a_local_run_writes(server, bundle_dir, nih_images, tmp_path,
                                                     capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in nih_images[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    local_out, served_out = tmp_path / "local", tmp_path / "served"
    common = ["--batch", "2", "--heatmaps", "png", "--quiet"]
    assert run_app(["infer", str(folder), "--model", str(bundle_dir), "--backend", "onnxruntime",
                    "--out", str(local_out), *common]) == 1
    assert run_app(["infer", str(folder), "--server", server.config.http_url,
                    "--out", str(served_out), *common]) == 1
    for name in ("results.csv", "results.jsonl"):
        assert (served_out / name).read_text() == (local_out / name).read_text()
    maps = sorted(p.relative_to(local_out) for p in (local_out / "heatmaps").rglob("*.png"))
    assert maps and maps == sorted(p.relative_to(served_out)
                                   for p in (served_out / "heatmaps").rglob("*.png"))
    for rel in maps:
        assert (served_out / rel).read_bytes() == (local_out / rel).read_bytes()
    # resumable across local and served runs: nothing is redone
    assert run_app(["infer", str(folder), "--model", str(bundle_dir), "--backend", "onnxruntime",
                    "--out", str(served_out), "--json", *common]) == 1
    assert capsys.readouterr().out == ""


def test_a_dead_or_silent_server_is_a_clean_fatal_error(tmp_path, nih_images, capsys):
    require_triton()
    (port,) = free_ports(1)
    started = time.monotonic()
    assert run_app(["infer", str(nih_images[0]), "--server", f"http://127.0.0.1:{port}",
                    "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for url in (f"http://127.0.0.1:{silent.getsockname()[1]}",
                    f"grpc://127.0.0.1:{silent.getsockname()[1]}"):
            assert run_app(["infer", str(nih_images[0]), "--server", url, "--server-timeout", "2",
                            "--out", str(tmp_path / "b"), "--quiet"]) == 2
            assert "error:" in capsys.readouterr().err
    finally:
        silent.close()
    assert time.monotonic() - started < 30


def test_bench_server_measures_levels(server, nih_images, tmp_path, capsys):
    out = tmp_path / "bench"
    assert run_app(["bench", "--server", server.config.http_url, "--concurrency", "1,4",
                    "--seconds", "1", "--samples", str(nih_images[0].parent), "--out",
                    str(out)]) == 0
    levels = json.loads((out / "server.json").read_text())["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0
        assert level["p50_ms"] <= level["p99_ms"] and level["server_compute_ms"] > 0
    assert "| clients |" in (out / "server.md").read_text()
