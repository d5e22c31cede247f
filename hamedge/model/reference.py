"""Import of the HAM reference repository's checkpoints and configs (github.com/oyxhust/HAM).

The reference saves ``torch.save(net.state_dict())`` of a wrapper whose only child is ``model``,
usually inside DataParallel, so keys read ``module.model.layer1.0.conv1.weight``; our HAM uses the
same names below that prefix (its SynchronizedBatchNorm2d keys equal BatchNorm2d's). The files are
read with ``weights_only=True``: anything but tensors and plain containers is refused, never
unpickled. Strides, dilation and the first max-pool leave no trace in the weights, so they come
from the reference's YAML config (or the caller's spec).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hamedge.errors import CheckpointError, SpecError
from hamedge.model.checkpoint import check_state_dict, model_from_state_dict, save_checkpoint
from hamedge.spec import ModelSpec

# Wrapper prefixes the reference's checkpoints carry: DataParallel's, then AttentionNet's child.
_PREFIXES = ("module.", "model.")
# Containers some training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefixes (``module.``, ``model.``, in any nesting) shared by every key."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def read_reference_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a reference .pth, wrapper prefixes stripped. Never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"reference checkpoint {path} not found")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for disallowed objects, RuntimeError for bad zips
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise CheckpointError(f"{path.name} holds pickled objects other than tensors "
                                  f"({found.group(1)}); refusing to unpickle them "
                                  f"(weights_only)") from None
        if "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            why = found.group(1).strip()[:120] if found else "refused by weights_only"
            raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint of tensors "
                                  f"({why})") from None
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {first[:160]}") from None
    for _ in range(2):  # e.g. {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path.name} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path.name}: {len(bad)} entr(ies) are not tensors "
                              f"({', '.join(map(str, bad[:3]))}); not a model state dict")
    return strip_prefixes({str(k): v for k, v in obj.items()})


def load_reference_state_dict(path: str | os.PathLike, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Read a reference .pth and check it fits HAM(spec) exactly (keys, shapes, architecture)."""
    state = read_reference_state_dict(path)
    check_state_dict(state, spec, source=str(path))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def load_reference_model(path: str | os.PathLike, spec: ModelSpec, *,
                         device: str | torch.device = "cpu"):
    """A HAM in eval mode with a reference checkpoint's weights."""
    return model_from_state_dict(spec, load_reference_state_dict(path, spec), source=str(path),
                                 device=device)


# -- configs ------------------------------------------------------------------------------------
# reference YAML key -> (ModelSpec field, check/convert)
def _as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("an integer")
    return v


