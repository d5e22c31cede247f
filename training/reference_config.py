"""The HAM reference repository's YAML training configs -> TrainConfig fields.

What each key of a reference config (configs/NIHChestXray14/.../*.yaml) becomes:
  DataRoot -> data (a placeholder such as /PATH/TO/... needs --data)
  Data_CLASSES -> class_names        arch -> arch        Downsampling -> output_stride
  Using_pooling -> keep_maxpool       Using_dilation -> dilation        in_channels, img_size
  Means / Stds -> mean / std          batchsize -> batch_size (the global batch; the reference
  ran it with DataParallel and synchronised BatchNorm over its GPUs, so sync_bn is on)
  optim / lr / weight_decay / momentum -> optimizer / lr / weight_decay / momentum
  lr_decay_freq / lr_decay -> lr_step / lr_gamma       num_epoch -> epochs
  num_workers -> workers    test_freq -> val_every    resize_factor -> resize_factor
  trainSet / helperSet -> train_split (ImageSets/Main) / train_box_list (ImageSets/bbox)
  valClsSet / valIoUSet -> val_split / val_box_list    testClsSet -> test_split
  GPUs -> the number of processes ``hamedge train`` starts where that many GPUs are visible
Ignored (display and logging of the reference's visdom/HTML pages): display_*, print_freq,
update_html_freq, save_model_freq, Attention.resume. Using_pretrained_weights needs --init
(a torchvision ImageNet ResNet file; nothing is downloaded). Using_CRF True is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hamedge.errors import HamedgeError
from hamedge.model.reference import SPEC_CONFIG_KEYS

# reference key -> (TrainConfig field, converter): the model's keys as import-reference reads them
_FIELDS: dict[str, tuple[str, Any]] = {
    "DataRoot": ("data", str),
    **SPEC_CONFIG_KEYS,
    "batchsize": ("batch_size", int),
    "optim": ("optimizer", lambda v: str(v).lower()),
    "lr": ("lr", float),
    "weight_decay": ("weight_decay", float),
    "momentum": ("momentum", float),
    "lr_decay_freq": ("lr_step", int),
    "lr_decay": ("lr_gamma", float),
    "num_epoch": ("epochs", int),
    "num_workers": ("workers", int),
    "test_freq": ("val_every", int),
    "resize_factor": ("resize_factor", lambda v: v if v == "dynamic" else float(v)),
    "trainSet": ("train_split", str),
    "helperSet": ("train_box_list", str),
    "valClsSet": ("val_split", str),
    "valIoUSet": ("val_box_list", str),
    "testClsSet": ("test_split", str),
}
_IGNORED = {"display_freq", "display_ncols", "display_id", "display_winsize", "display_server",
            "update_html_freq", "print_freq", "save_model_freq", "display_env", "display_port",
            "Attention", "testIoUSet", "GPUs", "Using_pretrained_weights", "Using_CRF"}
PLACEHOLDER_ROOT = "/PATH/TO"


def read_reference_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig field values, the YAML as read). One-line errors for unreadable files,
    unknown keys and values of the wrong type."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HamedgeError(f"--config {p}: cannot read ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise HamedgeError(f"--config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise HamedgeError(f"--config {p}: expected a mapping of settings")
    unknown = sorted(set(raw) - set(_FIELDS) - _IGNORED)
    if unknown:
        raise HamedgeError(f"--config {p}: unknown setting(s) {', '.join(unknown)}")
    if raw.get("Using_CRF"):
        raise HamedgeError(f"--config {p}: Using_CRF (dense-CRF box masks) is not supported")
    values: dict[str, Any] = {}
    for key, (name, convert) in _FIELDS.items():
        if key not in raw or raw[key] is None:
            continue
        try:
            values[name] = convert(raw[key])
        except (TypeError, ValueError):
            raise HamedgeError(f"--config {p}: {key} has a bad value {raw[key]!r}") from None
    if str(values.get("data", "")).startswith(PLACEHOLDER_ROOT):
        values.pop("data")  # the shipped configs leave the data folder to the user
    values["sync_bn"] = True  # the reference's SynchronizedBatchNorm2d over its GPUs
    return values, raw


def reference_gpus(raw: dict[str, Any]) -> int:
    gpus = raw.get("GPUs")
    return len(gpus) if isinstance(gpus, (list, tuple)) and gpus else 1
