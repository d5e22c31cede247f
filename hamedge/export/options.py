"""What `hamedge export` is asked to do, checked as a whole before any work starts.

Every option is validated by ``ExportOptions.validate()`` (export_bundle calls it first), so a bad
value is one line naming the option, never a failure after minutes of calibration. Allowed values
come from the layer that owns them: calibration methods and the smallest calibration set from
calibration, opsets and precisions from hamedge.bundle, batch profiles from hamedge.trt.engines.
Torch-free: the CLI reads the defaults from here.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hamedge.errors import HamedgeError
from hamedge.bundle import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET


class ExportOptionError(HamedgeError):
    """An export option with a value that cannot work."""


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
    engine_precisions: tuple[str, ...] | None = None  # None: fp16, and int8 with int8=True
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    workspace_mib: int = 2048
    dla_core: int | None = None
    fused_plugin: bool = False
    plugin_library: Any = None  # the C++ FusedRefine library; None: $HAMEDGE_FUSED_PLUGIN_LIB

    def validate(self) -> None:
        """Raise ExportOptionError (one line, naming the option) on the first value that cannot
        work. Checks types, ranges, the folders it reads and that ``out`` can be written."""
        from hamedge.calibration.data import MIN_IMAGES
        from hamedge.calibration.quantize import METHODS
        from hamedge.bundle import PRECISIONS
        from hamedge.trt.engines import DLA_PRECISIONS, BatchProfile

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ExportOptionError(f"{_flag(f.name)} must be true or false, not {value!r}")
        _int("opset", self.opset, MIN_OPSET, MAX_OPSET)
        _int("parity_images", self.parity_images, 1)
        _int("calib_count", self.calib_count, MIN_IMAGES)
        _int("calib_seed", self.calib_seed, 0)
        if self.method not in METHODS:
            raise ExportOptionError(f"--method must be one of {', '.join(METHODS)}, "
                                    f"not {self.method!r}")
        if self.val_split is not None and (not isinstance(self.val_split, str)
                                           or not self.val_split.strip()):
            raise ExportOptionError(f"--val-split must be a split name, not {self.val_split!r}")
        _int("val_count", self.val_count, 1)
        _fraction("max_auc_drop", self.max_auc_drop)
        _fraction("max_tiou_drop", self.max_tiou_drop)
        _int("max_rounds", self.max_rounds, 1)
        precisions = self.engines_to_build()
        if not precisions or any(p not in PRECISIONS for p in precisions):
            raise ExportOptionError(f"--engine-precision must be among {', '.join(PRECISIONS)}, "
                                    f"not {', '.join(map(str, precisions)) or 'nothing'}")
        for name in ("min_batch", "opt_batch", "max_batch"):
            _int(name, getattr(self, name), 1)
        try:
            BatchProfile(self.min_batch, self.opt_batch, self.max_batch)
        except HamedgeError:
            raise ExportOptionError("batch profile needs 1 <= --min-batch <= --opt-batch <= "
                                    "--max-batch") from None
        _int("workspace_mib", self.workspace_mib, 1)
        if self.dla_core is not None:
            _int("dla_core", self.dla_core, 0)
            if self.engine and any(p not in DLA_PRECISIONS for p in precisions):
                raise ExportOptionError("--dla-core builds fp16 or int8 engines only (DLA has no "
                                        "fp32); pass --engine-precision fp16 or int8")
        if self.plugin_library is not None and not Path(self.plugin_library).is_file():
            raise ExportOptionError(f"--plugin-library {self.plugin_library} is not a file")
        if self.int8 and self.calib is not None:
            _folder("calib", self.calib)
        if self.int8 and self.guard and self.val is not None:
            _folder("val", self.val)
        _writable_target(self.out, self.force)

    def engines_to_build(self) -> tuple[str, ...]:
        """The precisions of the TensorRT engines asked for (when ``engine`` is set)."""
        if self.engine_precisions is not None:
            return tuple(self.engine_precisions)
        return ("fp16", "int8") if self.int8 else ("fp16",)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _int(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and (high is None or value <= high):
        return
    bound = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise ExportOptionError(f"{_flag(name)} must be an integer {bound}, not {value!r}")


def _fraction(name: str, value: Any) -> None:
    """A budget: an accepted drop of a score in [0, 1]."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 1):
        return
    raise ExportOptionError(f"{_flag(name)} must be a number between 0 and 1, not {value!r}")


def _folder(name: str, value: Any) -> None:
    path = Path(value)
    if not path.is_dir():
        why = "does not exist" if not path.exists() else "is not a folder"
        raise ExportOptionError(f"{_flag(name)} {path} {why}")


def _writable_target(out: Any, force: bool) -> None:
    """``out`` is a folder hamedge may create (or replace with force): its nearest existing
    ancestor is a folder where a temporary folder can be made. Tried, not guessed from
    permissions: root passes access checks on file systems that still refuse (/proc, read-only
    mounts)."""
    if out is None or str(out).strip() == "":
        raise ExportOptionError("--out must name the bundle folder to write")
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise ExportOptionError(f"--out {target} exists and is not a folder")
        if not force:
            raise ExportOptionError(f"--out {target} already exists (use --force to replace it)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportOptionError(f"--out {target}: {parent} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".hamedge-write-check.", dir=parent)
    except OSError as exc:
        raise ExportOptionError(f"--out {target}: cannot write in {parent} "
                                f"({exc.strerror or exc})") from None
    os.rmdir(probe)
