"""hamedge CLI commands (registered on the shared Typer app)."""

from __future__ import annotations

from hamedge.cli.app import app  # noqa: F401
