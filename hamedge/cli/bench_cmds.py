"""`hamedge bench`: latency and accuracy of every backend and precision, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from hamedge.cli.app import app
from hamedge.compare import Budget
from hamedge.errors import HamedgeError
from hamedge.runtime.registry import PRECISIONS, backend_names


def _csv(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise HamedgeError(f"{what} is empty")
    return items


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in _csv(text, "--batch-sizes") or []]
    except ValueError:
        raise HamedgeError(f"--batch-sizes must be integers separated by commas, not {text!r}") from None
    if any(v < 1 for v in values):
        raise HamedgeError("--batch-sizes must be positive")
    return sorted(set(values))


@app.command()
def bench(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Bundle directory, or a checkpoint "
                                         "(.safetensors) to export first. Default: the packaged demo model."),
    backends: Optional[str] = typer.Option(None, help=f"Comma-separated: {','.join(backend_names())}. "
                                           "Default: every backend available here."),
    precisions: Optional[str] = typer.Option(None, help=f"Comma-separated: {','.join(PRECISIONS)}. "
                                             "Default: every precision each backend can run."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="Comma-separated batch sizes."),
    data: Optional[Path] = typer.Option(None, help="Labelled set (NIH layout, NIH CSV or CheXpert) for accuracy. "
                                        "Default: synthetic labelled X-rays."),
    split: str = typer.Option("test", help="Split of --data to evaluate (ImageSets/Main/<split>.txt)."),
    samples: Optional[Path] = typer.Option(None, help="Folder of real X-rays for the end-to-end timing "
                                           "and the overlays. Default: images of the labelled set."),
    warmup: int = typer.Option(3, help="Untimed calls before each measurement."),
    iterations: Optional[int] = typer.Option(None, help="Timed calls per measurement."),
    seconds: Optional[float] = typer.Option(None, help="Time each measurement for this long instead. "
                                            "Default: 200 calls or 10 s, whichever first (>= 10 calls)."),
    out: Path = typer.Option(Path("bench-results"), "--out", "-o", help="Folder for results.json, "
                             "results.md, plots and report.html."),
    accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="Score accuracy too."),
    eval_limit: Optional[int] = typer.Option(None, help="Evaluate only the first N labelled images."),
    synthetic_count: int = typer.Option(48, help="Synthetic labelled images when no --data."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: the cores this process may use)."),
    max_auc_drop: float = typer.Option(Budget.max_mean_auc_drop, "--max-auc-drop",
                                       help="Largest mean AUC drop allowed against fp32."),
    max_tiou_drop: float = typer.Option(Budget.max_tiou_drop, "--max-tiou-drop",
                                        help="Largest T(IoU=0.3) drop allowed against fp32."),
    auc_budget: Optional[float] = typer.Option(None, "--auc-budget", hidden=True),  # old names
    tiou_budget: Optional[float] = typer.Option(None, "--tiou-budget", hidden=True),
    name: Optional[str] = typer.Option(None, help="Name of the model in the report."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where exported bundles and synthetic data "
                                             "are kept between runs. Default: $HAMEDGE_CACHE, "
                                             "else ~/.cache/hamedge."),
    compare: Optional[Tuple[Path, Path]] = typer.Option(None, "--compare", help="Compare two results.json "
                                                        "files (A B): what got faster or slower.",
                                                        show_default=False),
) -> None:
    """Latency (min/mean/median/p90/p95/p99, throughput) and accuracy (AUC, T(IoU), agreement with
    fp32) of every backend and precision, against the PyTorch eager forward, in one table."""
    import os
    import sys

    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        # PyTorch's OpenMP threads spin while they wait; when anything else runs on a small
        # machine a spinning thread holds the core its partner needs, and 2-thread eager PyTorch
        # was measured 30x slower (1017 vs 35 ms) on a busy 2-core box. That would inflate every
        # speed-up; passive waiting keeps the baseline honest (set the variable to override).
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from rich.console import Console

    from hamedge.bench import report
    from hamedge.bench.compare import compare_results, print_comparison
    from hamedge.bench.results import load_results

    console = Console()
    if compare:
        a, b = (load_results(p) for p in compare)
        print_comparison(compare_results(a, b), str(compare[0]), str(compare[1]), console=console)
        return
    from hamedge.bench.runner import BenchOptions, run_bench, write_outputs

    opts = BenchOptions(
        model=model, backends=_csv(backends, "--backends"), precisions=_csv(precisions, "--precisions"),
        batch_sizes=_ints(batch_sizes), data=data, split=split, samples=samples, warmup=warmup,
        iterations=iterations, seconds=seconds, out=out, accuracy=accuracy, eval_limit=eval_limit,
        synthetic_count=synthetic_count, threads=threads,
        budget=Budget(max_mean_auc_drop=max_auc_drop if auc_budget is None else auc_budget,
                      max_tiou_drop=max_tiou_drop if tiou_budget is None else tiou_budget),
        model_name=name, cache_dir=cache_dir)
    results = run_bench(opts, log=lambda text: console.print(text, highlight=False))
    paths = write_outputs(results, out)
    console.print()
    report.render_rich(results, console=console)
    console.print(f"wrote {paths['json']}, {paths['md']}, {paths['html']}", highlight=False)
