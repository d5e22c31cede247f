"""hamedge's FusedRefine definitions run through NVIDIA's own ``tensorrt.plugin`` checks.

``tensorrt.plugin`` is pure Python over the compiled tensorrt core. Its source is taken, at test
time only, from where it can be had: the tensorrt-cu12-bindings wheel (installed by the dev
extra as the top-level package ``tensorrt_bindings``, whose compiled core needs libnvinfer and is
never imported here) and, when a checkout of NVIDIA/TensorRT is named by $HAMEDGE_TRT_SOURCE,
its release branches' python/packaging/bindings_wheel/tensorrt/plugin. It runs over a stand-in
core (below) that offers the classes and enums the package touches; the checks themselves
(``_validate.py``: signatures read with inspect.signature, issubclass on each hint, the impl /
aot_impl schemas, the return annotations) are NVIDIA's code, unchanged.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from hamedge.kernels import trt_plugin

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # NVIDIA's docstrings
PLUGIN_PKG = "python/packaging/bindings_wheel/tensorrt/plugin"
BRANCHES = ("release/10.9", "release/10.13", "release/11.1")  # AOT plugins exist from 10.9


def _stand_in_core(version: str) -> types.ModuleType:
    """A ``tensorrt`` core module for the plugin package to import: the names it uses
    (python/packaging/bindings_wheel/tensorrt/plugin/*.py), enums with the bindings' values
    (python/src/infer/pyPlugin.cpp), base classes to subclass, and a plugin registry."""
    core = types.ModuleType("tensorrt")
    core.__version__ = version
    core.__path__ = []  # a package, so tensorrt.plugin can be a submodule

    class Logger:
        VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = 4, 3, 2, 1, 0

        def __init__(self, level=2):
            pass

        def log(self, severity, message):
            pass

    core.Logger = Logger
    core.DataType = enum.IntEnum("DataType", dict(FLOAT=0, HALF=1, INT8=2, INT32=3, BOOL=4,
                                                  UINT8=5, FP8=6, BF16=7, INT64=8, INT4=9))
    core.float32, core.float16, core.int32 = core.DataType.FLOAT, core.DataType.HALF, core.DataType.INT32
    core.DimensionOperation = enum.IntEnum("DimensionOperation", dict(
        SUM=0, PROD=1, MAX=2, MIN=3, SUB=4, EQUAL=5, LESS=6, FLOOR_DIV=7, CEIL_DIV=8))
    core.PluginFieldType = enum.IntEnum("PluginFieldType", dict(
        FLOAT16=0, FLOAT32=1, FLOAT64=2, INT8=3, INT16=4, INT32=5, CHAR=6, DIMS=7, UNKNOWN=8,
        BF16=9, INT64=10, FP8=11, INT4=12))
    core.TensorFormat = enum.IntEnum("TensorFormat", dict(LINEAR=0))
    core.TensorRTPhase = enum.IntEnum("TensorRTPhase", dict(BUILD=0, RUNTIME=1))
    core.QuickPluginCreationRequest = enum.IntEnum("QuickPluginCreationRequest", dict(
        UNKNOWN=0, PREFER_JIT=1, PREFER_AOT=2, STRICT_JIT=3, STRICT_AOT=4))
    core.PluginArgType = enum.IntEnum("PluginArgType", dict(INT=0))
    core.PluginArgDataType = enum.IntEnum("PluginArgDataType", dict(INT8=0, INT16=1, INT32=2))

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    for name in ("IDimensionExpr", "IExprBuilder", "IPluginCreatorV3Quick", "IPluginV3",
                 "IPluginV3QuickAOTBuild", "IPluginV3QuickBuild", "IPluginV3QuickCore",
                 "IPluginV3QuickRuntime", "ISymExpr", "ITensor", "Dims", "DimsExprs",
                 "DynamicPluginTensorDesc", "PluginTensorDesc"):
        setattr(core, name, type(name, (Base,), {}))

    class PluginField:
        def __init__(self, name, data=None, type=None):  # noqa: A002
            self.name, self.data, self.type = name, data, type

    core.PluginField = PluginField
    core.PluginFieldCollection = list

    class Registry:
        def __init__(self):
            self.creators = {}

        def register_creator(self, creator, namespace):
            self.creators[(creator.name, namespace)] = creator
            return True

        def get_creator(self, name, version, namespace=""):
            return self.creators.get((name, namespace))

    registry = Registry()
    core.get_plugin_registry = lambda: registry
    core.nptype = lambda dtype: None
    return core


def _sources(tmp_path: Path) -> list[tuple[str, Path]]:
    found = []
    spec = importlib.util.find_spec("tensorrt_bindings")  # locates the files, imports nothing
    if spec is not None and spec.submodule_search_locations:
        pkg = Path(list(spec.submodule_search_locations)[0]) / "plugin"
        if (pkg / "_validate.py").is_file():
            from importlib.metadata import PackageNotFoundError, version

            try:
                tag = version("tensorrt-cu12-bindings")
            except PackageNotFoundError:
                tag = "installed"
            found.append((f"tensorrt-cu12-bindings {tag}", pkg))
    checkout = os.environ.get("HAMEDGE_TRT_SOURCE")
    if checkout:
        for branch in BRANCHES:
            out = tmp_path / branch.replace("/", "_")
            listing = subprocess.run(["git", "-C", checkout, "ls-tree", "--name-only", branch,
                                      PLUGIN_PKG + "/"], capture_output=True, text=True)
            if listing.returncode != 0 or not listing.stdout.strip():
                continue
            out.mkdir(parents=True)
            for rel in listing.stdout.split():
                blob = subprocess.run(["git", "-C", checkout, "show", f"{branch}:{rel}"],
                                      capture_output=True, check=True).stdout
                (out / Path(rel).name).write_bytes(blob)
            found.append((branch, out))
    return found


def _load_plugin_package(pkg: Path, version: str, monkeypatch):
    """Import NVIDIA's plugin package as tensorrt.plugin over the stand-in core."""
    core = _stand_in_core(version)
    for name in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorrt", core)
    spec = importlib.util.spec_from_file_location("tensorrt.plugin", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", module)
    spec.loader.exec_module(module)
    core.plugin = module
    return core, module


def test_fused_refine_passes_tensorrt_plugin_definition_checks(tmp_path, monkeypatch):
    sources = _sources(tmp_path)
    if not sources:
        pytest.skip("tensorrt.plugin's source is not here: pip install tensorrt-cu12-bindings "
                    "(the dev extra does), or set HAMEDGE_TRT_SOURCE to a NVIDIA/TensorRT checkout")
    checked = []
    for label, pkg in sources:
        with monkeypatch.context() as mp:
            core, trtp = _load_plugin_package(pkg, "10.13.0" if "11." not in label else "11.1.0", mp)
            lib = sys.modules["tensorrt.plugin._lib"]
            aot = hasattr(trtp, "aot_impl")
            trt_plugin.define(trtp, core, aot=aot)  # NVIDIA's checks raise on any mistake
            plugin_def = lib.QDP_REGISTRY[trt_plugin.PLUGIN_ID]
            assert plugin_def.input_tensor_names == ["cams"]
            assert plugin_def.input_attrs == {"H": int, "W": int, "gain": float, "center": float,
                                              "zero_range": float}
            assert plugin_def.num_outputs == 1 and plugin_def.impl_func is not None
            assert (plugin_def.aot_impl_func is not None) == aot
            assert core.get_plugin_registry().get_creator("FusedRefine", "1", "hamedge")
            checked.append(label)
    print("tensorrt.plugin checks passed for:", ", ".join(checked))


def test_string_annotations_are_what_the_checks_reject(tmp_path, monkeypatch):
    # What `from __future__ import annotations` did to the definitions: every hint a string.
    sources = _sources(tmp_path)
    if not sources:
        pytest.skip("tensorrt.plugin's source is not here (see the test above)")
    label, pkg = sources[0]
    core, trtp = _load_plugin_package(pkg, "10.13.0", monkeypatch)
    namespace: dict = {}
    exec("from __future__ import annotations\n"
         "def desc(cams: trtp.TensorDesc, H: int) -> trtp.TensorDesc:\n"
         "    return cams.like()\n", namespace)
    with pytest.raises(TypeError):
        trtp.register("hamedgetest::Stringly")(namespace["desc"])


def test_static_dim_reads_nvidia_shape_exprs(tmp_path, monkeypatch):
    sources = _sources(tmp_path)
    if not sources:
        pytest.skip("tensorrt.plugin's source is not here (see the test above)")
    core, trtp = _load_plugin_package(sources[0][1], "10.13.0", monkeypatch)

    class Dim(core.IDimensionExpr):  # what IExprBuilder.constant() gives in a shape context
        def __init__(self, value):
            self.value = value

        def is_constant(self):
            return self.value is not None

        def get_constant_value(self):
            return self.value

    tensor = sys.modules["tensorrt.plugin._tensor"]
    constant = trtp.ShapeExpr(Dim(16))
    assert not hasattr(constant, "__int__")
    with pytest.raises(TypeError):
        int(constant)  # the old code's call
    assert trt_plugin.static_dim(constant, "map height") == 16
    with pytest.raises(ValueError, match="static map height"):
        trt_plugin.static_dim(trtp.ShapeExpr(Dim(None)), "map height")
    with pytest.raises(ValueError, match="static"):
        trt_plugin.static_dim(tensor.ShapeExpr(), "map width")  # a fake one
