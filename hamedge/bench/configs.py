"""Which (backend, precision) configurations the bench runs: every registered backend's declared
precisions (hamedge.runtime.registry), narrowed by --backends / --precisions, opened if they can
run here."""

from __future__ import annotations

from hamedge.bundle import PRECISIONS
from hamedge.errors import HamedgeError
from hamedge.runtime.registry import backend_class, backend_names


def candidate_configs(backends: list[str] | None,
                      precisions: list[str] | None) -> tuple[list[tuple[str, str]], bool]:
    """(pairs in report order, whether the user narrowed them). Unknown names are refused."""
    names = backends or list(backend_names())
    for b in names:
        if b not in backend_names():
            raise HamedgeError(f"unknown backend {b!r}; choose from {', '.join(backend_names())}")
    for p in precisions or []:
        if p not in PRECISIONS:
            raise HamedgeError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    explicit = backends is not None or precisions is not None
    pairs = [(b, p) for b in names for p in backend_class(b).precisions
             if precisions is None or p in precisions]
    return pairs, explicit


def open_config(bundle, backend: str, precision: str, threads: int | None, use: str = "latency"):
    """Open one configuration, or raise HamedgeError saying why it cannot run here."""
    from hamedge.runtime import backend_options, missing_dependency, open_backend

    missing = missing_dependency(backend)
    if missing:
        raise HamedgeError(missing)
    if precision not in bundle.precisions:
        raise HamedgeError(f"the bundle has no {precision} graph")
    options = backend_options(backend_class(backend), threads=threads)
    return open_backend(bundle, backend, precision, use=use, **options)


def artifact_size(backend) -> int | None:
    """Bytes of the file the backend runs (graph, engine or weights)."""
    return backend.artifact.stat().st_size if backend.artifact is not None else None
