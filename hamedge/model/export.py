"""ONNX export of a HAM model: the graph every runtime backend runs (see hamedge.bundle).

Graph contract (ARCHITECTURE.md): input ``image`` (B, C, S, S) float32, already preprocessed;
outputs ``class_probs`` (B, K), ``anomaly_prob`` (B, 1), ``attention_maps`` (B, 1+K, h, w) raw ReLU
CAMs, anomaly first (default), or refined heatmaps (B, 1+K, S, S) with ``full_res=True``.

Two changes against the torch forward, both checked by the parity test:
- grayscale folding: X-rays are replicated to three identical channels with one mean/std, so the
  first convolution's weights are summed over input channels and the graph takes one channel;
- the LSE pooling is written as max + log(sum(exp(x - max))), which cannot overflow in fp16
  (exp(6 * 15) already does), where ONNX's ReduceLogSumExp may be computed the naive way.
Everything after the classification features F lives under the ``head`` module, so its nodes are
named ``/head/...``: calibration keeps that tail (pooling, sigmoids, CAM projection, refinement)
in floating point by that prefix.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamedge.bundle import FLOAT_TAIL_PREFIX, OUTPUT_NAMES, GraphInfo
from hamedge.errors import DataError, HamedgeError
from hamedge.spec import ModelSpec

DEFAULT_OPSET = 17  # highest opset TensorRT 8.5 (JetPack 5) parses; fine for TRT 10/11 and ORT
TAIL_PREFIX = FLOAT_TAIL_PREFIX  # nodes of the _Head module below

# Stated parity tolerances (max absolute difference, ONNX Runtime fp32 vs torch eager fp32).
PROB_TOL = 1e-4
RAW_MAP_RTOL = 1e-4  # relative to the largest raw CAM value in the batch
REFINED_MAP_TOL = 2e-3  # refined maps pass a sigmoid with gain 100: float noise is amplified


class ExportError(HamedgeError):
    """The export failed a check (parity with torch, ONNX checker)."""


def fold_grayscale(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose first convolution takes one channel: the sum of its weights over
    input channels. Exact for inputs whose channels are identical (grayscale replicated with one
    mean/std), which ModelSpec.grayscale_foldable guarantees after preprocessing."""
    spec: ModelSpec = model.spec
    if not spec.grayscale_foldable:
        raise ExportError("cannot fold grayscale input: the spec normalises its channels "
                          "differently (use --no-fold-grayscale)")
    folded = copy.deepcopy(model)
    old = folded.conv1
    if old.in_channels == 1:
        return folded
    conv = nn.Conv2d(1, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                     dilation=old.dilation, bias=old.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    folded.conv1 = conv
    return folded


def _refine_fn():
    """Engineer C's export-friendly refinement when present, else the plain torch one."""
    try:
        from hamedge.ops.export_graph import fused_refine_for_export  # type: ignore

        return fused_refine_for_export
    except ImportError:
        from hamedge.ops.torch_refine import refine_maps_torch

        return refine_maps_torch


class _Head(nn.Module):
    """Features F -> (class_probs, anomaly_prob, attention_maps). Shares the model's classifiers."""

    def __init__(self, model: nn.Module, full_res: bool) -> None:
        super().__init__()
        self.anomaly_fc = model.anomaly_fc
        self.cls_fc = model.cls_fc
        spec: ModelSpec = model.spec
        self.r = float(spec.lse_r)
        self.log_positions = math.log(spec.feature_size ** 2)  # fixed: the input size is fixed
        self.full_res = full_res
        self.size = spec.input_size
        self.gain, self.center = float(spec.cam_gain), float(spec.cam_center)

    def forward(self, feats: torch.Tensor):
        z = self.r * feats.flatten(2)
        zmax = z.amax(dim=2, keepdim=True)
        lse = (zmax + torch.log(torch.exp(z - zmax).sum(dim=2, keepdim=True))).squeeze(2)
        pooled = (lse - self.log_positions) / self.r
        weights = torch.cat((self.anomaly_fc.weight, self.cls_fc.weight), dim=0)  # (1+K, 512)
        cams = F.relu(F.conv2d(feats, weights[:, :, None, None]))
        if self.full_res:
            cams = _refine_fn()(cams, (self.size, self.size), self.gain, self.center)
        return (torch.sigmoid(self.cls_fc(pooled)), torch.sigmoid(self.anomaly_fc(pooled)), cams)


class ExportWrapper(nn.Module):
    """image -> (class_probs, anomaly_prob, attention_maps), the bundle's graph contract."""

    def __init__(self, model: nn.Module, full_res: bool = False) -> None:
        super().__init__()
        self.model = model
        self.head = _Head(model, full_res)

    def forward(self, image: torch.Tensor):
        return self.head(self.model.features(image))


@dataclass
class ExportedGraph:
    model: Any  # onnx.ModelProto
    graph: GraphInfo
    simplified: bool


def export_onnx(model: nn.Module, *, fold: bool = True, full_res: bool = False,
                opset: int = DEFAULT_OPSET, simplify: bool = True) -> ExportedGraph:
    """Trace ``model`` (a HAM in eval mode) into a checked ONNX graph with a dynamic batch."""
    import onnx

    spec: ModelSpec = model.spec
    net = fold_grayscale(model) if fold else copy.deepcopy(model)
    net = net.eval().float().cpu()
    wrapper = ExportWrapper(net, full_res=full_res).eval()
    channels = 1 if fold else spec.in_channels
    example = torch.zeros(2, channels, spec.input_size, spec.input_size)
    buf = io.BytesIO()
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-side shape checks; input size is fixed by design
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # dynamo=False on purpose: the TorchScript tracer gives the plain graph TensorRT parses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper, (example,), buf, input_names=["image"], output_names=list(OUTPUT_NAMES),
            dynamic_axes={"image": batch, **{name: batch for name in OUTPUT_NAMES}},
            opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    simplified = False
    if simplify:
        import onnxsim

        candidate, ok = onnxsim.simplify(proto)
        if ok:
            proto, simplified = candidate, True
    proto.producer_name = "hamedge"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises several types; any means a graph we must not ship
        raise ExportError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    graph = GraphInfo(input_channels=channels, input_size=spec.input_size,
                      heatmaps="refined" if full_res else "raw", feature_size=spec.feature_size,
                      opset=opset)
    return ExportedGraph(proto, graph, simplified)


def torch_reference_outputs(model: nn.Module, batch: np.ndarray, full_res: bool
                            ) -> dict[str, np.ndarray]:
    """The unmodified torch forward (three-channel input, built-in LSE) in the graph's terms."""
    from hamedge.ops.torch_refine import refine_maps_torch

    spec: ModelSpec = model.spec
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    if x.shape[1] != spec.in_channels:
        x = x.expand(-1, spec.in_channels, -1, -1)
    with torch.no_grad():
        out = model.eval()(x, refine=False)
        maps = torch.cat((out.anomaly_cam, out.class_cams), dim=1)
        if full_res:
            maps = refine_maps_torch(maps, (spec.input_size,) * 2, spec.cam_gain, spec.cam_center)
    return {"class_probs": torch.sigmoid(out.class_logits).numpy(),
            "anomaly_prob": torch.sigmoid(out.anomaly_logit).numpy(),
            "attention_maps": maps.numpy()}


def compare_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], refined: bool
                    ) -> dict[str, Any]:
    """Max differences against the stated tolerances; 'ok' says whether all pass."""
    probs = max(float(np.abs(ref[k] - got[k]).max()) for k in ("class_probs", "anomaly_prob"))
    mdiff = float(np.abs(ref["attention_maps"] - got["attention_maps"]).max())
    if refined:
        map_tol = REFINED_MAP_TOL
    else:
        map_tol = RAW_MAP_RTOL * max(1.0, float(np.abs(ref["attention_maps"]).max()))
    return {"max_prob_diff": probs, "prob_tol": PROB_TOL, "max_map_diff": mdiff,
            "map_tol": map_tol, "ok": probs <= PROB_TOL and mdiff <= map_tol}


