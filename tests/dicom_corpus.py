"""DICOM files no one in this project wrote: pydicom's own test files (shipped with pydicom) and
the larger ones of the pydicom-data package (a dev dependency; tests that need them skip without
it). Never downloaded: pydicom's downloader is not asked."""

from __future__ import annotations

from pathlib import Path

import pytest


def corpus_file(name: str) -> Path:
    """A file of pydicom's test corpus, or skip the test with the reason."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except (ValueError, OSError):
        path = None
    if path is None or not Path(path).is_file():
        pytest.skip(f"{name} is not in pydicom's test corpus here (pip install pydicom-data)")
    return Path(path)
