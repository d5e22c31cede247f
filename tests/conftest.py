"""Shared fixtures. Real X-rays come from ../shared/data (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HAMEDGE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "nih-samples" / "images").is_dir():
        pytest.skip(f"real X-rays not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nih_images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih-samples" / "images").glob("*.png"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests never write to the user's cache (exported bundles, measured choices, OpenVINO's
    compiled models): $HAMEDGE_CACHE points into the session's temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAMEDGE_CACHE", str(tmp_path_factory.mktemp("hamedge-cache")))
        yield