def run_onnx(model_bytes: bytes, batch: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(OUTPUT_NAMES), {"image": np.ascontiguousarray(batch, dtype=np.float32)})
    return dict(zip(OUTPUT_NAMES, outs))


def check_parity(model: nn.Module, exported: ExportedGraph, batch: np.ndarray) -> dict[str, Any]:
    """Run the exported graph with ONNX Runtime on ``batch`` (B, C_graph, S, S) and compare it with
    the unmodified torch model fed the replicated channels; raise ExportError with the numbers."""
    ref = torch_reference_outputs(model, batch, exported.graph.heatmaps == "refined")
    got = run_onnx(exported.model.SerializeToString(), batch)
    report = compare_outputs(ref, got, exported.graph.heatmaps == "refined")
    report["images"] = int(batch.shape[0])
    if not report["ok"]:
        raise ExportError(
            f"ONNX graph disagrees with the torch model on {batch.shape[0]} inputs: max prob diff "
            f"{report['max_prob_diff']:.3g} (tol {PROB_TOL:g}), max map diff "
            f"{report['max_map_diff']:.3g} (tol {report['map_tol']:.3g})")
    return report


# -- the whole `hamedge export` flow ----------------------------------------------------------------
@dataclass
class ExportOptions:
    out: Any  # bundle directory
    force: bool = False
    fold: bool = True
    full_res: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    parity_images: int = 4
    # INT8
    int8: bool = False
    calib: Any = None  # folder; None: synthetic held-out images (the default model's data)
    calib_count: int = 128
    calib_seed: int = 0
    method: str = "max"
    guard: bool = True
    val: Any = None  # labelled folder; None: synthetic held-out set
    val_split: str | None = "test"
    val_count: int = 200
    max_auc_drop: float = 0.005
    max_tiou_drop: float = 0.01
    max_rounds: int = 4
    # TensorRT (built after the bundle is whole; skipped with one line where unavailable)
    engine: bool = False
    engine_precisions: tuple[str, ...] = ("fp16",)
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    workspace_mib: int = 2048
    dla_core: int | None = None
    fused_plugin: bool = False
    torch_tensorrt: bool = False


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import hamedge

    out = {"hamedge": hamedge.__version__}
    for name in ("torch", "onnx", "onnxruntime", "onnxsim", "numpy"):
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
    from pathlib import Path

    from hamedge.bundle import CALIBRATION_FILE, GRAPH_FILES, PLUGIN_GRAPH, WEIGHTS_FILE, BundleWriter
    from hamedge.model.checkpoint import checkpoint_sha256, load_model, resolve_checkpoint

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
        fp32_path = writer.write_bytes(GRAPH_FILES["fp32"], exported.model.SerializeToString())
        if calib_set is not None:
            batch = calib_set.inputs[: opts.parity_images]
            parity_source = "calibration images"
        else:
            batch = _synthetic_inputs(spec, exported.graph.input_channels, opts.parity_images, 4242)
            parity_source = "synthetic radiographs"
        parity = check_parity(model, exported, batch)
        parity["inputs"] = parity_source
        log(f"parity (ONNX Runtime vs torch, {parity['images']} {parity_source}): max prob diff "
            f"{parity['max_prob_diff']:.2e} (tol {PROB_TOL:g}), max map diff "
            f"{parity['max_map_diff']:.2e} (tol {parity['map_tol']:.2g})")
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
        if opts.fused_plugin:
            plugin = _plugin_graph(exported, spec)
            if plugin is not None:  # TensorRT only; its attention_maps are refined (S x S)
                writer.write_bytes(PLUGIN_GRAPH, plugin.SerializeToString())
                log(f"fused plugin: {PLUGIN_GRAPH} written (hamedge::FusedRefine node; TensorRT "
                    "with the plugin loaded only)")
            else:
                log("fused plugin: hamedge.ops.onnx_plugin is not available; model.plugin.onnx "
                    "not written")
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


def _plugin_graph(exported: ExportedGraph, spec: ModelSpec):
    try:
        from hamedge.ops.onnx_plugin import add_fused_plugin_node  # type: ignore
    except ImportError:
        return None
    return add_fused_plugin_node(exported.model, spec)


def _engines(bundle, opts: ExportOptions, log) -> None:
    from hamedge.errors import BackendUnavailable
    from hamedge.trt import build_engine

    for precision in opts.engine_precisions:
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
    from hamedge.trt.torch_trt import compile_to_bundle

    try:
        record = compile_to_bundle(bundle, model, min_batch=opts.min_batch,
                                   opt_batch=opts.opt_batch, max_batch=opts.max_batch)
    except BackendUnavailable as exc:
        log(f"torch-tensorrt: not built: {exc}")
        return
    log(f"torch-tensorrt: engines/{record.plan}")
