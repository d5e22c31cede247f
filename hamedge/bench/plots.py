"""PNG plots of a bench run (matplotlib, Agg backend; imported lazily so the CLI starts fast)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from hamedge.compare import Budget
from hamedge.fsutil import write_bytes


MODE_TITLES = {"model": "model only", "e2e": "end-to-end: file to heatmap",
               "infer": "hamedge infer pipeline (overlapped)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _name(e: dict[str, Any]) -> str:
    return f"{e['backend']}/{e['precision']}"


def latency_distribution(results: dict[str, Any], path: Path) -> Path:
    """Box plots of per-call latency (ms per image) for every configuration and batch, per mode."""
    plt = _plt()
    modes = [m for m in ("model", "e2e", "infer") if any(e["mode"] == m for e in results["latency"])]
    fig, axes = plt.subplots(len(modes), 1, figsize=(9, 2.2 + 0.45 * len(results["latency"])),
                             squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        entries = sorted((e for e in results["latency"] if e["mode"] == mode),
                         key=lambda e: (e["batch"], _name(e)))
        per = [e.get("files_per_call", e["batch"]) for e in entries]  # images in one call
        data = [[v / n for v in e["stats"]["raw_ms"]] or [e["stats"]["mean_ms"] / n]
                for e, n in zip(entries, per)]
        labels = [f"{_name(e)} b{e['batch']}" for e in entries]
        style = {"whis": (1, 99), "showfliers": True, "flierprops": {"markersize": 2}}
        try:
            ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, **style)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.set_xscale("log")
        ax.set_xlabel("ms per image (per call / batch); whiskers p1-p99")
        ax.set_title(MODE_TITLES[mode])
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def throughput_vs_batch(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    modes = [m for m in ("model", "e2e", "infer") if any(e["mode"] == m for e in results["latency"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        by_config: dict[str, list[tuple[int, float]]] = {}
        for e in results["latency"]:
            if e["mode"] == mode:
                by_config.setdefault(_name(e), []).append((e["batch"], e["stats"]["throughput"]))
        for name, points in sorted(by_config.items()):
            points.sort()
            style = "--" if name.startswith("torch-eager") else "-"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=name)
        ax.set_xscale("log", base=2)
        batches = sorted({e["batch"] for e in results["latency"]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(MODE_TITLES[mode])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_speedup(results: dict[str, Any], path: Path) -> Path | None:
    """Accuracy change (vs the fp32 reference) against end-to-end speed-up, budget lines drawn."""
    acc = {f"{a['backend']}/{a['precision']}": a for a in results.get("accuracy", [])}
    if not acc:
        return None
    plt = _plt()
    batches = sorted({e["batch"] for e in results["latency"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    budget = Budget.from_dict(results.get("budget"))
    for ax, (metric, label, limit) in zip(axes, (
            ("mean_auc", "change of mean AUC", budget.max_mean_auc_drop),
            (budget.tiou_key, f"change of T(IoU={budget.tiou_threshold:g})", budget.max_tiou_drop))):
        for e in results["latency"]:
            a = acc.get(_name(e))
            if e["mode"] != "e2e" or a is None or e.get("speedup") is None:
                continue
            delta = (a.get("delta") or {}).get(metric)
            if delta is None:
                continue
            marker = "o" if a.get("within_budget", True) else "X"
            ax.scatter(e["speedup"], delta, marker=marker, s=50,
                       label=f"{_name(e)} b{e['batch']}" if len(batches) > 1 else _name(e))
        if limit is not None:
            ax.axhline(-limit, color="red", linestyle=":", label="budget")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.axvline(1, color="gray", linewidth=0.8)
        ax.set_xlabel("end-to-end speed-up over PyTorch eager")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot under ``out``; returns {plot key: file name relative to out}."""
    made = {}
    if results["latency"]:
        made["latency"] = latency_distribution(results, out / "latency_distribution.png").name
        made["throughput"] = throughput_vs_batch(results, out / "throughput_vs_batch.png").name
    p = accuracy_vs_speedup(results, out / "accuracy_vs_speedup.png")
    if p is not None:
        made["accuracy"] = p.name
    return made
