"""hamedge command line. Each group of commands lives in its own module and registers on `app`."""

from __future__ import annotations

import sys

from hamedge.cli.app import app, run_app

# Importing these registers their commands on `app`. Heavy imports (torch, onnx) stay inside
# the command functions so that `hamedge --help` and `hamedge infer` start fast without torch.
from hamedge.cli import (  # noqa: E402,F401
    data_cmds, train_cmds, model_cmds, export_cmds, infer_cmds, bench_cmds, demo_cmds, doctor_cmds,
)


def main() -> None:
    sys.exit(run_app())


__all__ = ["app", "main"]
