"""The one cache root: $HAMEDGE_CACHE, else $XDG_CACHE_HOME/hamedge, else ~/.cache/hamedge.

Bundles exported from checkpoints (hamedge.api), the bench's data, TensorRT timing caches and
OpenVINO's compiled models live under it, each in its own subfolder. No torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` when given (a --cache-dir option), else the environment's choice."""
    if override is not None:
        return Path(override)
    if os.environ.get("HAMEDGE_CACHE"):
        return Path(os.environ["HAMEDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hamedge"
