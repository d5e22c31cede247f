"""What every registered backend must do, present and future: one parametrised suite over
hamedge.runtime.registry. A backend whose package is missing here skips with the reason; one
that cannot open on this machine (no GPU) skips with the backend's own one-line reason."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infer_helpers import make_bundle
from hamedge.bundle import PRECISIONS, Bundle
from hamedge.errors import BackendUnavailable, HamedgeError
from hamedge.runtime import RawOutputs, open_backend
from hamedge.runtime.registry import BACKENDS, backend_class, missing_dependency

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(BACKENDS)
DEVICE_KINDS = {"cpu", "cuda", "gpu"}
# Largest |probability - fp32 ONNX Runtime| accepted per precision on the tiny random model.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2, "int8": 0.1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    root = make_bundle(tmp_path_factory.mktemp("conf") / "tiny.hamedge", int8=True,
                       int8_targets=("cpu", "tensorrt"))
    return Bundle.open(root)


@pytest.fixture(scope="module")
def reference(bundle):
    x = np.random.default_rng(7).standard_normal((3, 1, 64, 64)).astype(np.float32)
    with open_backend(bundle, "onnxruntime", "fp32") as ref:
        return x, ref.run(x)


def _input_for(backend, x: np.ndarray) -> np.ndarray:
    """The same images for a backend that takes 3 channels (the unfolded torch network)."""
    return np.repeat(x, backend.input_channels, axis=1) if backend.input_channels != 1 else x


def _open(bundle, name: str, precision: str):
    missing = missing_dependency(name)
    if missing:
        pytest.skip(f"{name}: {missing}")
    try:
        return open_backend(bundle, name, precision)
    except BackendUnavailable as exc:
        pytest.skip(f"{name}/{precision} cannot open here: {exc}")


@pytest.mark.parametrize("name", NAMES)
def test_class_declares_what_it_supports(name):
    cls = backend_class(name)
    assert cls.name == name
    assert cls.precisions and set(cls.precisions) <= set(PRECISIONS), cls.precisions
    assert cls.devices and set(cls.devices) <= DEVICE_KINDS, cls.devices
    assert cls.requires and cls.install_hint
    params = inspect.signature(cls.__init__).parameters
    assert list(params)[:4] == ["self", "bundle", "precision", "device"]
    # explicit keyword options only: **kwargs would swallow a misspelt option
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())


def test_registry_imports_no_heavy_runtime():
    code = ("import sys\n"
            "from hamedge.runtime.registry import BACKENDS, backend_class, missing_dependency\n"
            "for name in BACKENDS:\n"
            "    backend_class(name); missing_dependency(name)\n"
            "heavy = [m for m in ('torch', 'tensorrt', 'openvino') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("name", NAMES)
def test_runs_every_precision_it_declares(name, bundle, reference):
    x, ref = reference
    cls = backend_class(name)
    ran = []
    for precision in cls.precisions:
        missing = missing_dependency(name)
        if missing:
            pytest.skip(f"{name}: {missing}")
        try:
            backend = open_backend(bundle, name, precision)
        except BackendUnavailable as exc:  # no GPU, no engine: said in one line, not a crash
            assert str(exc) and "\n" not in str(exc)
            continue
        except HamedgeError as exc:  # a precision this device cannot run (fp16 on a CPU)
            assert str(exc) and "\n" not in str(exc)
            continue
        with backend:
            assert backend.precision == precision and backend.name == name
            assert backend.artifact is not None and backend.artifact.is_file()
            assert backend.last_inference_time() is None
            batch = _input_for(backend, x)
            start = time.perf_counter()
            out = backend.run(batch)
            wall = time.perf_counter() - start
            assert isinstance(out, RawOutputs) and len(out) == 3
            k = len(bundle.spec.class_names)
            assert out.class_probs.shape == (3, k) and out.anomaly_prob.shape == (3, 1)
            assert out.attention_maps.shape[:2] == (3, 1 + k)
            for arr in (out.class_probs, out.anomaly_prob, out.attention_maps):
                assert arr.dtype == np.float32 and np.isfinite(arr).all()
            assert ((out.class_probs >= 0) & (out.class_probs <= 1)).all()
            diff = np.abs(out.class_probs - ref.class_probs).max()
            assert diff <= TOLERANCE[precision], (precision, diff)
            took = backend.last_inference_time()
            assert took is not None and 0 < took <= wall
            # a batch larger than max_batch is split and joined: the same outputs
            backend.max_batch = 2
            split = backend.run(batch)
            np.testing.assert_allclose(split.class_probs, out.class_probs, atol=1e-5)
            with pytest.raises(HamedgeError, match="expects a batch of shape"):
                backend.run(np.zeros((1, backend.input_channels + 1, 64, 64), np.float32))
        with pytest.raises(RuntimeError):
            backend.run(batch)
        backend.close()  # twice is fine
        ran.append(precision)
    if not ran:
        pytest.skip(f"{name}: none of {', '.join(cls.precisions)} can run on this machine")
    assert "fp32" in ran or not set(cls.devices) & {"cpu"}


@pytest.mark.parametrize("name", NAMES)
def test_refuses_what_it_does_not_run_in_one_line(name, bundle):
    cls = backend_class(name)
    missing = missing_dependency(name)
    if missing:
        pytest.skip(f"{name}: {missing}")
    for precision in set(PRECISIONS) - set(cls.precisions):
        with pytest.raises(HamedgeError, match=f"the {name} backend runs"):
            open_backend(bundle, name, precision)
    with pytest.raises(HamedgeError, match="takes no option 'no_such_option'"):
        open_backend(bundle, name, cls.precisions[0], no_such_option=1)
