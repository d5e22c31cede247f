"""What runs inside Triton's Python-backend stub: one open hamedge backend per model instance.

``execute`` gets every request the dynamic batcher merged. Tensor mode concatenates them into one
backend batch. Image mode reads and preprocesses every file on a thread pool (hamedge.io and
hamedge.preprocess, the rules of ``hamedge infer``), runs the good ones as one batch and answers a
request whose file cannot be read with an error carrying the reason. A failing backend run fails
only the requests of that call; the server keeps serving. Nothing here logs request contents.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hamedge.runtime.base import OUTPUT_NAMES, RawOutputs
from hamedge.serve.repository import HEATMAPS_OUTPUT, IMAGE_INPUT, IMAGE_SIZE, RESULT_OUTPUT


# The stub's pybind11 numpy glue predates numpy 2 (it reads dtype sizes at numpy 1 offsets), so
# tensors cross in both directions by DLPack instead of as_numpy()/Tensor(name, array). The stub
# marks a consumed capsule "used_dlpack" where the DLPack convention (and numpy's capsule
# destructor) expects "used_dltensor"; renaming it keeps numpy from reporting a bogus error.
# Checked against numpy 2.4 and the Python backend of tritonserver 2.51 (nvidia-pytriton 0.7.0).
_SET_CAPSULE_NAME = ctypes.pythonapi.PyCapsule_SetName
_SET_CAPSULE_NAME.argtypes = (ctypes.py_object, ctypes.c_char_p)
_USED_CAPSULE = b"used_dltensor"


def to_triton(pb_utils, name: str, array: np.ndarray):
    array = np.require(array, requirements=("C", "W"))  # DLPack 0.x cannot export read-only
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _SET_CAPSULE_NAME(capsule, _USED_CAPSULE)
    return tensor


def from_triton(pb_utils, request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


def _reason(exc: BaseException, scratch_name: str | None = None) -> str:
    """One line without the scratch file's name (hamedge.io names the file it read)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if scratch_name:
        text = text.replace(f"{scratch_name}: ", "").replace(scratch_name, "<request>")
    from hamedge.errors import HamedgeError

    return text if isinstance(exc, HamedgeError) else f"{type(exc).__name__}: {text}"


