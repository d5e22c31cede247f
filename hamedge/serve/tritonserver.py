"""Finding and configuring the ``tritonserver`` binary. No torch.

hamedge drives ``tritonserver`` itself rather than through PyTriton: PyPI's nvidia-pytriton
declares numpy<2 while OpenCV needs numpy>=2, and PyTriton's serve() stops cleanly only on
KeyboardInterrupt. The binary, its Python backend and its stubs come from the nvidia-pytriton
wheel (installed with ``--no-deps``; it is not imported) or from a Triton installation
(``$HAMEDGE_TRITONSERVER``, ``tritonserver`` on PATH, /opt/tritonserver as in NGC containers).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from hamedge.errors import BackendUnavailable

INSTALL_HINT = ("install Triton Inference Server: pip install --no-deps nvidia-pytriton==0.7.0 "
                "(its bundled tritonserver; --no-deps because it pins numpy<2), or set "
                "HAMEDGE_TRITONSERVER to a tritonserver binary")
SHM_PREFIX = "hamedge-"  # Python-backend shared memory: /dev/shm/hamedge-<supervisor pid>-...


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    python_backend: Path  # folder with libtriton_python.so
    stub: Path  # triton_python_backend_stub built for this interpreter's Python version
    lib_dirs: tuple[Path, ...] = field(default=())


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def find_tritonserver() -> TritonInstall:
    """The tritonserver to run, or BackendUnavailable with the way to install one."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates: list[Path] = []
    if os.environ.get("HAMEDGE_TRITONSERVER"):
        candidates.append(Path(os.environ["HAMEDGE_TRITONSERVER"]).parent.parent)
    root = _pytriton_root()
    if root is not None:
        candidates.append(root)
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    candidates.append(Path("/opt/tritonserver"))
    for base in candidates:
        binary = base / "bin" / "tritonserver"
        backend = base / "backends" / "python"
        if not (binary.is_file() and (backend / "libtriton_python.so").is_file()):
            continue
        stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():  # a full Triton ships one stub, built for its own Python
            stub = backend / "triton_python_backend_stub"
        if stub.is_file():
            return TritonInstall(binary, backend, stub)
    raise BackendUnavailable(f"no tritonserver found; {INSTALL_HINT}")


def make_backend_dir(install: TritonInstall, target: Path) -> Path:
    """A backends/ folder whose python/ holds the Python backend and the stub for this
    interpreter (the backend runs the stub found beside libtriton_python.so)."""
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in install.python_backend.iterdir():
        if src.name != "triton_python_backend_stub":
            (python / src.name).symlink_to(src)
    (python / "triton_python_backend_stub").symlink_to(install.stub)
    return target


def server_env() -> dict[str, str]:
    """Environment for tritonserver and its stubs. The stub embeds libpython: point the loader at
    this interpreter's libpython, else it loads the system one and models fail to load."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def python_paths() -> list[str]:
    """sys.path entries the stub's embedded interpreter needs to import this hamedge and its
    packages. The stub ignores PYTHONPATH (it starts isolated), so model.py adds them itself."""
    roots = [str(Path(__file__).resolve().parents[2])]  # the folder holding the hamedge package
    roots += [p for p in sys.path if p and os.path.isdir(p) and not p.endswith(".zip")]
    return list(dict.fromkeys(roots))
