"""``hamedge serve``: tritonserver behind a supervisor that always cleans up. No torch.

    hamedge serve (this process)  --pipe-->  supervisor (own session)  -->  tritonserver  -->  stubs

The supervisor runs in its own session (process group), so a terminal's Ctrl-C or a signal to
``hamedge serve`` reaches it only as the end of the pipe. When the pipe ends (``hamedge serve``
stopping, or dying even by SIGKILL) or on SIGTERM/SIGINT, the supervisor sends tritonserver
SIGTERM (Triton drains in-flight requests for up to ``drain_seconds``), then SIGKILLs whatever
is left in its process group (Python-backend stubs ignore SIGTERM), then removes the
Python-backend shared-memory segments (/dev/shm/hamedge-<its pid>-*) and its work folder.
tritonserver gets PR_SET_PDEATHSIG, so it dies with the supervisor; segments and folders left by
a supervisor killed outright are removed by the next supervisor's sweep (their pid is gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hamedge.client import TOKEN_HEADER
from hamedge.errors import HamedgeError
from hamedge.serve.repository import Batching
from hamedge.serve.tritonserver import SHM_PREFIX

WORKDIR_PREFIX = "hamedge-serve-"
# Every endpoint but health (load balancers probe it) needs the token when one is set.
RESTRICTED_APIS = ("inference,model-repository,model-config,metadata,statistics,shared-memory,"
                   "trace,logging")


@dataclass
class ServeConfig:
    bundle_dir: str
    backend: str = "auto"
    precision: str = "fp32"
    http_address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 8002
    batching: Batching = field(default_factory=Batching)
    threads: int = 0  # backend threads per instance; 0: the cores divided among instances
    decode_workers: int = 2
    drain_seconds: int = 10
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_remote: bool = False
    model_key: str = ""
    verbose: bool = False
    repository: str | None = None  # serve this model repository instead of the bundle's models

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        data["batching"] = Batching(**{k: tuple(v) if k == "preferred" else v
                                       for k, v in data["batching"].items()})
        return cls(**data)

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.http_address)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.grpc_address)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.metrics_address)}:{self.metrics_port}/metrics"


def _url_host(address: str) -> str:
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "[::1]"
    return f"[{address}]" if ":" in address else address


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_access(config: ServeConfig) -> None:
    """Loopback by default. Another address needs --allow-remote, a token, and TLS: gRPC with
    its own TLS; Triton's HTTP has none, so HTTP stays on loopback behind a TLS reverse proxy."""
    remote = [(what, addr) for what, addr in (("HTTP", config.http_address),
                                              ("gRPC", config.grpc_address),
                                              ("metrics", config.metrics_address))
              if not is_loopback(addr)]
    if not remote:
        return
    where = ", ".join(f"{what} on {addr}" for what, addr in remote)
    if not config.allow_remote:
        raise HamedgeError(f"{where} would be reachable from other machines; add --allow-remote "
                           "(with --token-file and TLS) or keep the default 127.0.0.1")
    if any(what == "HTTP" for what, _ in remote):
        raise HamedgeError("Triton's HTTP endpoint has no TLS: keep --http-address on loopback and "
                           "put a TLS reverse proxy in front of it (see the serving docs), or "
                           "serve remote clients over gRPC with --tls-cert/--tls-key")
    if not config.token:
        raise HamedgeError(f"{where} needs a token: --token-file FILE")
    if any(what == "gRPC" for what, _ in remote) and not (config.tls_cert and config.tls_key):
        raise HamedgeError("gRPC on a non-loopback address needs --tls-cert and --tls-key")


def triton_args(config: ServeConfig, binary: Path, repo: Path, backends: Path,
                shm_prefix: str) -> list[str]:
    args = [str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
            "--disable-auto-complete-config",
            f"--http-address={config.http_address}", f"--http-port={config.http_port}",
            f"--grpc-address={config.grpc_address}", f"--grpc-port={config.grpc_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--metrics-address={config.metrics_address}", f"--metrics-port={config.metrics_port}",
            # on SIGTERM Triton waits this long for open connections (idle keep-alive clients
            # included) and in-flight requests, then exits leaving models loaded: the supervisor
            # kills what is left
            f"--exit-timeout-secs={config.drain_seconds}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--log-info={'true' if config.verbose else 'false'}", "--log-verbose=0"]
    if config.token:
        rule = f"{RESTRICTED_APIS}:{TOKEN_HEADER}={config.token}"
        args += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
    if config.tls_cert and config.tls_key:
        args += ["--grpc-use-ssl=true", f"--grpc-server-cert={config.tls_cert}",
                 f"--grpc-server-key={config.tls_key}"]
    return args


