"""`hamedge bench --compare A.json B.json`: what got faster or slower between two runs, by how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Changes of throughput smaller than this (relative) are reported as unchanged: run-to-run noise on a
# shared CPU is a few percent.
NOISE = 0.03


@dataclass
class LatencyChange:
    config: str
    batch: int
    mode: str
    before: float  # images/s
    after: float
    median_before_ms: float
    median_after_ms: float

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else float("inf")

    @property
    def verdict(self) -> str:
        if self.ratio > 1 + NOISE:
            return "faster"
        if self.ratio < 1 - NOISE:
            return "slower"
        return "same"


@dataclass
class AccuracyChange:
    config: str
    metric: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


def _latency_key(entry: dict[str, Any]) -> tuple[str, int, str]:
    return f"{entry['backend']}/{entry['precision']}", int(entry["batch"]), entry["mode"]


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Match configurations of run A and run B; return changes and what exists in only one run."""
    lat_a = {_latency_key(e): e for e in a.get("latency", [])}
    lat_b = {_latency_key(e): e for e in b.get("latency", [])}
    changes = []
    for key in sorted(set(lat_a) & set(lat_b)):
        ea, eb = lat_a[key], lat_b[key]
        changes.append(LatencyChange(key[0], key[1], key[2], ea["stats"]["throughput"],
                                     eb["stats"]["throughput"], ea["stats"]["median_ms"],
                                     eb["stats"]["median_ms"]))
    acc_a = {f"{e['backend']}/{e['precision']}": e for e in a.get("accuracy", [])}
    acc_b = {f"{e['backend']}/{e['precision']}": e for e in b.get("accuracy", [])}
    acc_changes = []
    for name in sorted(set(acc_a) & set(acc_b)):
        for metric in ("mean_auc", "anomaly_auc"):
            acc_changes.append(AccuracyChange(name, metric, acc_a[name].get(metric),
                                              acc_b[name].get(metric)))
        tiou_a, tiou_b = acc_a[name].get("tiou") or {}, acc_b[name].get("tiou") or {}
        if "0.3" in tiou_a or "0.3" in tiou_b:
            acc_changes.append(AccuracyChange(name, "T(IoU=0.3)", tiou_a.get("0.3"), tiou_b.get("0.3")))
    return {
        "latency": changes,
        "accuracy": acc_changes,
        "only_a": sorted("/".join(map(str, k)) for k in set(lat_a) - set(lat_b)),
        "only_b": sorted("/".join(map(str, k)) for k in set(lat_b) - set(lat_a)),
        "machine_a": a.get("machine", {}),
        "machine_b": b.get("machine", {}),
        "same_machine": _machine_key(a) == _machine_key(b),
        "runs": [{k: r.get(k) for k in ("created", "commit")} | {"model": r.get("model", {}).get("name")}
                 for r in (a, b)],
    }


def _machine_key(results: dict[str, Any]) -> tuple:
    m = results.get("machine", {})
    return m.get("cpu"), m.get("cores"), m.get("gpu")


def format_ratio(ratio: float) -> str:
    if ratio >= 1:
        return f"{ratio:.2f}x faster" if ratio > 1 + NOISE else f"{ratio:.2f}x (same)"
    return f"{1 / ratio:.2f}x slower" if ratio < 1 - NOISE else f"{ratio:.2f}x (same)"


def print_comparison(cmp: dict[str, Any], label_a: str, label_b: str, console=None) -> None:
    """Render a comparison with rich: one row per configuration present in both runs."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for label, run in zip((label_a, label_b), cmp.get("runs", [])):
        console.print(f"{label}: {run.get('model')}, {run.get('created')}, commit {run.get('commit')}",
                      highlight=False)
    if not cmp["same_machine"]:
        ma, mb = cmp["machine_a"], cmp["machine_b"]
        console.print(f"[yellow]note:[/] the runs come from different machines "
                      f"({ma.get('cpu')}, {ma.get('cores')} cores, GPU {ma.get('gpu')} vs "
                      f"{mb.get('cpu')}, {mb.get('cores')} cores, GPU {mb.get('gpu')})")
    table = Table(title=f"throughput: {label_a} -> {label_b}")
    for col in ("configuration", "batch", "mode", "A img/s", "B img/s", "A median ms",
                "B median ms", "change"):
        table.add_column(col, justify="left" if col in ("configuration", "mode") else "right")
    for ch in cmp["latency"]:
        style = {"faster": "green", "slower": "red"}.get(ch.verdict, "")
        table.add_row(ch.config, str(ch.batch), ch.mode, f"{ch.before:.2f}", f"{ch.after:.2f}",
                      f"{ch.median_before_ms:.2f}", f"{ch.median_after_ms:.2f}",
                      f"[{style}]{format_ratio(ch.ratio)}[/]" if style else format_ratio(ch.ratio))
    console.print(table)
    if cmp["accuracy"]:
        acc = Table(title="accuracy")
        for col in ("configuration", "metric", "A", "B", "change"):
            acc.add_column(col, justify="left" if col in ("configuration", "metric") else "right")
        for ch in cmp["accuracy"]:
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            delta = "-" if ch.delta is None else f"{ch.delta:+.4f}"
            acc.add_row(ch.config, ch.metric, fmt(ch.before), fmt(ch.after), delta)
        console.print(acc)
    faster = sum(ch.verdict == "faster" for ch in cmp["latency"])
    slower = sum(ch.verdict == "slower" for ch in cmp["latency"])
    console.print(f"{faster} faster, {slower} slower, "
                  f"{len(cmp['latency']) - faster - slower} within {NOISE:.0%} noise")
    for label, only in ((label_a, cmp["only_a"]), (label_b, cmp["only_b"])):
        if only:
            console.print(f"only in {label}: {', '.join(only)}")
