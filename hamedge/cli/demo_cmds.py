"""`hamedge demo`: the main job on the packaged demo model, as a new user would type it.

Each step is a real hamedge command, printed before it runs, so the demo doubles as a tutorial:
synthetic X-rays -> evaluation -> export (ONNX + INT8) -> folder inference with heatmaps.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import typer

from hamedge.cli.app import app
from hamedge.errors import HamedgeError


def _run(args: list[str]) -> None:
    typer.secho("\n$ hamedge " + " ".join(shlex.quote(a) for a in args), bold=True, err=True)
    try:
        app(args=args, standalone_mode=False)
    except SystemExit as exc:  # a command that ends with typer.Exit
        if exc.code not in (0, None):
            raise HamedgeError(f"demo step 'hamedge {args[0]}' exited with {exc.code}") from None


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("hamedge-demo"), "--out", "-o", help="Folder for everything the demo writes."),
    count: int = typer.Option(400, min=20, help="Synthetic X-rays to generate (15% form the test split)."),
    seed: int = typer.Option(7, help="Seed of the synthetic X-rays (the demo model was trained on others)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Also calibrate and check an INT8 graph."),
    samples: Path | None = typer.Option(None, help="Also run inference on this folder of real X-rays."),
) -> None:
    """Generate synthetic X-rays, evaluate the demo model, export it and run folder inference."""
    start = time.perf_counter()
    if out.exists() and any(out.iterdir()):
        raise HamedgeError(f"{out} is not empty; give another --out or remove it")
    data, bundle, results = out / "synthetic", out / "model.hamedge", out / "results"
    _run(["synth", "--out", str(data), "--count", str(count), "--seed", str(seed), "--size", "256"])
    _run(["evaluate", "--data", str(data), "--split", "test", "--baseline",
          "--json", str(out / "evaluation.json")])
    _run(["export", "--out", str(bundle)] + (["--int8"] if int8 else []))
    inputs = [str(data / "images")] + ([str(samples)] if samples else [])
    _run(["infer", *inputs, "--model", str(bundle), "--out", str(results)]
         + (["--precision", "int8"] if int8 else []))
    typer.secho(f"\ndemo finished in {time.perf_counter() - start:.0f} s: metrics {out / 'evaluation.json'}, "
                f"bundle {bundle}, predictions {results / 'results.csv'}, heatmaps under {results}",
                fg="green", err=True)