# ---------------------------------------------------------------------------------------------
# the supervisor (python -m hamedge.serve.server, config JSON on argv, the pipe on stdin)

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def sweep_stale(shm_dir: Path = Path("/dev/shm"), tmp_dir: Path | None = None) -> int:
    """Remove segments and work folders of supervisors that no longer exist."""
    removed = 0
    for folder, prefix in ((shm_dir, SHM_PREFIX), (Path(tmp_dir or tempfile.gettempdir()),
                                                   WORKDIR_PREFIX)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not entry.name.startswith(prefix):
                continue
            pid = _owner_pid(entry.name, prefix)
            if pid is None or _pid_alive(pid):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
    return removed


def _group_members(pgid: int, exclude: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _set_pdeathsig() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _reap() -> None:
    """Collect exited orphans (the supervisor is their subreaper), so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervise(config: ServeConfig) -> int:
    from hamedge.bundle import Bundle
    from hamedge.runtime import resolve_backend
    from hamedge.runtime.onnxruntime import cpu_count
    from hamedge.serve.repository import write_serving_repo
    from hamedge.serve.tritonserver import (find_tritonserver, make_backend_dir, python_paths,
                                            server_env)

    me = os.getpid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # stubs orphaned by tritonserver come to us to be reaped
    sweep_stale()
    install = find_tritonserver()
    work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{me}-"))
    shm_prefix = f"{SHM_PREFIX}{me}-"
    proc = None
    stopping = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        os.chmod(work, 0o700)
        scratch = work / "scratch"
        scratch.mkdir(mode=0o700)
        if config.repository:
            repo = Path(config.repository)
        else:
            repo = work / "models"
            bundle = Bundle.open(config.bundle_dir)
            backend, _ = resolve_backend(bundle, config.backend, config.precision)
            threads = config.threads or max(1, cpu_count() // config.batching.instances)
            write_serving_repo(repo, bundle, backend, config.precision, config.batching,
                               threads, config.decode_workers, config.model_key, python_paths(),
                               scratch)
        backends = make_backend_dir(install, work / "backends")
        args = triton_args(config, install.binary, repo, backends, shm_prefix)
        proc = subprocess.Popen(args, env=server_env(), stdin=subprocess.DEVNULL,
                                preexec_fn=_set_pdeathsig)
        while not stopping["flag"]:
            if proc.poll() is not None:
                return proc.returncode or 3
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if ready and not os.read(sys.stdin.fileno(), 4096):
                break  # the pipe ended: hamedge serve stopped or died
        return 0
    finally:
        _shutdown(proc, config.drain_seconds, me)
        for entry in Path("/dev/shm").glob(f"{shm_prefix}*"):
            with contextlib.suppress(OSError):
                entry.unlink()
        shutil.rmtree(work, ignore_errors=True)


def _shutdown(proc, drain_seconds: int, me: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up whatever arrives now
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(drain_seconds + 10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pgid = os.getpgid(me)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # stubs (they ignore SIGTERM) and anything else left
        _reap()
        members = _group_members(pgid, me)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# the side of hamedge serve

class ServerProcess:
    """Starts the supervisor; ``stop()`` drains and cleans up; a context manager."""

    def __init__(self, config: ServeConfig) -> None:
        check_access(config)
        self.config = config
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 120.0) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "hamedge.serve.server",
                                      self.config.to_json()],
                                     stdin=subprocess.PIPE, start_new_session=True)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        headers = {TOKEN_HEADER: self.config.token} if self.config.token else {}
        url = f"{self.config.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HamedgeError(f"tritonserver stopped while starting (exit {self.proc.returncode});"
                                   " its log is above")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                            timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise HamedgeError(f"tritonserver was not ready after {timeout:.0f} s")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float | None = None) -> int:
        if self.proc is None:
            return 0
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout or self.config.drain_seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    try:
        return supervise(ServeConfig.from_json(argv[1]))
    except HamedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
