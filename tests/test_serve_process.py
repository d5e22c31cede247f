"""`hamedge serve` as a user starts it: under load, SIGTERM and SIGINT stop it cleanly (exit 0) and
SIGKILL of it still brings the server down; afterwards no tritonserver or stub process, no
shared-memory segment and no work folder is left. Also: a token-protected server refuses callers
without the token, and non-loopback addresses need explicit flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from serve_helpers import children, free_ports, leftovers, require_triton

from hamedge.errors import HamedgeError


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle):
    return tiny_bundle


def _start(bundle_dir, *extra):
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from hamedge.cli import main; main()", "serve", "--model",
         str(bundle_dir), "--backend", "onnxruntime", "--http-port", str(http), "--grpc-port",
         str(grpc), "--metrics-port", str(metrics), "--threads", "1", "--drain-seconds", "2",
         *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("hamedge serve was not ready in 90 s")
    (supervisor,) = children(proc.pid)
    return proc, url, supervisor


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_under_load_leaves_nothing_behind(bundle_dir, nih_images, sig):
    require_triton()
    from hamedge.client import Client, ServerError

    proc, url, supervisor = _start(bundle_dir)
    data = nih_images[0].read_bytes()
    done = {"ok": 0, "errors": 0}
    stop = threading.Event()

    def load():
        with Client(url, timeout=10) as client:
            while not stop.is_set():
                try:
                    client.infer_file(data)
                    done["ok"] += 1
                except ServerError:
                    done["errors"] += 1
                    time.sleep(0.05)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 30
        while done["ok"] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done["ok"] >= 8
        os.kill(proc.pid, sig)
        code = proc.wait(60)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        if proc.poll() is None:
            proc.kill()
    assert not any(w.is_alive() for w in workers)  # clients never hang on a stopping server
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, proc.stderr.read()
    deadline = time.monotonic() + 30  # after SIGKILL the supervisor cleans up on its own
    while leftovers(supervisor) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(supervisor) == []


@pytest.mark.slow
def test_a_token_server_refuses_callers_without_it(bundle_dir, tmp_path, local_image):
    require_triton()
    from hamedge.client import Client, ServerError

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-32-characters-xy\n")
    token_file.chmod(0o600)
    proc, url, supervisor = _start(bundle_dir, "--token-file", str(token_file))
    try:
        with Client(url, timeout=10) as anonymous:
            with pytest.raises(ServerError, match="403|[Uu]nauthori|denied|restricted"):
                anonymous.infer_tensors(local_image)
            with pytest.raises(ServerError):
                anonymous.model_config()
            assert anonymous.ready()  # health stays open for load balancers
        with Client(url, timeout=10, token="wrong-token-of-32-characters-xyz") as wrong:
            with pytest.raises(ServerError):
                wrong.infer_tensors(local_image)
        with Client(url, timeout=10, token="s3cret-token-of-32-characters-xy") as allowed:
            assert allowed.infer_tensors(local_image).class_probs.shape[0] == 1
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert leftovers(supervisor) == []


@pytest.fixture
def local_image():
    return np.zeros((1, 1, 64, 64), np.float32)


def test_access_rules(tmp_path):
    from hamedge.client import read_token_file
    from hamedge.serve.server import ServeConfig, check_access

    check_access(ServeConfig("b"))  # loopback: nothing needed
    with pytest.raises(HamedgeError, match="--allow-remote"):
        check_access(ServeConfig("b", grpc_address="0.0.0.0"))
    with pytest.raises(HamedgeError, match="HTTP endpoint has no TLS"):
        check_access(ServeConfig("b", http_address="10.0.0.5", allow_remote=True, token="x" * 20))
    with pytest.raises(HamedgeError, match="token"):
        check_access(ServeConfig("b", grpc_address="0.0.0.0", allow_remote=True))
    with pytest.raises(HamedgeError, match="--tls-cert"):
        check_access(ServeConfig("b", grpc_address="0.0.0.0", allow_remote=True, token="x" * 20))
    check_access(ServeConfig("b", grpc_address="0.0.0.0", allow_remote=True, token="x" * 20,
                             tls_cert="c.pem", tls_key="k.pem"))
    token = tmp_path / "token"
    token.write_text("a" * 32)
    token.chmod(0o644)
    with pytest.raises(HamedgeError, match="readable by others"):
        read_token_file(token)
    token.chmod(0o600)
    assert read_token_file(token) == "a" * 32
    token.write_text("short")
    with pytest.raises(HamedgeError, match="at least 16"):
        read_token_file(token)


def test_serve_refuses_a_remote_address_without_flags(bundle_dir, capsys):
    require_triton()
    from hamedge.cli import run_app

    assert run_app(["serve", "--model", str(bundle_dir), "--grpc-address", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.slow
def test_grpc_tls_with_token(bundle_dir, tmp_path, local_image):
    require_triton()
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not found (needed to make a test certificate)")
    from hamedge.client import Client, ServerError
    from hamedge.serve.server import ServeConfig, ServerProcess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    http, grpc, metrics = free_ports(3)
    token = "tls-token-of-at-least-32-chars-x"
    config = ServeConfig(str(bundle_dir), "onnxruntime", http_port=http, grpc_port=grpc,
                         metrics_port=metrics, threads=1, drain_seconds=1, token=token,
                         tls_cert=str(cert), tls_key=str(key))
    with ServerProcess(config) as server:
        supervisor = server.proc.pid
        secure = f"grpcs://127.0.0.1:{grpc}"
        with Client(secure, timeout=10, token=token, tls_ca=str(cert)) as client:
            assert client.infer_tensors(local_image).class_probs.shape[0] == 1
        with Client(secure, timeout=10, tls_ca=str(cert)) as anonymous:
            with pytest.raises(ServerError):
                anonymous.infer_tensors(local_image)
        with Client(f"grpc://127.0.0.1:{grpc}", timeout=5, token=token) as plaintext:
            with pytest.raises(ServerError):
                plaintext.infer_tensors(local_image)
    assert leftovers(supervisor) == []
