"""The installed layout: every package in the source tree is listed in pyproject.toml, and
training/ and calibration/ are imported only as hamedge.training / hamedge.calibration."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    mapping = {folder: name for name, folder in _config()["package-dir"].items()}
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "build") or rel.parts[0].startswith("."):
            continue
        top = mapping.get(rel.parts[0], rel.parts[0])
        found.add(".".join([top, *rel.parts[1:]]))
    return found


def test_every_source_package_is_installed():
    listed = set(_config()["packages"])
    assert _source_packages() == listed, (
        f"missing from pyproject: {sorted(_source_packages() - listed)}; "
        f"listed but absent: {sorted(listed - _source_packages())}")


def test_no_top_level_training_or_calibration_imports():
    offenders = []
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] == "build":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{rel}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("training", "calibration")]
    assert not offenders, "import hamedge.training / hamedge.calibration instead: " + ", ".join(offenders)