def decode_one(data: bytes, spec, channels: int, scratch: Path):
    """Encoded bytes -> (tensor (C, S, S), (H, W)): hamedge.gate's input gate (a DICOM that is not
    a frontal chest radiograph is refused with the reason), hamedge.io.read_image, preprocess.
    read_image reads paths (DICOM by its preamble, rasters by content), so the bytes go to a
    private scratch file that is removed at once."""
    from hamedge.errors import DataError
    from hamedge.io import read_image
    from hamedge.preprocess import preprocess

    if not data:
        raise DataError("empty request: no image bytes")
    fd, name = tempfile.mkstemp(prefix="req-", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        from hamedge.gate import GateSettings, blank_reason, check_file

        try:
            verdict, _ = check_file(name, GateSettings())  # the input gate of `hamedge infer`
        except Exception as exc:
            raise DataError(_reason(exc, name)) from None
        if verdict.refused:
            raise DataError(f"refused by the input gate: {verdict.reason}")
        try:
            image = read_image(name)
        except Exception as exc:
            raise DataError(_reason(exc, name)) from None
        if blank_reason(image):
            raise DataError(f"refused by the input gate: {blank_reason(image)}")
    finally:
        os.unlink(name)
    return preprocess(image, spec, channels), (int(image.shape[0]), int(image.shape[1]))


def encode_results(results: list[dict]) -> np.ndarray:
    """JSON results as uint8 rows (B, n), space-padded to one length (BYTES tensors crash the
    numpy-1 stub, so text travels as UTF-8 bytes); hamedge.client decodes them."""
    texts = [json.dumps(r).encode() for r in results]
    width = max(len(t) for t in texts)
    return np.frombuffer(b"".join(t.ljust(width) for t in texts), np.uint8).reshape(len(texts),
                                                                                    width)


class HamedgeTritonModel:
    def __init__(self, config: dict, pb_utils) -> None:
        from hamedge.spec import ModelSpec

        self.pb = pb_utils
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.mode = params.get("mode", "tensor")
        if self.mode not in ("tensor", "image", "preprocess", "postprocess"):
            raise ValueError(f"unknown hamedge model mode {self.mode!r}")
        self.backend = None
        self.pool = None
        self._own_scratch = None
        if self.mode in ("tensor", "image"):
            from hamedge.bundle import Bundle
            from hamedge.runtime import open_backend

            bundle = Bundle.open(params["bundle"])
            threads = int(params.get("threads") or 0) or None
            self.backend = open_backend(bundle, params.get("backend", "auto"),
                                        params.get("precision", "fp32"), threads=threads)
            self.spec = self.backend.spec
            self.channels = self.backend.input_channels
            self.input_name = bundle.graph.input_name
        else:  # pre/post-processing steps of an exported ensemble: the spec is enough
            self.spec = ModelSpec.from_json(params["spec_json"])
            self.channels = int(params.get("input_channels") or self.spec.in_channels)
            self.input_name = config["output"][0]["name"] if self.mode == "preprocess" else ""
            self.refined = params.get("heatmaps") == "refined"
        if self.mode in ("image", "preprocess"):
            if params.get("scratch_dir"):
                self.scratch = Path(params["scratch_dir"])
            else:
                self.scratch = self._own_scratch = Path(tempfile.mkdtemp(prefix="hamedge-req-"))
            self.pool = ThreadPoolExecutor(int(params.get("decode_workers") or 2),
                                           thread_name_prefix="hamedge-decode")

    # -- helpers ----------------------------------------------------------------------------
    def _error(self, reason: str):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(reason))

    def _tensors(self, raw: RawOutputs) -> list:
        return [to_triton(self.pb, name, np.asarray(getattr(raw, name), np.float32))
                for name in OUTPUT_NAMES]

    def _results(self, preds):
        """The JSON result of each prediction: ``Prediction.to_dict`` (what results.jsonl holds)
        without the path, which the server does not know."""
        return to_triton(self.pb, RESULT_OUTPUT, encode_results(
            [{k: v for k, v in p.to_dict().items() if k != "path"} for p in preds]))

    def _run(self, batch: np.ndarray) -> RawOutputs:
        return self.backend.run(batch)

    # -- execute ----------------------------------------------------------------------------
    def execute(self, requests):
        try:
            if self.mode == "image":
                return self._execute_images(requests)
            if self.mode == "preprocess":
                return self._execute_preprocess(requests)
            if self.mode == "postprocess":
                return self._execute_postprocess(requests)
            return self._execute_tensors(requests)
        except Exception as exc:  # a failed run fails these requests, never the server
            reason = f"inference failed: {_reason(exc)}"
            return [self._error(reason) for _ in requests]

    def _execute_tensors(self, requests):
        arrays = [from_triton(self.pb, r, self.input_name) for r in requests]
        counts = [len(a) for a in arrays]
        raw = self._run(np.concatenate(arrays).astype(np.float32, copy=False))
        responses, start = [], 0
        for n in counts:
            responses.append(self.pb.InferenceResponse(self._tensors(raw[start:start + n])))
            start += n
        return responses

    def _decode(self, requests) -> list:
        """Per request: [(tensor, (H, W)), ...] for its files, or the reason one failed."""
        jobs = []  # per request: list of futures, one per image in that request
        for request in requests:
            rows = from_triton(self.pb, request, IMAGE_INPUT)  # (B, n) uint8, one file per row
            jobs.append([self.pool.submit(decode_one, row.tobytes(), self.spec, self.channels,
                                          self.scratch) for row in rows.reshape(len(rows), -1)])
        decoded: list = []
        for futures in jobs:
            items, error = [], None
            for index, future in enumerate(futures):
                try:
                    items.append(future.result())
                except Exception as exc:
                    if error is None:
                        prefix = f"image {index}: " if len(futures) > 1 else ""
                        error = prefix + _reason(exc)
            decoded.append(error if error is not None else items)
        return decoded

    def _execute_preprocess(self, requests):
        responses = []
        for d in self._decode(requests):
            if isinstance(d, str):
                responses.append(self._error(d))
                continue
            responses.append(self.pb.InferenceResponse([
                to_triton(self.pb, self.input_name, np.stack([t for t, _ in d])),
                to_triton(self.pb, IMAGE_SIZE, np.array([s for _, s in d], np.int32))]))
        return responses

    def _execute_postprocess(self, requests):
        from hamedge.pipeline.prediction import predictions_from_outputs

        responses = []
        for request in requests:
            raw = RawOutputs(*(np.asarray(from_triton(self.pb, request, n), np.float32)
                               for n in OUTPUT_NAMES), self.refined)
            sizes = from_triton(self.pb, request, IMAGE_SIZE).reshape(-1, 2).tolist()
            preds = predictions_from_outputs(raw, self.spec, [tuple(s) for s in sizes])
            responses.append(self.pb.InferenceResponse([self._results(preds)]))
        return responses

    def _execute_images(self, requests):
        from hamedge.pipeline.prediction import predictions_from_outputs

        decoded = self._decode(requests)
        good = [t for d in decoded if not isinstance(d, str) for t, _ in d]
        raw = self._run(np.stack(good)) if good else None
        responses, start = [], 0
        for request, d in zip(requests, decoded):
            if isinstance(d, str):
                responses.append(self._error(d))
                continue
            part = raw[start:start + len(d)]
            start += len(d)
            wanted = set(request.requested_output_names() or ())
            outputs = self._tensors(part)
            preds = predictions_from_outputs(part, self.spec, [size for _, size in d])
            outputs.append(self._results(preds))
            if HEATMAPS_OUTPUT in wanted:
                maps = np.stack([np.stack([p.heatmap(name) for name in p.map_names])
                                 for p in preds])
                outputs.append(to_triton(self.pb, HEATMAPS_OUTPUT,
                                         np.round(maps * 255).astype(np.uint8)))
            responses.append(self.pb.InferenceResponse(outputs))
        return responses

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.backend is not None:
            self.backend.close()
        if self._own_scratch is not None:
            import shutil

            shutil.rmtree(self._own_scratch, ignore_errors=True)
