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
    """Where bundles built from checkpoints are kept (hamedge.cache's root)."""
    from hamedge.cache import cache_root

    return cache_root()


def _sha256(path: Path) -> str:
    from hamedge.fsutil import sha256_file

    return sha256_file(path)


def _build_bundle(checkpoint: Path, target: Path, int8: bool, int8_guard: bool, log) -> None:
    """Export a checkpoint into a bundle at ``target`` (needs torch and onnx), as `hamedge export`
    does; with ``int8`` also the calibrated INT8 graphs (guarded unless ``int8_guard`` is False)."""
    try:
        import torch  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        raise HamedgeError(f"{checkpoint.name} must be exported to a bundle first, which needs "
                           "torch and onnx (pip install 'hamedge[export]'); or give an exported "
                           "bundle with --model DIR") from None
    import sys

    from hamedge.export import ExportOptions, export_bundle

    what = "fp32 + INT8" if int8 else "fp32"
    if log is None:
        print(f"exporting {checkpoint.name} ({what}) to a bundle once (cached in {target})",
              file=sys.stderr)
    else:
        log(f"exporting {checkpoint.name} ({what}) to {target} once; later runs reuse it")
    export_bundle(checkpoint, ExportOptions(out=target, force=True, int8=int8, guard=int8_guard),
                  log=log or (lambda *_: None))


def resolve_bundle(model: str | os.PathLike | None = None, *, int8: bool = False,
                   int8_guard: bool = True, cache: str | os.PathLike | None = None, log=None):
    """A verified Bundle from a bundle directory, a .safetensors checkpoint (exported once and
    cached by its sha256) or None (the packaged demo model, likewise). ``int8``: the cached
    export has the INT8 graphs too (``int8_guard`` False: exported even outside the accuracy
    budget, for measuring it); ``cache``: another cache root than hamedge.cache's; ``log``: where
    the one-time export reports (default: a line on stderr)."""
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
    from hamedge.cache import cache_root

    key = _sha256(checkpoint)[:32] + ("-int8" if int8 else "")
    target = cache_root(cache) / "bundles" / key
    if (target / "checksums").is_file():
        try:
            return Bundle.open(target)
        except BundleError:
            if log is not None:
                log(f"cached bundle {target} is unusable; exporting again")
    _build_bundle(checkpoint, target, int8, int8_guard, log)
    return Bundle.open(target)


class Model:
    """An opened model: a bundle on a backend. Use ``predict``; close when done (or ``with``)."""

    def __init__(self, bundle, backend, gate=None) -> None:
        from hamedge.gate import GateSettings
        from hamedge.pipeline.run import usable_ood

        self.bundle = bundle
        self.backend = backend
        self.spec = backend.spec
        self.gate = gate if gate is not None else GateSettings()
        # scores inputs without DICOM tags (arrays, PNG/JPEG/TIFF) after the forward pass
        self.ood = usable_ood(bundle, backend) if self.gate.enabled else None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def _load(self, x: Any) -> tuple[np.ndarray, str | None, dict | None]:
        """(image, path, gate verdict); the verdict of a file without tags is 'untagged'."""
        from hamedge.gate import UNTAGGED, blank_reason, check_file, refuse
        from hamedge.io import read_image

        if isinstance(x, (str, os.PathLike)):
            verdict = None
            if self.gate.enabled:  # the same gate as `hamedge infer`, before any pixel is decoded
                checked, _ = check_file(x, self.gate)
                if checked.refused:
                    raise refuse(x, checked.reason)
                verdict = checked.to_dict()
            image = read_image(x)
            if self.gate.enabled and blank_reason(image):
                raise refuse(x, blank_reason(image))
            return image, os.fspath(x), verdict
        if isinstance(x, np.ndarray):
            if x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (3, 4)):
                if x.dtype != np.uint8 and x.dtype.kind != "f":
                    raise DataError(f"arrays must be uint8 or float in [0, 1], not {x.dtype}")
                if self.gate.enabled and blank_reason(x):
                    raise refuse("array", blank_reason(x))
                return x, None, {"verdict": UNTAGGED} if self.gate.enabled else None
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
                          for im, _, _ in loaded])
        raw = self.backend.run(batch)
        if self.ood is not None:  # the same out-of-distribution rule as `hamedge infer`
            from hamedge.gate import refuse
            from hamedge.pipeline.run import apply_ood

            for (_, path, verdict), distance in zip(loaded, self.ood.distances(raw.attention_maps)):
                reason = apply_ood(verdict, float(distance), self.ood) if verdict else ""
                if reason:
                    raise refuse(path or "array", reason)
        return predictions_from_outputs(raw, self.spec, [im.shape[:2] for im, _, _ in loaded],
                                        [p for _, p, _ in loaded])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hamedge.Model {self.spec.arch} on {self.backend.description}>"


def load(bundle: str | os.PathLike | None = None, backend: str = "auto", precision: str = "fp32",
         device: str | None = None, accept_any: bool = False,
         accept_secondary_capture: bool = False, **opts) -> Model:
    """Open a model for prediction: a bundle folder, a .safetensors checkpoint, or None for the
    packaged demo model. ``backend``: "auto" or a name of hamedge.runtime.backend_names();
    ``precision``: one that backend's class lists in ``precisions``; ``opts``: the backend's own
    keyword options (a misspelt one is refused).

    Files given to ``predict`` pass the input gate (hamedge.gate) first: one that is not a
    frontal chest radiograph raises InputRefused, unless ``accept_any`` (research use).
    ``accept_secondary_capture`` lets DICOM Secondary Capture objects through."""
    from hamedge.gate import GateSettings
    from hamedge.runtime import open_backend

    opened = resolve_bundle(bundle)
    return Model(opened, open_backend(opened, backend, precision, device, **opts),
                 GateSettings(accept_any, accept_secondary_capture))


__all__ = ["Model", "Prediction", "cache_dir", "load", "resolve_bundle"]
