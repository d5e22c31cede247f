"""The Python API: ``hamedge.load(bundle).predict(image_or_path_or_array)``.

    import hamedge
    model = hamedge.load("model.hamedge")          # or None: the packaged demo model
    pred = model.predict("chest.png")               # a path, a 2-D / HxWx3 array, or a list
    pred.probabilities["Effusion"], pred.findings, pred.anomaly
    pred.heatmap("Effusion", size="image")          # refined lazily, only when asked
    pred.boxes("Effusion")                          # [Box(x, y, w, h, score, area)] in image pixels

Reading and preprocessing are hamedge.io / hamedge.preprocess, outputs are read by
hamedge.pipeline.prediction: the same rules as `hamedge infer`. No torch unless the torch backend
(or building the default bundle) asks for it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from hamedge.errors import BundleError, DataError, HamedgeError
from hamedge.pipeline.prediction import Prediction, predictions_from_outputs

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "default_model.safetensors"


def cache_dir() -> Path:
    """Where bundles built from checkpoints are kept: $HAMEDGE_CACHE, else the user cache dir."""
    if os.environ.get("HAMEDGE_CACHE"):
        return Path(os.environ["HAMEDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hamedge"


def _sha256(path: Path) -> str:
    from hamedge.fsutil import sha256_file

    return sha256_file(path)


def _build_bundle(checkpoint: Path, target: Path) -> None:
    """Export a checkpoint into a bundle at ``target`` (needs torch and onnx)."""
    try:
        import torch  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        raise HamedgeError(f"{checkpoint.name} must be exported to a bundle first, which needs "
                           "torch and onnx (pip install 'hamedge[export]'); or give an exported "
                           "bundle with --model DIR") from None
    import sys

    from hamedge.export import ExportOptions, export_bundle

    print(f"exporting {checkpoint.name} to a bundle once (cached in {target})", file=sys.stderr)
    export_bundle(checkpoint, ExportOptions(out=target, force=True), log=lambda *_: None)


def resolve_bundle(model: str | os.PathLike | None = None):
    """A verified Bundle from a bundle directory, a .safetensors checkpoint (exported once and
    cached by its sha256) or None (the packaged demo model, likewise)."""
    from hamedge.bundle import Bundle

    if model is not None and Path(model).is_dir():
        return Bundle.open(model)
    checkpoint = DEFAULT_CHECKPOINT if model is None else Path(model)
    if not checkpoint.is_file():
        if model is None:
            raise BundleError(f"no --model given and the packaged demo model {checkpoint} is "
                              "missing; give an exported bundle with --model DIR")
        raise BundleError(f"{checkpoint}: no such bundle folder or checkpoint")
    if checkpoint.suffix.lower() != ".safetensors":
        raise BundleError(f"{checkpoint} is neither a bundle folder nor a .safetensors checkpoint "
                          "(export reference .pth checkpoints with `hamedge export`)")
    target = cache_dir() / "bundles" / _sha256(checkpoint)[:32]
    if not (target / "checksums").is_file():
        _build_bundle(checkpoint, target)
    return Bundle.open(target)


class Model:
    """An opened model: a bundle on a backend. Use ``predict``; close when done (or ``with``)."""

    def __init__(self, bundle, backend) -> None:
        self.bundle = bundle
        self.backend = backend
        self.spec = backend.spec

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def _load(self, x: Any) -> tuple[np.ndarray, str | None]:
        from hamedge.io import read_image

        if isinstance(x, (str, os.PathLike)):
            return read_image(x), os.fspath(x)
        if isinstance(x, np.ndarray):
            if x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (3, 4)):
                if x.dtype != np.uint8 and x.dtype.kind != "f":
                    raise DataError(f"arrays must be uint8 or float in [0, 1], not {x.dtype}")
                return x, None
            raise DataError(f"an image array must be 2-D or HxWx3, not {x.shape}")
        raise DataError(f"cannot predict on a {type(x).__name__}: give a path or a numpy array")

    def predict(self, x, batch_size: int = 8) -> Prediction | list[Prediction]:
        """One Prediction for a path or an array; a list of them for a list (run in batches)."""
        if isinstance(x, (list, tuple)):
            out: list[Prediction] = []
            for i in range(0, len(x), batch_size):
                out.extend(self._predict_many(list(x[i:i + batch_size])))
            return out
        return self._predict_many([x])[0]

    def _predict_many(self, xs: list) -> list[Prediction]:
        from hamedge.preprocess import preprocess

        loaded = [self._load(x) for x in xs]
        batch = np.stack([preprocess(im, self.spec, self.backend.input_channels)
                          for im, _ in loaded])
        raw = self.backend.run(batch)
        return predictions_from_outputs(raw, self.spec, [im.shape[:2] for im, _ in loaded],
                                        [p for _, p in loaded])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hamedge.Model {self.spec.arch} on {self.backend.description}>"


def load(bundle: str | os.PathLike | None = None, backend: str = "auto", precision: str = "fp32",
         device: str | None = None, **opts) -> Model:
    """Open a model for prediction: a bundle folder, a .safetensors checkpoint, or None for the
    packaged demo model. ``backend``: auto | onnxruntime | tensorrt | torch."""
    from hamedge.runtime import open_backend

    opened = resolve_bundle(bundle)
    return Model(opened, open_backend(opened, backend, precision, device, **opts))


__all__ = ["Model", "Prediction", "cache_dir", "load", "resolve_bundle"]
