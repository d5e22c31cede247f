"""Decode, preprocess and predict each image through the installed hamedge; print one JSON object.

Run by tests/aarch64/run.sh with the host's Python and with the arm64 Python under QEMU, so the two
outputs can be compared (compare.py). Only the slim runtime is needed (no torch).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import platform
import sys

import numpy as np

import hamedge
from hamedge.io import read_image
from hamedge.preprocess import preprocess

AT_HWCAP = 16
HWCAP_ASIMDDP = 1 << 20  # arm64 <asm/hwcap.h>
HWCAP_SVE = 1 << 22


def machine_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "torch_installed": importlib.util.find_spec("torch") is not None}
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    if info["machine"] == "aarch64":
        hwcap = ctypes.CDLL(None).getauxval
        hwcap.restype = ctypes.c_ulong
        bits = hwcap(AT_HWCAP)
        info["sve"] = bool(bits & HWCAP_SVE)
        info["asimddp"] = bool(bits & HWCAP_ASIMDDP)
    return info


def main(bundle: str, images: list[str]) -> None:
    result = {"info": machine_info(), "images": {}}
    decoded = {}
    for path in images:
        try:
            decoded[path] = read_image(path)
        except Exception as exc:  # e.g. a DICOM syntax without a decoder: compared as an error
            result["images"][path] = {"error": f"{type(exc).__name__}: {exc}"}
    for precision in ("fp32", "int8"):
        with hamedge.load(bundle, backend="onnxruntime", precision=precision, accept_any=True) as model:
            for path, image in decoded.items():
                entry = result["images"].setdefault(path, {})
                x = preprocess(image, model.spec, model.backend.input_channels)
                entry["decoded_sha256"] = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
                entry["decoded"] = f"{image.dtype} {image.shape}"
                entry["input_sha256"] = hashlib.sha256(x.tobytes()).hexdigest()
                entry["input"] = x.ravel().tolist()  # float32 values exactly, for the difference
                pred = model.predict(path)
                entry[precision] = {"probabilities": [float(pred.probabilities[c]) for c in model.class_names],
                                    "anomaly": float(pred.anomaly),
                                    "maps": np.asarray(pred.maps, dtype=np.float64).ravel().tolist()}
    result["modules_torch"] = "torch" in sys.modules
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
