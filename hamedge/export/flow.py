"""The `hamedge export` flow: checkpoint -> a verified bundle (ONNX, parity with torch, optional
INT8 Q/DQ graphs with their accuracy guard, the static TensorRT parser check, optional TensorRT
engines).

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
        ood = _ood_model(spec, exported, opts, calib_set, log)
        if ood is not None:
            from hamedge.ood import OOD_FILE

            writer.write_json(OOD_FILE, ood.to_dict())
        if opts.fused_plugin:  # TensorRT only; its attention_maps are refined (S x S)
            from hamedge.kernels.onnx_plugin import add_fused_plugin_node

            plugin = add_fused_plugin_node(exported.model, spec)
            writer.write_bytes(PLUGIN_GRAPH, plugin.SerializeToString())
            log(f"fused plugin: {PLUGIN_GRAPH} written (hamedge::FusedRefine node; TensorRT "
                "with the plugin loaded only)")
        tensorrt_compat = _tensorrt_compat(writer, log)
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
            "ood": None if ood is None else ood.describe(),
            "int8": None if calibration is None else {
                "method": calibration["method"], "passed": calibration["passed"],
                "excluded_nodes": len(calibration["excluded_nodes"])},
            "tensorrt_compat": tensorrt_compat,
        }
        writer.write_spec(spec, exported.graph, provenance)
        bundle = writer.commit()
    log(f"bundle written: {bundle.root} ({', '.join(sorted(bundle.files))}) in "
        f"{time.perf_counter() - start:.1f} s")
    if opts.engine:
        _engines(bundle, opts, log)
    return bundle


def _ood_model(spec: ModelSpec, exported, opts: ExportOptions, calib_set, log):
    """The out-of-distribution model of the input gate (hamedge.ood), from the fp32 graph's
    attention maps: statistics of the calibration images (the INT8 set; else --calib; else, for
    a model of synthetic classes, synthetic radiographs), threshold on held-out in-distribution
    images (synthetic ones of another seed; for a folder of the user's, its last third, kept out
    of the statistics). None, with a line, when there are no in-distribution images."""
    from hamedge import ood
    from hamedge.calibration.data import SYNTH_CALIB_SEED, SYNTH_VAL_SEED, load_calibration_set
    from hamedge.compare import run_onnx
    from hamedge.synth import SYNTH_CLASSES

    channels = exported.graph.input_channels
    synthetic = tuple(spec.class_names) == tuple(SYNTH_CLASSES)
    if opts.calib is not None:
        if calib_set is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                calib_set = load_calibration_set(opts.calib, spec, channels, opts.calib_count,
                                                 opts.calib_seed)
        inputs = calib_set.inputs
        cut = len(inputs) - len(inputs) // 3
        fit_inputs, held_inputs = inputs[:cut], inputs[cut:]
        source = f"{opts.calib}: {cut} images for the statistics, {len(inputs) - cut} held out"
    elif synthetic:
        fit_inputs = calib_set.inputs if calib_set is not None else \
            _synthetic_inputs(spec, channels, opts.calib_count, SYNTH_CALIB_SEED)
        held_inputs = _synthetic_inputs(spec, channels, opts.val_count, SYNTH_VAL_SEED)
        source = (f"hamedge.synth: seed {SYNTH_CALIB_SEED} ({len(fit_inputs)} images) for the "
                  f"statistics, seed {SYNTH_VAL_SEED} ({len(held_inputs)}) held out")
    else:
        log("out-of-distribution gate: no in-distribution images for this model (pass --calib "
            "DIR of its X-rays); files without DICOM tags will not be checked")
        return None

    graph = exported.model.SerializeToString()

    def maps(inputs):
        return np.concatenate([run_onnx(graph, inputs[i:i + 64])["attention_maps"]
                               for i in range(0, len(inputs), 64)])

    try:
        model = ood.fit(maps(fit_inputs), maps(held_inputs), source=source, graph="fp32",
                        heatmaps=exported.graph.heatmaps)
    except ValueError as exc:
        log(f"out-of-distribution gate: not made ({exc})")
        return None
    log(f"out-of-distribution gate: {model.info['fit_images']} images for the statistics, "
        f"threshold {model.threshold:.1f} refuses {model.info['heldout_refused']:.1%} of "
        f"{model.info['heldout_images']} held-out images (target "
        f"{model.info['target_false_refusals']:.0%})")
    return model


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


def _tensorrt_compat(writer, log) -> dict:
    """Each TensorRT graph of the bundle against the ONNX parsers of TensorRT 8.5, 10.3 and 11
    (hamedge.trt.compat), printed per version; the result goes into spec.json."""
    from hamedge.bundle import FP32_GRAPH, INT8_GRAPHS, PLUGIN_GRAPH
    from hamedge.trt.compat import check_graphs, summary_lines

    paths = [writer.path(rel) for rel in (FP32_GRAPH, INT8_GRAPHS["tensorrt"], PLUGIN_GRAPH)
             if writer.path(rel).exists()]
    results = check_graphs(paths)
    for line in summary_lines(results):
        log(line)
    return results


def _engines(bundle, opts: ExportOptions, log) -> None:
    from hamedge.errors import BackendUnavailable
    from hamedge.trt import build_engine

    jobs = [(precision, None) for precision in opts.engines_to_build()]
    if opts.fused_plugin and bundle.plugin_graph_path is not None:
        kind = _fused_plugin_kind(opts.plugin_library)
        if kind is None:
            log("engine with the fused plugin: not built (neither tensorrt.plugin with Triton nor "
                "the plugin library is available here; see hamedge/kernels/csrc/README.md)")
        else:
            jobs += [(p, kind) for p in opts.engines_to_build() if p in ("fp32", "fp16")]
    for precision, plugin in jobs:
        label = f"{precision}{' + fused plugin (' + plugin + ')' if plugin else ''}"
        if precision == "int8" and "int8" not in bundle.precisions:
            log("engine int8: skipped (bundle has no INT8 graph; export with --int8)")
            continue
        try:
            record = build_engine(bundle, precision=precision, min_batch=opts.min_batch,
                                  opt_batch=opts.opt_batch, max_batch=opts.max_batch,
                                  workspace_mib=opts.workspace_mib, dla_core=opts.dla_core,
                                  fused_plugin=plugin, plugin_library=opts.plugin_library)
        except BackendUnavailable as exc:
            log(f"engine {label}: not built: {exc} (the rest of the bundle is complete)")
            if plugin is None:
                return
            continue
        log(f"engine {label}: engines/{record.plan}")


def _fused_plugin_kind(library) -> str | None:
    """Which form of hamedge::FusedRefine an engine can be built with here: the C++ library when
    one is given or found, else the tensorrt.plugin definition, else None."""
    from hamedge.errors import BackendUnavailable
    from hamedge.kernels import trt_plugin

    try:
        trt_plugin.library_path(library)
        return "library"
    except BackendUnavailable:
        pass
    return "python" if trt_plugin.plugin_available()[0] else None
