"""The `hamedge export` flow: checkpoint -> a verified bundle (ONNX, parity with torch, optional
INT8 Q/DQ graphs with their accuracy guard, optional TensorRT engines and torch-tensorrt).

It orchestrates the layers below it and decides nothing they own: the graph is
hamedge.model.graph's, the numbers of parity are hamedge.compare's, INT8 is calibration's, engines
are hamedge.trt's. torch is imported when a step needs it, not at import.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from hamedge.errors import DataError
from hamedge.export.options import ExportOptions
from hamedge.spec import ModelSpec


def check_parity(model, exported, batch: np.ndarray) -> dict[str, Any]:
    """Run the exported graph with ONNX Runtime on ``batch`` (B, C_graph, S, S) and compare it with
    the unmodified torch model fed the replicated channels; raise ExportError with the numbers."""
    from hamedge.compare import compare_outputs, describe_parity, run_onnx
    from hamedge.model.graph import ExportError, torch_reference_outputs

    refined = exported.graph.heatmaps == "refined"
    ref = torch_reference_outputs(model, batch, refined)
    got = run_onnx(exported.model.SerializeToString(), batch)
    report = compare_outputs(ref, got, refined)
    report["images"] = int(batch.shape[0])
    if not report["ok"]:
        raise ExportError(f"ONNX graph disagrees with the torch model on {batch.shape[0]} inputs: "
                          f"{describe_parity(report)}")
    return report


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("hamedge", "torch", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _synthetic_inputs(spec: ModelSpec, channels: int, count: int, seed: int) -> np.ndarray:
    """Real-looking inputs without any data on disk: synthetic radiographs, preprocessed."""
    from hamedge import synth
    from hamedge.preprocess import preprocess

    size = int(spec.extra.get("synth_size", max(spec.input_size, 256)))
    return np.stack([preprocess(synth.render(i, seed, size)[0], spec, channels)
                     for i in range(count)]).astype(np.float32)


def export_bundle(checkpoint: Any, opts: ExportOptions, log=print):
    """checkpoint (None: the packaged demo model) -> a verified bundle at opts.out.

    The bundle is built in a temporary directory and renamed into place only when every step
    (export, checker, parity, INT8 and its guard) succeeded. TensorRT engines are added after,
    when asked and possible; their absence never removes the bundle."""
    import datetime as dt
    import tempfile
    import time

    from hamedge.bundle import CALIBRATION_FILE, FP32_GRAPH, PLUGIN_GRAPH, WEIGHTS_FILE, BundleWriter
    from hamedge.compare import describe_parity
    from hamedge.model.checkpoint import checkpoint_sha256, load_model, resolve_checkpoint
    from hamedge.model.graph import export_onnx

    opts.validate()
    start = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    model = load_model(ckpt)
    spec: ModelSpec = model.spec
    fold = opts.fold and spec.in_channels == 3 and spec.grayscale_foldable
    ckpt_sha = checkpoint_sha256(ckpt)
    calib_set = val_set = None
    with BundleWriter(opts.out, force=opts.force) as writer, \
            tempfile.TemporaryDirectory(prefix="hamedge-export-") as scratch:
        if opts.int8:  # read the calibration images first: a bad folder fails before the export
            calib_set, val_set, val_info = _int8_inputs(spec, 1 if fold else spec.in_channels, opts,
                                              scratch, log)
        log(f"export: {ckpt.name} ({spec.arch}, stride {spec.output_stride}, {spec.input_size} px, "
            f"{spec.num_classes} classes) -> ONNX opset {opts.opset}"
            f"{', grayscale folded' if fold else ''}")
        exported = export_onnx(model, fold=fold, full_res=opts.full_res, opset=opts.opset,
                               simplify=opts.simplify)
        fp32_path = writer.write_bytes(FP32_GRAPH, exported.model.SerializeToString())
        if calib_set is not None:
            batch = calib_set.inputs[: opts.parity_images]
            parity_source = "calibration images"
        else:
            batch = _synthetic_inputs(spec, exported.graph.input_channels, opts.parity_images, 4242)
            parity_source = "synthetic radiographs"
        parity = check_parity(model, exported, batch)
        parity["inputs"] = parity_source
        log(f"parity (ONNX Runtime vs torch, {parity['images']} {parity_source}): "
            f"{describe_parity(parity)}")
        writer.copy_file(ckpt, WEIGHTS_FILE)
        calibration = None
        if calib_set is not None:
            from hamedge.calibration import Budget, build_int8

            budget = Budget(max_mean_auc_drop=opts.max_auc_drop, max_tiou_drop=opts.max_tiou_drop)
            calibration = build_int8(fp32_path, writer.tmp, spec, exported.graph, calib_set,
                                     ckpt_sha, val_set=val_set, val_info=val_info,
                                     method=opts.method, budget=budget,
                                     max_rounds=opts.max_rounds, log=log)
            writer.write_json(CALIBRATION_FILE, calibration)
        if opts.fused_plugin:  # TensorRT only; its attention_maps are refined (S x S)
            from hamedge.kernels.onnx_plugin import add_fused_plugin_node

            plugin = add_fused_plugin_node(exported.model, spec)
            writer.write_bytes(PLUGIN_GRAPH, plugin.SerializeToString())
            log(f"fused plugin: {PLUGIN_GRAPH} written (hamedge::FusedRefine node; TensorRT "
                "with the plugin loaded only)")
        provenance = {
            "checkpoint": ckpt.name,
            "checkpoint_sha256": ckpt_sha,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "export": {"fold_grayscale": fold, "full_res_heatmaps": opts.full_res,
                       "opset": opts.opset, "simplified": exported.simplified,
                       "exporter": "torch.onnx (TorchScript tracer)"},
            "parity": parity,
            "plugin_graph": {"file": PLUGIN_GRAPH, "heatmaps": "refined",
                             "op": "hamedge::FusedRefine"} if writer.path(PLUGIN_GRAPH).exists()
            else None,
            "int8": None if calibration is None else {
                "method": calibration["method"], "passed": calibration["passed"],
                "excluded_nodes": len(calibration["excluded_nodes"])},
        }
        writer.write_spec(spec, exported.graph, provenance)
        bundle = writer.commit()
    log(f"bundle written: {bundle.root} ({', '.join(sorted(bundle.files))}) in "
        f"{time.perf_counter() - start:.1f} s")
    if opts.engine:
        _engines(bundle, opts, log)
    if opts.torch_tensorrt:
        _torch_tensorrt(bundle, model, opts, log)
    return bundle


def _int8_inputs(spec: ModelSpec, channels: int, opts: ExportOptions, scratch: str, log):
    """(calibration set, guard set or None). Synthetic held-out data goes under ``scratch``."""
    from hamedge.calibration.data import (SYNTH_CALIB_SEED, SYNTH_VAL_SEED, load_calibration_set,
                                  synth_size, synthetic_heldout)
    from hamedge.datasets import load_dataset
    from hamedge.synth import SYNTH_CLASSES

    if opts.calib is not None:  # fail fast on a bad folder, before any slow step
        from hamedge.calibration.data import MIN_IMAGES, select_images

        found, _ = select_images(opts.calib, opts.calib_count, opts.calib_seed)
        if len(found) < MIN_IMAGES:
            raise DataError(f"calibration needs at least {MIN_IMAGES} images; {opts.calib} has "
                            f"{len(found)}")
    val_set = None
    opts_info = {"split": opts.val_split}
    if opts.guard:  # the guard's images first: calibration must never see them
        if opts.val is not None:
            val_set = load_dataset(opts.val, split=opts.val_split, class_names=spec.class_names)
        elif tuple(spec.class_names) == tuple(SYNTH_CLASSES):
            root = synthetic_heldout(spec, opts.val_count, SYNTH_VAL_SEED, f"{scratch}/val")
            val_set = load_dataset(root, split="test", class_names=spec.class_names)
            log(f"guard: {len(val_set)} synthetic held-out labelled images (seed {SYNTH_VAL_SEED})")
            opts_info = {"generator": "hamedge.synth", "seed": SYNTH_VAL_SEED,
                         "generated": opts.val_count, "size": synth_size(spec), "split": "test"}
        else:
            log("warning: no --val set for this model's classes; INT8 accuracy is not measured "
                "(pass --val DIR)")
        if val_set is not None and opts.val_count and len(val_set) > opts.val_count:
            from hamedge.datasets import stratified_sample

            val_set = val_set.subset(stratified_sample(val_set.records, opts.val_count, seed=0))
    calib_dir = opts.calib
    if calib_dir is None:
        if tuple(spec.class_names) != tuple(SYNTH_CLASSES):
            log("warning: no --calib given; calibrating on synthetic radiographs, which this "
                "model was not trained on (pass --calib DIR of your X-rays)")
        calib_dir = synthetic_heldout(spec, opts.calib_count, SYNTH_CALIB_SEED, f"{scratch}/calib")
        log(f"calibration: {opts.calib_count} synthetic held-out images (seed {SYNTH_CALIB_SEED})")
    guard_images = [r.path for r in val_set.records] if val_set is not None else []
    with warnings.catch_warnings():  # logged below, once
        warnings.simplefilter("ignore", UserWarning)
        calib_set = load_calibration_set(calib_dir, spec, channels, opts.calib_count,
                                         opts.calib_seed, exclude=guard_images)
    for note in calib_set.warnings:
        log(f"warning: {note}")
    if opts.calib is None:  # the temp folder will be gone: say how to make the images again
        calib_set.source = (f"hamedge.synth seed {SYNTH_CALIB_SEED}, {opts.calib_count} images, "
                            f"{synth_size(spec)} px")
    return calib_set, val_set, opts_info


def _engines(bundle, opts: ExportOptions, log) -> None:
    from hamedge.errors import BackendUnavailable
    from hamedge.trt import build_engine

    for precision in opts.engines_to_build():
        if precision == "int8" and "int8" not in bundle.precisions:
            log("engine int8: skipped (bundle has no INT8 graph; export with --int8)")
            continue
        try:
            record = build_engine(bundle, precision=precision, min_batch=opts.min_batch,
                                  opt_batch=opts.opt_batch, max_batch=opts.max_batch,
                                  workspace_mib=opts.workspace_mib, dla_core=opts.dla_core)
        except BackendUnavailable as exc:
            log(f"engine {precision}: not built: {exc} (the rest of the bundle is complete)")
            return
        log(f"engine {precision}: engines/{record.plan}")


def _torch_tensorrt(bundle, model, opts: ExportOptions, log) -> None:
    from hamedge.errors import BackendUnavailable
    from hamedge.export.torch_trt import compile_to_bundle

    try:
        record = compile_to_bundle(bundle, model, min_batch=opts.min_batch,
                                   opt_batch=opts.opt_batch, max_batch=opts.max_batch)
    except BackendUnavailable as exc:
        log(f"torch-tensorrt: not built: {exc}")
        return
    log(f"torch-tensorrt: engines/{record.plan}")