def _as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _as_names(v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError("a non-empty list of class names")
    return tuple(v)


def _as_floats(v: Any) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError("a list of numbers")
    return tuple(float(x) for x in v)


def _as_arch(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("an architecture name")
    return v


# reference YAML key -> (ModelSpec field, converter); training/reference_config.py reads it too
SPEC_CONFIG_KEYS: dict[str, tuple[str, Any]] = {
    "arch": ("arch", _as_arch),
    "Downsampling": ("output_stride", _as_int),
    "Using_pooling": ("keep_maxpool", _as_bool),
    "Using_dilation": ("dilation", _as_bool),
    "img_size": ("input_size", _as_int),
    "Data_CLASSES": ("class_names", _as_names),
    "Means": ("mean", _as_floats),
    "Stds": ("std", _as_floats),
    "in_channels": ("in_channels", _as_int),
}
# The reference's own defaults where its configs may omit a key (it always builds 3 channels).
# ModelSpec field -> import-reference option, for error messages.
_OPTION_NAMES = {"arch": "arch", "output_stride": "output-stride", "keep_maxpool": "pooling",
                 "dilation": "dilation", "input_size": "img-size", "class_names": "classes"}
_CONFIG_DEFAULTS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "in_channels": 3}


def spec_from_reference_config(yaml_path: str | os.PathLike | None = None,
                               **overrides: Any) -> ModelSpec:
    """A ModelSpec from a reference YAML config (keys arch, Downsampling, Using_pooling,
    Using_dilation, img_size, Data_CLASSES, Means, Stds, in_channels). ``overrides`` are ModelSpec
    fields that replace the YAML's values; None values are ignored. Without a YAML, every
    architecture field must come from the overrides."""
    import yaml

    fields: dict[str, Any] = {}
    source = "no reference config given"
    if yaml_path is not None:
        path = Path(yaml_path)
        source = path.name
        if not path.is_file():
            raise SpecError(f"reference config {path} not found")
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = str(exc).replace("\n", " ")
            raise SpecError(f"{path.name} is not valid YAML: {line[:160]}") from None
        if not isinstance(config, dict):
            raise SpecError(f"{path.name} is not a reference config (expected a mapping of keys)")
        for key, (name, convert) in SPEC_CONFIG_KEYS.items():
            if key in config and config[key] is not None:
                try:
                    fields[name] = convert(config[key])
                except ValueError as exc:
                    raise SpecError(f"{path.name}: {key} must be {exc}, not {config[key]!r}") from None
    fields.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in _CONFIG_DEFAULTS.items():
        fields.setdefault(name, value)
    required = {"arch": "arch", "output_stride": "Downsampling", "keep_maxpool": "Using_pooling",
                "dilation": "Using_dilation", "input_size": "img_size", "class_names": "Data_CLASSES"}
    missing = [name for name in required if name not in fields]
    if missing:
        raise SpecError(f"{source}: missing " + ", ".join(
            f"{required[name]} (--{_OPTION_NAMES[name]})" for name in missing)
            + "; give them in the reference config or as options")
    fields.setdefault("description", f"imported from the HAM reference ({source})")
    try:
        return ModelSpec(**fields)
    except TypeError as exc:
        raise SpecError(f"{source}: invalid model settings: {exc}") from None


# -- conversion ---------------------------------------------------------------------------------
def convert_reference(pth_path: str | os.PathLike, spec: ModelSpec, out: str | os.PathLike, *,
                      force: bool = False, half: bool = False,
                      metadata: dict[str, str] | None = None, verify: bool = True) -> Path:
    """Convert a reference .pth into a hamedge checkpoint. Every tensor of the .pth must be used
    (strict keys and shapes). Refuses to overwrite ``out`` unless force. ``verify``: read the
    written file back (see verify_conversion); a checkpoint that fails is removed."""
    from hamedge.fsutil import sha256_file

    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists (use --force to overwrite it)")
    if out.resolve() == Path(pth_path).resolve():
        raise CheckpointError("the output would overwrite the reference checkpoint itself")
    state = load_reference_state_dict(pth_path, spec)
    meta = {"source": "HAM reference checkpoint", "source_file": Path(pth_path).name,
            "source_sha256": sha256_file(pth_path)}
    meta.update(metadata or {})
    path = save_checkpoint(state, spec, out, half=half, metadata=meta)
    if verify:
        try:
            verify_conversion(state, path, half=half)
        except CheckpointError:
            path.unlink(missing_ok=True)
            raise
    return path


def verify_conversion(source: Mapping[str, torch.Tensor], out: str | os.PathLike, *,
                      half: bool = False) -> None:
    """Check a converted checkpoint against the tensors it came from: the same names, every
    tensor unchanged (up to float16 rounding with ``half``), and the model loads and gives finite
    outputs on a probe input. Raises CheckpointError (one line)."""
    from hamedge.model.checkpoint import load_checkpoint, load_model

    out = Path(out)
    spec, state, _ = load_checkpoint(out)
    if set(source) != set(state):
        raise CheckpointError(f"{out.name}: keys differ from the reference checkpoint's")
    tolerance = 1e-3 if half else 0.0
    for name, value in source.items():
        value = value.float() if value.is_floating_point() else value
        diff = (state[name].to(value.dtype) - value).abs().max() if value.numel() else 0
        if float(diff) > tolerance * max(1.0, float(value.abs().max()) if value.numel() else 0.0):
            raise CheckpointError(f"{out.name}: tensor {name} changed in conversion")
    model = load_model(out)
    with torch.no_grad():
        probe = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size)
        result = model(probe, refine=False)
    if not all(torch.isfinite(t).all() for t in (result.anomaly_logit, result.class_logits)):
        raise CheckpointError(f"{out.name}: the imported model gives non-finite outputs")
