"""Helpers for the serving tests: skip reasons, free ports, and finding what a server left."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def require_triton():
    """Skip (with the reason) unless tritonclient and a tritonserver binary are installed; the
    tests install nothing themselves."""
    pytest.importorskip("tritonclient.http", reason="tritonclient not installed "
                        "(pip install 'hamedge[serve]')")
    from hamedge.errors import BackendUnavailable
    from hamedge.serve.tritonserver import find_tritonserver

    try:
        return find_tritonserver()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes():
    """(pid, fields of /proc/PID/stat after the command name) of every live process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, fields in _processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def children(pid: int) -> list[int]:
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def leftovers(supervisor_pid: int) -> list[str]:
    """Processes, shared-memory segments and work folders a supervisor left behind."""
    import tempfile

    left = [f"process {pid}" for pid in group_members(supervisor_pid)]
    left += [str(p) for p in Path("/dev/shm").glob(f"hamedge-{supervisor_pid}-*")]
    left += [str(p) for p in Path(tempfile.gettempdir()).glob(f"hamedge-serve-{supervisor_pid}-*")]
    return left
