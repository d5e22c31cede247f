"""Tables of a bench run, built once as rows of strings and rendered three ways: rich (terminal),
Markdown (results.md) and HTML (report.html)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hamedge.bench.latency import P99_MIN_SAMPLES
from hamedge.compare import Budget


@dataclass
class TableData:
    title: str
    columns: list[str]
    rows: list[list[str]]
    flagged: list[bool]  # rows that break the accuracy budget (highlighted, never hidden)
    note: str = ""


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mb(size: int | None) -> str:
    return "-" if not size else f"{size / 1e6:.1f}"


def _vs_ort(entry: dict[str, Any] | None) -> str:
    """Throughput against ONNX Runtime's at the same batch, mode and precision (fp32 for bf16)."""
    ratio = (entry or {}).get("vs_onnxruntime")
    return "-" if not ratio else f"{ratio:.2f}x"


def accuracy_by_config(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{a['backend']}/{a['precision']}": a for a in results.get("accuracy", [])}


def summary_table(results: dict[str, Any]) -> TableData:
    """The Ultralytics-shaped table: one row per configuration, size, accuracy, ms per image,
    speed-up (end-to-end at the smallest batch measured, model-only beside it)."""
    acc = accuracy_by_config(results)
    configs: dict[str, dict[str, Any]] = {}
    for e in results["latency"]:
        name = f"{e['backend']}/{e['precision']}"
        configs.setdefault(name, {"size": e.get("size_bytes"), "by": {}})
        configs[name]["by"][(e["mode"], e["batch"])] = e
    batches = sorted({e["batch"] for e in results["latency"]})
    batch = batches[0] if batches else 1
    rows, flagged = [], []
    for name, info in configs.items():
        e2e = info["by"].get(("e2e", batch))
        model = info["by"].get(("model", batch))
        infer = info["by"].get(("infer", batch))
        a = acc.get(name, {})
        tiou = (a.get("tiou") or {}).get("0.3")
        ok = a.get("within_budget")
        rows.append([
            name, _mb(info["size"]), _f(a.get("mean_auc"), 4), _f(tiou, 3),
            _f(model["stats"]["ms_per_image"]) if model else "-",
            _f(e2e["stats"]["ms_per_image"]) if e2e else "-",
            _f(model.get("speedup")) + "x" if model and model.get("speedup") else "-",
            _f(e2e.get("speedup")) + "x" if e2e and e2e.get("speedup") else "-",
            _f(infer.get("speedup")) + "x" if infer and infer.get("speedup") else "-",
            _vs_ort(model), _vs_ort(e2e),
            "-" if ok is None else ("yes" if ok else "NO: " + "; ".join(a.get("budget_failures", []))),
        ])
        flagged.append(ok is False)
    return TableData(
        title=f"Summary (batch {batch})",
        columns=["configuration", "size MB", "mean AUC", "T(IoU=0.3)", "model ms/img",
                 "end-to-end ms/img", "model speed-up", "end-to-end speed-up",
                 "infer pipeline speed-up", "model vs onnxruntime", "end-to-end vs onnxruntime",
                 "within budget"],
        rows=rows, flagged=flagged,
        note=("speed-up = throughput / PyTorch eager throughput at the same batch size, same run; "
              "vs onnxruntime = throughput / ONNX Runtime's at the same precision (fp32 for bf16 "
              "and fp16), same run: above 1 this runtime is the faster one here; "
              "infer pipeline = hamedge infer's overlapped path against eager end-to-end"))


def latency_table(results: dict[str, Any]) -> TableData:
    """trtexec's figures for every configuration, batch size and mode."""
    rows, flagged = [], []
    acc = accuracy_by_config(results)
    any_gpu = any(e["stats"].get("device_ms") is not None for e in results["latency"])
    for e in sorted(results["latency"], key=lambda e: (e["mode"], e["batch"], not e.get("baseline"),
                                                        e["backend"], e["precision"])):
        s = e["stats"]
        name = f"{e['backend']}/{e['precision']}"
        p99 = _f(s["p99_ms"]) + ("" if s["samples"] >= P99_MIN_SAMPLES else "*")
        row = [name, e["mode"], str(e["batch"]), str(s["samples"]), _f(s["min_ms"]), _f(s["mean_ms"]),
               _f(s["median_ms"]), _f(s["p90_ms"]), _f(s["p95_ms"]), p99, _f(s["throughput"]),
               "baseline" if e.get("baseline") else (_f(e.get("speedup")) + "x" if e.get("speedup") else "-"),
               _vs_ort(e)]
        if any_gpu:
            row += [_f(s.get("host_ms")), _f(s.get("device_ms"))]
        rows.append(row)
        flagged.append(acc.get(name, {}).get("within_budget") is False)
    columns = ["configuration", "mode", "batch", "samples", "min ms", "mean ms", "median ms",
               "p90 ms", "p95 ms", "p99 ms", "img/s", "speed-up", "vs onnxruntime"]
    if any_gpu:
        columns += ["host ms", "device ms"]
    return TableData(
        title="Latency per call (one call = one batch; warm-up excluded)", columns=columns, rows=rows,
        flagged=flagged,
        note=(f"mode model = the network alone on preprocessed input; e2e = image files to full-size "
              f"heatmaps (read, preprocess, run, refine, one stage after the other); infer = "
              f"hamedge infer's pipeline (reader threads overlap decoding with inference; boxes and "
              f"heatmaps of positive findings), one call = a run over 16+ files. * p99 from fewer than {P99_MIN_SAMPLES} "
              f"samples: read it as the slowest call."))


def stages_table(results: dict[str, Any]) -> TableData | None:
    """Where the end-to-end time goes, per configuration and batch (mean ms per call)."""
    entries = [e for e in results["latency"] if e["mode"] == "e2e" and e.get("stages_ms")]
    if not entries:
        return None
    stages: list[str] = []
    for e in entries:
        stages += [k for k in e["stages_ms"] if k not in stages]
    rows = []
    for e in sorted(entries, key=lambda e: (e["batch"], not e.get("baseline"), e["backend"], e["precision"])):
        rows.append([f"{e['backend']}/{e['precision']}", str(e["batch"])]
                    + [_f(e["stages_ms"].get(k)) for k in stages] + [_f(sum(e["stages_ms"].values()))])
    return TableData(title="End-to-end time by stage (ms per call)", columns=["configuration", "batch"]
                     + stages + ["sum"], rows=rows, flagged=[False] * len(rows),
                     note="means over every call, warm-up included; the baseline's stages are the "
                          "reference's (PIL read+resize in RGB, forward with full-resolution refinement)")


def accuracy_table(results: dict[str, Any], only: tuple[str, ...] | None = None) -> TableData:
    """``only``: the T(IoU) thresholds to show (the terminal shows a few; files show all)."""
    rows, flagged = [], []
    thresholds: list[str] = []
    for a in results.get("accuracy", []):
        thresholds = sorted((a.get("tiou") or {}).keys(), key=float) or thresholds
    if only is not None:
        thresholds = [t for t in thresholds if t in only]
    for a in results.get("accuracy", []):
        ag = a.get("agreement") or {}
        d = a.get("delta") or {}
        tiou = a.get("tiou") or {}
        ok = a.get("within_budget")
        rows.append([
            f"{a['backend']}/{a['precision']}" + (" (reference)" if a.get("reference") else ""),
            _f(a.get("mean_auc"), 4), _f(d.get("mean_auc"), 4) if d else "-",
            _f(a.get("anomaly_auc"), 4),
            *[_f(tiou.get(t), 3) for t in thresholds],
            _f((a.get("tior") or {}).get("0.5"), 3),
            _f(ag.get("max_prob_diff"), 5), _f(ag.get("mean_heatmap_iou"), 4),
            _f(ag.get("min_heatmap_iou"), 4), "-" if ag.get("flips") is None else str(ag["flips"]),
            "-" if ok is None else ("yes" if ok else "NO: " + "; ".join(a.get("budget_failures", []))),
        ])
        flagged.append(ok is False)
    budget = Budget.from_dict(results.get("budget"))
    both_empty = sum((a.get("agreement") or {}).get("both_empty_pairs") or 0
                     for a in results.get("accuracy", []))
    return TableData(
        title="Accuracy on the labelled set, and agreement with the fp32 reference",
        columns=["configuration", "mean AUC", "delta AUC", "anomaly AUC",
                 *[f"T(IoU={t})" for t in thresholds], "T(IoR=0.5)", "max |delta p|",
                 "heatmap IoU mean", "heatmap IoU min", "flips", "within budget"],
        rows=rows, flagged=flagged,
        note=(f"budget: mean AUC drop <= {budget.max_mean_auc_drop}, "
              f"T(IoU={budget.tiou_threshold:g}) drop <= {budget.max_tiou_drop}; heatmap IoU "
              f"compares binarised refined maps with the reference's, over the pairs where either "
              f"mask marks a region ({both_empty} pairs empty in both are left out); flips = "
              f"(image, finding) pairs whose decision at the threshold changes."))


def per_class_table(results: dict[str, Any]) -> TableData | None:
    accs = results.get("accuracy", [])
    if not accs or not accs[0].get("class_auc"):
        return None
    classes = list(accs[0]["class_auc"])
    names = [f"{a['backend']}/{a['precision']}" for a in accs]
    rows = [[c] + [_f((a.get("class_auc") or {}).get(c), 4) for a in accs]
            + [_f((a.get("class_tiou_0.3") or {}).get(c), 3) for a in accs] for c in classes]
    return TableData(title="Per class: AUC and T(IoU=0.3)",
                     columns=["class"] + [f"AUC {n}" for n in names] + [f"T(IoU=0.3) {n}" for n in names],
                     rows=rows, flagged=[False] * len(rows),
                     note="- : the class has no positive or no negative image (AUC), or no box image (T(IoU))")


def all_tables(results: dict[str, Any], compact: bool = False) -> list[TableData]:
    """Every table; ``compact`` (the terminal): fewer T(IoU) columns and no per-class table."""
    tables = [summary_table(results), latency_table(results)]
    stages = None if compact else stages_table(results)
    if stages is not None:
        tables.append(stages)
    if results.get("accuracy"):
        tables.append(accuracy_table(results, ("0.1", "0.3", "0.5", "0.7") if compact else None))
        per_class = None if compact else per_class_table(results)
        if per_class is not None:
            tables.append(per_class)
    return tables


def header_lines(results: dict[str, Any]) -> list[str]:
    m, v, model = results.get("machine", {}), results.get("versions", {}), results.get("model", {})
    lines = [
        f"model: {model.get('name', '?')} ({model.get('arch', '?')}, stride {model.get('output_stride', '?')}, "
        f"{model.get('input_size', '?')} px)",
        f"machine: {m.get('cpu')} ({m.get('cores')} usable cores; {', '.join(m.get('cpu_flags') or []) or 'no flags'}); "
        f"GPU: {m.get('gpu') or 'none'}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"date: {results.get('created')}; commit: {results.get('commit') or 'unknown'}",
    ]
    s = results.get("settings", {})
    if s:
        lines.append(f"data: {s.get('data_description', '?')}; warm-up {s.get('warmup')}, "
                     f"stop rule: {s.get('stop_rule_text', '?')}; threads {s.get('threads')}; "
                     f"eager on {s.get('eager_device', '?')}, OMP_WAIT_POLICY {s.get('omp_wait_policy', '?')}")
    return lines


def render_rich(results: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for line in header_lines(results):
        console.print(line, highlight=False)
    for t in all_tables(results, compact=True):
        table = Table(title=t.title, caption=t.note or None, caption_justify="left")
        for i, col in enumerate(t.columns):
            table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
        for row, bad in zip(t.rows, t.flagged):
            table.add_row(*row, style="bold red" if bad else None)
        console.print(table)
    for note in results.get("notes", []):
        console.print(f"note: {note}", highlight=False)


def render_markdown(results: dict[str, Any]) -> str:
    out = ["# hamedge bench results", ""]
    out += [f"- {line}" for line in header_lines(results)]
    out.append("")
    for t in all_tables(results):
        out += [f"## {t.title}", ""]
        out.append("| " + " | ".join(t.columns) + " |")
        out.append("| " + " | ".join("---" for _ in t.columns) + " |")
        for row, bad in zip(t.rows, t.flagged):
            cells = [f"**{c}**" if bad else c for c in row]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if t.note:
            out += ["", t.note]
        out.append("")
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(out)
