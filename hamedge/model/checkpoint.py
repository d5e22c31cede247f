"""hamedge's own checkpoint format: one .safetensors file with the model spec in its metadata.

Metadata keys (all strings, as safetensors requires):
  hamedge.format          "hamedge-checkpoint/1"
  hamedge.spec            the ModelSpec as JSON
  hamedge.weights_sha256  sha256 over the tensors as stored (see ``weights_sha256``), checked on load
plus any caller metadata (training provenance etc.). Loading never unpickles anything: safetensors
holds raw tensors only. Reference .pth checkpoints are converted by hamedge.model.reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hamedge.errors import CheckpointError, HamedgeError
from hamedge.fsutil import atomic_write, sha256_file
from hamedge.spec import ARCHITECTURES, ModelSpec

FORMAT = "hamedge-checkpoint/1"
META_FORMAT = "hamedge.format"
META_SPEC = "hamedge.spec"
META_SHA = "hamedge.weights_sha256"
RESERVED_PREFIX = "hamedge."

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default_model.safetensors"

# safetensors' own dtype names, so the weights hash can be recomputed from the file without torch.
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}

# Kept in float32 even when half=True: BatchNorm statistics are tiny and a running_var stored in
# fp16 loses relative precision near its small values (eps is 1e-5), for no real saving in size.
_KEEP_FP32_SUFFIXES = ("running_mean", "running_var")


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in sorted name order: name, dtype, shape and raw little-endian bytes
    of each, length-framed so no two different sets of tensors can produce the same stream."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        dtype = _DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise CheckpointError(f"tensor {name} has unsupported dtype {tensor.dtype}")
        head = json.dumps([name, dtype, list(tensor.shape)]).encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        digest.update(len(head).to_bytes(8, "little") + head)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _state_dict_of(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = dict(model_or_state_dict)
    else:
        raise TypeError(f"expected a model or a state dict, not {type(model_or_state_dict).__name__}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name} is a {type(value).__name__}, not a tensor")
    return state


def save_checkpoint(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], spec: ModelSpec,
                    path: str | os.PathLike, *, half: bool = False,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write ``path`` atomically. half=True stores floating weights as float16 (BatchNorm running
    statistics stay float32, integer buffers stay as they are); loading always gives float32."""
    from safetensors.torch import save

    path = Path(path)
    state = _state_dict_of(model_or_state_dict)
    check_state_dict(state, spec, source=str(path))
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        if value.is_floating_point():
            keep = not half or name.endswith(_KEEP_FP32_SUFFIXES)
            value = value.to(torch.float32 if keep else torch.float16)
        tensors[name] = value.clone()  # safetensors refuses tensors sharing storage
    meta = {}
    for key, value in (metadata or {}).items():
        if key.startswith(RESERVED_PREFIX):
            raise CheckpointError(f"metadata key {key!r} is reserved (prefix {RESERVED_PREFIX!r})")
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(f"metadata must map strings to strings (key {key!r})")
        meta[key] = value
    meta.update({META_FORMAT: FORMAT, META_SPEC: spec.to_json(), META_SHA: weights_sha256(tensors)})
    data = save(tensors, metadata=meta)
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def _describe_not_safetensors(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return (f"{path.name} is a PyTorch pickle/zip (.pth), not a hamedge checkpoint; "
                f"convert it with `hamedge import-reference`")
    return f"{path.name} is not a readable safetensors file (truncated or corrupt?)"


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, str]]:
    """Read and verify a checkpoint: (spec, float32 state dict, caller metadata). The returned
    metadata holds everything except the hamedge.* keys."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception:  # safetensors raises its own error types for every malformed file
        raise CheckpointError(_describe_not_safetensors(path)) from None
    fmt = meta.get(META_FORMAT)
    if fmt != FORMAT:
        found = f"format {fmt!r}" if fmt else "no hamedge metadata"
        raise CheckpointError(f"{path.name} is a safetensors file with {found}, "
                              f"not a {FORMAT} checkpoint")
    try:
        spec = ModelSpec.from_json(meta.get(META_SPEC, ""))
    except HamedgeError as exc:
        raise CheckpointError(f"{path.name}: bad model spec in metadata: {exc}") from None
    expected = meta.get(META_SHA)
    actual = weights_sha256(tensors)
    if expected != actual:
        raise CheckpointError(f"{path.name}: weights hash mismatch (stored {str(expected)[:12]}..., "
                              f"computed {actual[:12]}...): the file was modified or damaged")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    extra = {k: v for k, v in meta.items() if not k.startswith(RESERVED_PREFIX)}
    return spec, state, extra


# -- architecture checks ------------------------------------------------------------------------
def infer_architecture(state: Mapping[str, torch.Tensor]) -> dict:
    """What the weights themselves say: arch name (or None), block type, blocks per stage, groups,
    width per group, input channels, class count. Stride, dilation and max-pool leave no trace in
    the weights (only in which stages have a downsample branch)."""
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    layers = []
    for stage in range(1, 5):
        prefix = f"layer{stage}."
        indices = {int(k[len(prefix):].split(".")[0]) for k in state
                   if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
        layers.append(len(indices))
    groups, width = 1, 64
    conv2 = shape("layer1.0.conv2.weight")
    if block == "bottleneck" and conv2:
        groups = conv2[0] // conv2[1] if conv2[1] else 1
        width = conv2[0] // groups  # layer1 has planes=64, so width per group = channels / groups
    conv1 = shape("conv1.weight")
    cls = shape("cls_fc.weight")
    arch = next((name for name, (b, ls, g, w) in ARCHITECTURES.items()
                 if (b, ls, g, w) == (block, tuple(layers), groups, width)), None)
    return {"arch": arch, "block": block, "layers": tuple(layers), "groups": groups, "width": width,
            "in_channels": conv1[1] if conv1 and len(conv1) == 4 else None,
            "num_classes": cls[0] if cls else None}


def _describe(arch: str | None, layers, in_channels, num_classes) -> str:
    name = arch or "unknown ResNet (blocks " + "-".join(map(str, layers)) + ")"
    return f"{name} with {num_classes} classes and {in_channels} input channels"


def check_state_dict(state: Mapping[str, torch.Tensor], spec: ModelSpec, *, source: str) -> None:
    """Raise CheckpointError (one line) unless ``state`` fits HAM(spec) exactly: the same keys,
    the same shapes. Builds the model on the meta device, so it costs no memory."""
    from hamedge.model.network import HAM

    found = infer_architecture(state)
    wanted = (spec.arch, ARCHITECTURES[spec.arch][1], spec.in_channels, spec.num_classes)
    if (found["arch"], found["layers"], found["in_channels"], found["num_classes"]) != wanted:
        raise CheckpointError(
            f"{Path(source).name} holds a "
            f"{_describe(found['arch'], found['layers'], found['in_channels'], found['num_classes'])}"
            f", but the spec expects a {_describe(*wanted)}")
    with torch.device("meta"):
        expected = HAM(spec).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        raise CheckpointError(f"{Path(source).name} does not fit a {spec.arch} with output stride "
                              f"{spec.output_stride} (max-pool {spec.keep_maxpool}): "
                              + "; ".join(parts))
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{Path(source).name}: {name} has shape {tuple(state[name].shape)}, "
                                  f"expected {tuple(ref.shape)} for the spec's {spec.arch}")


def model_from_state_dict(spec: ModelSpec, state: Mapping[str, torch.Tensor], *, source: str,
                          device: str | torch.device = "cpu"):
    """HAM(spec) with ``state`` loaded strictly, in eval mode."""
    from hamedge.model.network import HAM

    check_state_dict(state, spec, source=source)
    model = HAM(spec)
    model.load_state_dict(dict(state), strict=True)
    return model.to(device).eval()


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
               expect: ModelSpec | None = None):
    """Load a hamedge checkpoint as a HAM in eval mode. ``expect``: raise CheckpointError unless
    the checkpoint's architecture matches this spec's (stride, classes, channels included)."""
    spec, state, _ = load_checkpoint(path)
    if expect is not None and not expect.same_architecture(spec):
        raise CheckpointError(
            f"checkpoint {Path(path).name} is a {spec.arch} (stride {spec.output_stride}) with "
            f"{spec.num_classes} classes, but a {expect.arch} (stride {expect.output_stride}) with "
            f"{expect.num_classes} classes was expected")
    return model_from_state_dict(spec, state, source=str(path), device=device)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, as `hamedge inspect` shows it; built by checkpoint_info, which
    verifies the weights hash on the way."""

    path: Path
    spec: ModelSpec
    metadata: dict[str, str]  # the caller's keys (not hamedge.*)
    file_sha256: str
    weights_sha256: str  # stored, and equal to the recomputed one
    tensors: int
    dtypes: tuple[str, ...]  # as stored (safetensors names)
    parameters: int  # learned floating-point values (BatchNorm statistics excluded)
    size_bytes: int
    arch: str | None  # what the weights themselves say (infer_architecture)


def checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read and verify a checkpoint and describe it."""
    from safetensors import safe_open

    path = Path(path)
    spec, state, meta = load_checkpoint(path)  # verifies the weights hash
    with safe_open(str(path), framework="pt") as handle:
        stored_hash = handle.metadata()[META_SHA]
        dtypes = tuple(sorted({str(handle.get_slice(k).get_dtype()) for k in handle.keys()}))
    params = sum(v.numel() for k, v in state.items() if v.is_floating_point()
                 and not k.endswith(("running_mean", "running_var")))
    return CheckpointInfo(path=path, spec=spec, metadata=meta, file_sha256=checkpoint_sha256(path),
                          weights_sha256=stored_hash, tensors=len(state), dtypes=dtypes,
                          parameters=params, size_bytes=path.stat().st_size,
                          arch=infer_architecture(state)["arch"])


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of the whole file (provenance: which checkpoint a bundle was exported from)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return sha256_file(path)


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """The checkpoint to use: ``path`` if given, else the packaged demo model."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise CheckpointError(f"no checkpoint given and the packaged demo model "
                                  f"{DEFAULT_MODEL} is missing from this installation")
        return DEFAULT_MODEL
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return path
