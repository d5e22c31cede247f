"""`hamedge export`: checkpoint -> bundle (ONNX, optional INT8 Q/DQ graphs, optional TensorRT
engines). The flow and every option check are hamedge.export's; torch, onnx and onnxruntime are
imported inside the command only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hamedge.cli.app import app
from hamedge.export.options import ExportOptions as _Defaults

@app.command("export")
def export(
    checkpoint: Optional[Path] = typer.Argument(
        None, help="hamedge checkpoint (.safetensors); default: the packaged demo model."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    full_res_heatmaps: bool = typer.Option(
        False, "--full-res-heatmaps",
        help="Graph outputs refined heatmaps at input resolution (default: raw low-res maps, "
             "the runtime refines only what it needs)."),
    fold_grayscale: bool = typer.Option(
        True, "--fold-grayscale/--no-fold-grayscale",
        help="Fold the 3 identical grayscale channels into the first convolution (1-channel input)."),
    opset: int = typer.Option(_Defaults.opset, help="ONNX opset (17: TensorRT 8.5+ / 10 / 11, ONNX Runtime)."),
    int8: bool = typer.Option(False, "--int8", help="Also write INT8 Q/DQ graphs (calibrated)."),
    calib: Optional[Path] = typer.Option(
        None, "--calib", help="Folder of calibration X-rays (PNG/JPEG/DICOM, or a labelled set); "
                              "default: synthetic held-out images."),
    calib_count: int = typer.Option(_Defaults.calib_count, "--calib-count", help="Calibration images to use."),
    calib_seed: int = typer.Option(_Defaults.calib_seed, "--calib-seed", help="Seed of the calibration sample."),
    method: str = typer.Option(_Defaults.method, "--method", help="Calibration: max | entropy | percentile."),
    val: Optional[Path] = typer.Option(
        None, "--val", help="Labelled held-out set for the INT8 accuracy guard; default: synthetic."),
    val_split: str = typer.Option(_Defaults.val_split, "--val-split", help="Split of --val to use."),
    val_count: int = typer.Option(_Defaults.val_count, "--val-count", help="Images of the guard set to use."),
    int8_guard: bool = typer.Option(True, "--int8-guard/--no-int8-guard",
                                    help="Measure INT8 against fp32 and enforce the budget."),
    max_auc_drop: float = typer.Option(_Defaults.max_auc_drop, "--max-auc-drop", help="Budget: mean AUC drop."),
    max_tiou_drop: float = typer.Option(_Defaults.max_tiou_drop, "--max-tiou-drop",
                                        help="Budget: mean T(IoU=0.3) drop."),
    engine: bool = typer.Option(False, "--engine", help="Build TensorRT engines (needs TensorRT "
                                                        "and a GPU; skipped with a note otherwise)."),
    engine_precision: Optional[list[str]] = typer.Option(
        None, "--engine-precision", help="fp16 / int8 / fp32 (repeatable; default fp16, and int8 "
                                         "with --int8)."),
    min_batch: int = typer.Option(_Defaults.min_batch, "--min-batch"),
    opt_batch: int = typer.Option(_Defaults.opt_batch, "--opt-batch"),
    max_batch: int = typer.Option(_Defaults.max_batch, "--max-batch"),
    workspace_mib: int = typer.Option(_Defaults.workspace_mib, "--workspace-mib", help="TensorRT workspace limit."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Jetson DLA core to build for."),
    fused_plugin: bool = typer.Option(False, "--fused-plugin",
                                      help="Also write model.plugin.onnx (fused refinement plugin) "
                                           "and, with --engine, build fp16/fp32 engines with it."),
    plugin_library: Optional[Path] = typer.Option(
        None, "--plugin-library", help="The C++ FusedRefine plugin library for those engines "
                                       "(default: $HAMEDGE_FUSED_PLUGIN_LIB, else tensorrt.plugin)."),
) -> None:
    """Export a checkpoint to a self-describing bundle: ONNX, INT8, TensorRT engines."""
    from hamedge.export import ExportOptions, export_bundle

    opts = ExportOptions(
        out=out, force=force, fold=fold_grayscale, full_res=full_res_heatmaps, opset=opset,
        int8=int8, calib=calib, calib_count=calib_count, calib_seed=calib_seed, method=method,
        guard=int8_guard, val=val, val_split=val_split, val_count=val_count,
        max_auc_drop=max_auc_drop, max_tiou_drop=max_tiou_drop, engine=engine,
        engine_precisions=tuple(engine_precision) if engine_precision else None,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mib=workspace_mib, dla_core=dla_core, fused_plugin=fused_plugin,
        plugin_library=plugin_library)
    export_bundle(checkpoint, opts, log=lambda line: typer.echo(line, err=True))
