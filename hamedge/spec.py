"""The model spec: the one description of a HAM model that every layer reads.

A spec says what the network is (backbone, output stride, dilation, first max-pool), how to feed it
(input size, channels, normalisation) and how to read its outputs (class names, attention and
decision thresholds). It is saved as JSON inside every checkpoint and every export bundle; nothing
else in hamedge hard-codes these numbers. No torch here: the slim runtime reads specs too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from hamedge.errors import SpecError

# ChestX-ray14 class order used by the HAM reference configs (Data_CLASSES).
NIH_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

# Backbone name -> (block type, blocks per stage, groups, width per group).
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int], int, int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
}

# The reference's table (models/AttentionNet.py build_model): (keep_maxpool, output_stride) ->
# (per-stage strides, per-stage dilations without / with dilation).
_STAGE_LAYOUT: dict[tuple[bool, int], tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    (True, 32): ((1, 2, 2, 2), (1, 1, 1, 1), (1, 1, 1, 2)),
    (True, 16): ((1, 2, 2, 1), (1, 1, 1, 1), (1, 1, 1, 2)),
    (True, 8): ((1, 2, 1, 1), (1, 1, 1, 1), (1, 1, 2, 4)),
    (False, 32): ((2, 2, 2, 2), (1, 1, 1, 1), (1, 1, 1, 2)),
    (False, 16): ((1, 2, 2, 2), (1, 1, 1, 1), (1, 1, 2, 4)),
    (False, 8): ((1, 2, 2, 1), (1, 1, 1, 1), (1, 2, 4, 6)),
}

SPEC_FORMAT_VERSION = 1
MAX_INPUT_SIZE = 4096  # network input side; HAM's largest published setting is 512
MIN_STD = 1e-3  # a smaller normalisation std turns ordinary pixel values into thousands


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, feed and read a HAM model."""

    arch: str = "resnet18"
    output_stride: int = 32
    keep_maxpool: bool = True  # reference: Using_pooling
    dilation: bool = False  # reference: Using_dilation
    input_size: int = 512  # reference: img_size (square input)
    in_channels: int = 3  # channels of the network's first convolution
    class_names: tuple[str, ...] = NIH_CLASSES
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    lse_r: float = 6.0  # LSE pooling sharpness
    cam_gain: float = 100.0  # refined map = sigmoid(cam_gain * (normalised - cam_center))
    cam_center: float = 0.4
    cam_threshold: float = 0.999  # refined map >= this is "inside" (localisation metrics, boxes)
    anomaly_threshold: float = 0.5
    class_thresholds: tuple[float, ...] | None = None  # None: 0.5 for every class
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived facts -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def block(self) -> str:
        return ARCHITECTURES[self.arch][0]

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return _STAGE_LAYOUT[(self.keep_maxpool, self.output_stride)][0]

    @property
    def stage_dilations(self) -> tuple[int, ...]:
        layout = _STAGE_LAYOUT[(self.keep_maxpool, self.output_stride)]
        return layout[2] if self.dilation else layout[1]

    @property
    def feature_size(self) -> int:
        """Side of the attention maps the network produces for a square input of input_size."""
        size = self.input_size
        size = (size + 2 * 3 - 7) // 2 + 1  # conv1: 7x7, stride 2, padding 3
        if self.keep_maxpool:
            size = (size + 2 * 1 - 3) // 2 + 1  # 3x3 max-pool, stride 2, padding 1
        for stride in self.stage_strides:
            if stride == 2:
                size = (size + 2 - 3) // 2 + 1  # 3x3 (or 1x1 in the shortcut) with stride 2
        return size

    @property
    def thresholds(self) -> tuple[float, ...]:
        if self.class_thresholds is None:
            return (0.5,) * self.num_classes
        return self.class_thresholds

    @property
    def grayscale_foldable(self) -> bool:
        """True when a grayscale image replicated to every channel normalises identically in each,
        so the first convolution can be summed over its input channels (exactly)."""
        return len(set(self.mean)) == 1 and len(set(self.std)) == 1

    @property
    def cam_binary_level(self) -> float:
        """Normalised map level at which the refined map crosses cam_threshold."""
        t = self.cam_threshold
        return self.cam_center + math.log(t / (1.0 - t)) / self.cam_gain

    # -- validation and (de)serialisation -----------------------------------------------------
    def validate(self) -> None:
        self._validate_types()
        if self.arch not in ARCHITECTURES:
            raise SpecError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.output_stride not in (8, 16, 32):
            raise SpecError(f"output stride must be 8, 16 or 32, not {self.output_stride}")
        if self.input_size < 32:
            raise SpecError(f"input size {self.input_size} is too small (at least 32)")
        if self.in_channels not in (1, 3):
            raise SpecError(f"in_channels must be 1 or 3, not {self.in_channels}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise SpecError(f"mean and std need {self.in_channels} values each")
        if any(s <= 0 for s in self.std):
            raise SpecError("std values must be positive")
        if not self.class_names:
            raise SpecError("a model needs at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise SpecError("class names must be unique")
        if self.class_thresholds is not None and len(self.class_thresholds) != self.num_classes:
            raise SpecError(f"class_thresholds needs {self.num_classes} values, one per class")
        if not 0.0 < self.cam_threshold < 1.0:
            raise SpecError("cam_threshold must lie strictly between 0 and 1")

    def _validate_types(self) -> None:
        """Every field's type and range, naming the field: a spec read from a file may hold
        anything (strings for numbers, NaN, 1e9, a list where a number belongs)."""
        def integer(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
                raise SpecError(f"spec field {name} must be a whole number from {lo} to {hi}, not {value!r}")

        def real(name: str, value, lo: float, hi: float, open_lo: bool = False) -> None:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
                and (lo < value if open_lo else lo <= value) and value <= hi
            if not ok:
                bound = f"over {lo}" if open_lo else f"from {lo}"
                raise SpecError(f"spec field {name} must be a finite number {bound} to {hi}, not {value!r}")

        if not isinstance(self.arch, str):
            raise SpecError(f"spec field arch must be a string, not {self.arch!r}")
        integer("output_stride", 1, 64)
        integer("input_size", 32, MAX_INPUT_SIZE)
        integer("in_channels", 1, 3)
        for name in ("keep_maxpool", "dilation"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"spec field {name} must be true or false, not {getattr(self, name)!r}")
        if not all(isinstance(c, str) and c.strip() for c in self.class_names):
            raise SpecError("spec field class_names must be a list of non-empty strings")
        for value in self.mean:
            real("mean", value, -10.0, 10.0)
        for value in self.std:
            real("std", value, MIN_STD, 10.0)
        real("lse_r", self.lse_r, 0.0, 1000.0, open_lo=True)
        real("cam_gain", self.cam_gain, 0.0, 1e6, open_lo=True)
        real("cam_center", self.cam_center, 0.0, 1.0)
        real("cam_threshold", self.cam_threshold, 0.0, 1.0)
        real("anomaly_threshold", self.anomaly_threshold, 0.0, 1.0)
        for value in self.class_thresholds or ():
            real("class_thresholds", value, 0.0, 1.0)
        if not isinstance(self.description, str):
            raise SpecError("spec field description must be a string")
        if not isinstance(self.extra, dict):
            raise SpecError("spec field extra must be an object")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        if self.class_thresholds is not None:
            data["class_thresholds"] = list(self.class_thresholds)
        data["format_version"] = SPEC_FORMAT_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        if not isinstance(data, dict):
            raise SpecError("a model spec must be a JSON object")
        data = dict(data)
        version = data.pop("format_version", SPEC_FORMAT_VERSION)
        if not isinstance(version, int):
            raise SpecError(f"spec format_version must be an integer, not {version!r}")
        if version > SPEC_FORMAT_VERSION:
            raise SpecError(f"spec format {version} is newer than this hamedge understands "
                            f"({SPEC_FORMAT_VERSION}); upgrade hamedge")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
        try:
            for key in ("class_names", "mean", "std", "class_thresholds"):
                if data.get(key) is not None:
                    if isinstance(data[key], (str, bytes)) or not hasattr(data[key], "__iter__"):
                        raise TypeError(f"{key} must be a list")
                    data[key] = tuple(data[key])
            return cls(**data)
        except (TypeError, ValueError) as exc:  # wrong value types
            raise SpecError(f"invalid model spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"model spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def same_architecture(self, other: "ModelSpec") -> bool:
        """True when weights of one fit the other (thresholds and descriptions may differ)."""
        keys = ("arch", "output_stride", "keep_maxpool", "dilation", "in_channels", "num_classes")
        return all(getattr(self, k) == getattr(other, k) for k in keys)
