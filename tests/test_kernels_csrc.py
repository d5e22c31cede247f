"""The CUDA kernel compiles with nvcc here (no GPU needed); the TensorRT plugin source compiles
where NvInfer headers exist; on a GPU machine the kernel's own test harness runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "hamedge" / "kernels" / "csrc"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                if Path("/usr/local/cuda/bin/nvcc").exists() else None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found")


def _trt_include() -> Path | None:
    roots = [os.environ.get("TENSORRT_ROOT", ""), "/usr", "/usr/local/TensorRT", "/opt/tensorrt"]
    for root in filter(None, roots):
        for sub in ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu"):
            if (Path(root) / sub / "NvInfer.h").exists():
                return Path(root) / sub
    return None


def _cuda_include() -> Path | None:
    cands = [Path(os.environ.get("CUDA_HOME", "/nonexistent")) / "include",
             Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    return next((c for c in cands if (c / "cuda_runtime_api.h").exists()), None)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])  # Jetson Orin, Hopper
def test_kernel_compiles(arch, tmp_path):
    obj = tmp_path / "k.o"
    proc = subprocess.run([NVCC, "-c", f"-arch={arch}", "-O3", "-std=c++17",
                           str(CSRC / "fused_refine_kernel.cu"), "-o", str(obj)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert obj.stat().st_size > 0
    # The plugin's entry point into the kernels is a plain C symbol.
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
        assert "hamedge_fused_refine" in syms and "hamedge_fused_refine_workspace" in syms


@needs_nvcc
def test_harness_builds_and_runs_where_gpu(tmp_path):
    exe = tmp_path / "fused_refine_test"
    proc = subprocess.run([NVCC, "-O2", "-std=c++17", "-arch=sm_90",
                           str(CSRC / "fused_refine_test.cu"), str(CSRC / "fused_refine_kernel.cu"),
                           "-o", str(exe)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("nvidia-smi") is None:
        pytest.skip("built the kernel test harness; no GPU here to run it")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_plugin_compiles_where_tensorrt_headers_exist(tmp_path):
    inc = _trt_include()
    if inc is None:
        pytest.skip("NvInfer.h not found (set TENSORRT_ROOT to a TensorRT 10+ install or headers)")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or NVCC is None or _cuda_include() is None:
        pytest.skip("no C++ compiler or CUDA headers")
    proc = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wall",
                           "-Wno-deprecated-declarations", f"-I{inc}", f"-I{_cuda_include()}",
                           str(CSRC / "fused_refine_plugin.cpp")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr


def test_sources_present_and_consistent():
    """The plugin identity in C++ matches what the ONNX node and the Python plugin use."""
    cpp = (CSRC / "fused_refine_plugin.cpp").read_text()
    for token in ('"FusedRefine"', '"hamedge"', '"H"', '"W"', '"gain"', '"center"', "getCreators"):
        assert token in cpp
    from hamedge.kernels.onnx_plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    assert (PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION) == ("FusedRefine", "hamedge", "1")
    assert (CSRC / "CMakeLists.txt").read_text().count("fused_refine_kernel.cu") == 1


CMAKE = shutil.which("cmake")


def _configure(tmp_path: Path, version_header: str | None) -> tuple[str, str]:
    """Configure the csrc project against a TensorRT root holding ``version_header`` as
    NvInferVersion.h (an empty NvInfer.h and libnvinfer.so beside it: configure only reads them)."""
    env = dict(os.environ)
    env.pop("CUDAARCHS", None)
    args = [CMAKE, "-S", str(CSRC), "-B", str(tmp_path / "build")]
    if version_header is not None:
        root = tmp_path / "trt"
        (root / "include").mkdir(parents=True)
        (root / "lib").mkdir()
        (root / "include" / "NvInfer.h").write_text("")
        (root / "include" / "NvInferVersion.h").write_text(version_header)
        (root / "lib" / "libnvinfer.so").write_bytes(b"")
        args.append(f"-DTENSORRT_ROOT={root}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    return " ".join((proc.stdout + proc.stderr).split()), cache  # CMake wraps warnings


needs_cmake = pytest.mark.skipif(CMAKE is None or NVCC is None, reason="cmake or nvcc not found")


@needs_cmake
@pytest.mark.parametrize("header, major", [
    # The two forms NvInferVersion.h has used: a number (8.5, 10.3) and a macro name (10.13, 11.0).
    ("#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.\n", 8),
    ("#define TRT_MAJOR_ENTERPRISE 10\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n", 10),
])
def test_cmake_builds_the_iplugin_v3_plugin_only_on_tensorrt_10(tmp_path, header, major):
    log, _ = _configure(tmp_path, header)
    makefile = (tmp_path / "build" / "Makefile").read_text()
    if major < 10:
        assert "needs TensorRT 10 or later" in log
        assert "hamedge_fused_refine:" not in makefile
    else:
        assert f"TensorRT {major}.x" in log
        assert "hamedge_fused_refine:" in makefile
    assert "hamedge_fused_refine_kernel:" in makefile


@needs_cmake
def test_cmake_applies_its_architectures_and_drops_sm72_on_cuda13(tmp_path):
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    _, cache = _configure(tmp_path, None)
    archs = next(line.split("=", 1)[1] for line in cache.splitlines()
                 if line.startswith("CMAKE_CUDA_ARCHITECTURES:"))
    assert "87" in archs.split(";") and "90" in archs.split(";")  # not the compiler default
    if "release 13." in version:
        assert "72" not in archs.split(";")  # CUDA 13's nvcc has no sm_72
