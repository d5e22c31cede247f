"""`hamedge doctor`: what this installation can decode and run on, without importing torch."""

from __future__ import annotations

import glob
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import sys

import typer

from hamedge.cli.app import app


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _devices() -> list[str]:
    found = []
    for path in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("Model")), "?")
            found.append(f"NVIDIA GPU: {model}")
        except OSError:
            continue
    if os.path.exists("/etc/nv_tegra_release"):
        try:
            with open("/etc/nv_tegra_release", encoding="utf-8", errors="replace") as handle:
                found.append("NVIDIA Jetson: " + handle.readline().strip()[:80])
        except OSError:
            found.append("NVIDIA Jetson")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    found.append(f"CPU: {cpu} ({os.cpu_count()} logical cores)")
    return found


def collect() -> dict:
    from hamedge import __version__, decoders

    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    backends = {
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") if importlib.util.find_spec("tensorrt") else None,
        "torch": _version("torch"),  # found by its metadata: doctor never imports torch
    }
    return {
        "hamedge": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "decoder_packages": {name: {"version": version, "licence": decoders.LICENCES[name]}
                             for name, version in decoders.package_versions().items()},
        "transfer_syntaxes": decoders.report(),
        "backends": backends,
        "onnxruntime_providers": providers,
        "devices": _devices(),
    }


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """List DICOM decoders (and the transfer syntaxes each covers), backends, ONNX Runtime
    providers and devices present. Exit 1 when a transfer syntax hamedge promises cannot decode."""
    info = collect()
    missing = [row for row in info["transfer_syntaxes"] if not row["ok"]]
    if json_out:
        print(json.dumps(info, indent=2))
        raise typer.Exit(1 if missing else 0)
    print(f"hamedge {info['hamedge']} on Python {info['python']}, {info['platform']}")
    print("DICOM decoder packages:")
    for name, entry in info["decoder_packages"].items():
        print(f"  {name:20s} {entry['version'] or '(not installed)':12s} {entry['licence']}")
    print("Transfer syntaxes (pydicom plugins available here):")
    for row in info["transfer_syntaxes"]:
        plugins = ", ".join(row["plugins"]) or "NONE - install " + " or ".join(row["packages"])
        print(f"  {row['syntax'][:62]:62s} {plugins}")
    print("Backends:")
    for name, version in info["backends"].items():
        print(f"  {name:20s} {version or '(not installed)'}")
    print("ONNX Runtime providers: " + (", ".join(info["onnxruntime_providers"]) or "(none)"))
    print("Devices:")
    for device in info["devices"]:
        print(f"  {device}")
    raise typer.Exit(1 if missing else 0)
