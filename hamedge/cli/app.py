"""The Typer application and the one place where user errors become one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

import warnings

from hamedge.errors import HamedgeError, HamedgeWarning

app = typer.Typer(
    name="hamedge",
    help="Deploy HAM chest X-ray models: train, evaluate, export (ONNX/INT8/TensorRT), infer, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_warning(message, category, filename, lineno, file=None, line=None,
                  _default=warnings.showwarning):
    if issubclass(category, HamedgeWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI. A HamedgeError (a user mistake) becomes 'error: ...' on stderr and its exit
    code, never a traceback; usage errors are Typer's own (exit 2). A HamedgeWarning is one
    'warning: ...' line."""
    warnings.showwarning = _show_warning
    try:
        app(args=argv)
    except SystemExit as exc:  # Typer's normal way out, usage errors included
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except HamedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a raw traceback
        if os.environ.get("HAMEDGE_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first} (set HAMEDGE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2
    return 0


@app.command()
def version() -> None:
    """Print the hamedge version and the versions of the libraries it found."""
    import importlib.metadata as md

    import hamedge

    print(f"hamedge {hamedge.__version__}")
    for name in ("numpy", "onnxruntime", "torch", "onnx", "tensorrt", "triton"):
        try:
            print(f"  {name} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"  {name} (not installed)")
