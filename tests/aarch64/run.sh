#!/usr/bin/env bash
# Jetson's CPU side, verified: install the slim runtime (hamedge, no extras) into an arm64 Debian
# Python under QEMU user emulation, run `hamedge infer` on real X-rays with a bundle exported on the
# host, and compare with the host's run (tests/aarch64/compare.py states the tolerances).
#
#   make test-aarch64                      (or: tests/aarch64/run.sh)
#
# Needs: root for apt-get (qemu-user-static and debootstrap are installed when missing), network to
# Debian and PyPI, the host .venv (make setup), the real X-rays in ../shared/data/nih-samples/images
# (or HAMEDGE_XRAYS=DIR). The arm64 sysroot is cached in .cache/aarch64/ (ignored by git); each
# run makes a fresh virtual environment in it.
#
# How the emulation is set up, and why:
# - No binfmt_misc is needed (containers rarely have it): the arm64 Python is started through
#   qemu-aarch64-static with QEMU_LD_PREFIX=sysroot, which makes QEMU look up every absolute path
#   in the sysroot first and fall back to the host's. Nothing in the run may exec an arm64 binary
#   (that would need binfmt_misc), so pip is bootstrapped from Debian's own pip wheel in-process
#   instead of by ensurepip, hamedge is installed from a wheel built on the host, and entry points
#   are run as scripts by the arm64 Python.
# - -cpu neoverse-n1: an Armv8.2 core with dot product and no SVE, like Orin's Cortex-A78AE.
# - QEMU 7.2 passes the host's (x86) /proc/cpuinfo through, and onnxruntime's CPU detection
#   (cpuinfo) crashes on it (segfault at import). Because of the path lookup above, a plain file
#   sysroot/proc/cpuinfo is what the emulated process reads: it describes the emulated core
#   (MIDR 0x414fd0c1, QEMU's neoverse-n1), one entry per host CPU. The rest of /proc, /sys,
#   /dev and /tmp are the host's (the sysroot has no such folders).
# - The host's DNS, CA bundle and pip configuration are used too (the sysroot has none of its own),
#   so pip in the emulator reaches PyPI the way the host's pip does.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$ROOT/.cache/aarch64
SUITE=bookworm
SYSROOT=$CACHE/sysroot-$SUITE
RECIPE="$SUITE arm64 minbase python3 python3-venv recipe 1"
WORK=$CACHE/run
HOST_PY=${HOST_PY:-$ROOT/.venv/bin/python}
XRAYS=${HAMEDGE_XRAYS:-$ROOT/../shared/data/nih-samples/images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
QEMU_CPU_MODEL=neoverse-n1

start=$SECONDS
phase_start=$SECONDS
declare -a TIMES=()
phase() { TIMES+=("$1: $((SECONDS - phase_start)) s"); echo "== $1 done in $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }
fail() { echo "test-aarch64: $*" >&2; exit 1; }
arm() { QEMU_LD_PREFIX="$SYSROOT" QEMU_CPU=$QEMU_CPU_MODEL qemu-aarch64-static "$@"; }

[ -x "$HOST_PY" ] || fail "no host Python at $HOST_PY: run 'make setup' first"
[ -d "$XRAYS" ] || fail "no real X-rays at $XRAYS (set HAMEDGE_XRAYS)"

# 1. Host tools.
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "install qemu-user-static and debootstrap (needs root)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        qemu-user-static debootstrap
fi
qemu-aarch64-static --version | head -n 1
phase "host tools"

# 2. The arm64 sysroot (cached): Debian's python3 and python3-venv (which brings Debian's pip
#    wheel). debootstrap --foreign unpacks the essential packages without running anything arm64;
#    the included packages are unpacked here (no maintainer script needs to run for Python).
if [ "$(cat "$SYSROOT/.recipe" 2>/dev/null)" != "$RECIPE" ]; then
    [ "$(id -u)" = 0 ] || fail "building the sysroot needs root (debootstrap)"
    rm -rf "$SYSROOT" "$SYSROOT.partial"
    mkdir -p "$CACHE"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv \
        "$SUITE" "$SYSROOT.partial" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log"; fail "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    for pkg in $(cat "$SYSROOT.partial/debootstrap/base"); do
        deb=$(ls "$SYSROOT.partial"/var/cache/apt/archives/"${pkg}"_*.deb | head -n 1)
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$SYSROOT.partial"
    done
    rm -rf "$SYSROOT.partial"/{proc,dev,tmp,sys,debootstrap} "$SYSROOT.partial"/var/cache/apt/archives/*.deb
    echo "$RECIPE" > "$SYSROOT.partial/.recipe"
    mv "$SYSROOT.partial" "$SYSROOT"
fi
# The emulated core's /proc/cpuinfo (written every run: the host's CPU count may change).
mkdir -p "$SYSROOT/proc"
ncpu=$(nproc --all)
for ((i = 0; i < ncpu; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\n' "$i"
    printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n'
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
done > "$SYSROOT/proc/cpuinfo"
arm "$SYSROOT/usr/bin/python3" -c "import platform, sys; print('arm64 Python', platform.python_version(), platform.machine())"
phase "arm64 sysroot"

# (--accept-any below: the demo model's gate refuses real X-rays as out of its synthetic training
# distribution; this job compares the arithmetic of the two CPUs, not the gate.)
# 3. Host side: the hamedge wheel, a bundle of the packaged model, the inputs, the host's runs.
rm -rf "$WORK"
mkdir -p "$WORK/host" "$WORK/arm64" "$WORK/inputs" "$WORK/wheel"
"$HOST_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$ROOT" > "$WORK/wheel.log" 2>&1 \
    || { cat "$WORK/wheel.log"; fail "building the hamedge wheel failed"; }
WHEEL=$(ls "$WORK"/wheel/hamedge-*.whl)
"$ROOT/.venv/bin/hamedge" export --out "$WORK/bundle" --int8 | tail -n 2
probe_images=()
for image in "$XRAYS"/*; do
    cp "$image" "$WORK/inputs/"
    probe_images+=("$WORK/inputs/$(basename "$image")")
done
# Compressed DICOM copies of the first X-ray, in every lossless syntax the host can encode
"$HOST_PY" "$ROOT/tests/aarch64/make_dicom.py" "${probe_images[0]}" "$WORK/inputs" | tee "$WORK/dicom.txt"
for dcm in "$WORK"/inputs/*.dcm; do
    [ -e "$dcm" ] && probe_images+=("$dcm")
done
: > "$WORK/inputs/broken.png"  # an unreadable file must give the same error row on both
"$HOST_PY" "$ROOT/tests/aarch64/probe.py" "$WORK/bundle" "${probe_images[@]}" > "$WORK/host/probe.json"
for precision in fp32 int8; do
    rc=0
    "$ROOT/.venv/bin/hamedge" infer "$WORK/inputs" --model "$WORK/bundle" --backend onnxruntime \
        --precision $precision --accept-any --out "$WORK/host/infer-$precision" --quiet || rc=$?
    [ "$rc" -le 1 ] || fail "host hamedge infer --precision $precision exited $rc"
done
phase "host: wheel, export, probe, infer"

# 4. The slim runtime on arm64: a fresh venv, pip from Debian's wheel, hamedge and its
#    dependencies from PyPI (aarch64 wheels), then the same probe and runs.
VENV=$WORK/arm64/venv
arm "$SYSROOT/usr/bin/python3" -m venv --without-pip "$VENV"
PIP_WHEEL=$(ls "$SYSROOT"/usr/share/python-wheels/pip-*.whl)
arm "$VENV/bin/python" "$PIP_WHEEL/pip" install -q --no-index --no-compile "$PIP_WHEEL"
# (sed drops pip's warnings about the host configuration's local index folders that do not exist)
arm "$VENV/bin/python" -m pip install -q --no-compile --cache-dir "$CACHE/pip" "$WHEEL" 2>&1 \
    | sed "/^WARNING: Location 'file:/d"
arm "$VENV/bin/python" -m pip list --format=freeze > "$WORK/arm64/pip-freeze.txt"
if arm "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    fail "the slim runtime brought torch: $(grep -i '^torch' "$WORK/arm64/pip-freeze.txt")"
fi
echo "slim runtime installed without torch: $(tr '\n' ' ' < "$WORK/arm64/pip-freeze.txt")"
phase "arm64: slim install"

arm "$VENV/bin/python" "$ROOT/tests/aarch64/probe.py" "$WORK/bundle" "${probe_images[@]}" > "$WORK/arm64/probe.json"
for precision in fp32 int8; do
    rc=0
    arm "$VENV/bin/python" "$VENV/bin/hamedge" infer "$WORK/inputs" --model "$WORK/bundle" \
        --backend onnxruntime --precision $precision --accept-any --out "$WORK/arm64/infer-$precision" --quiet || rc=$?
    [ "$rc" -le 1 ] || fail "arm64 hamedge infer --precision $precision exited $rc"
done
phase "arm64: probe, infer"

# 5. Compare.
status=0
"$HOST_PY" "$ROOT/tests/aarch64/compare.py" "$WORK" || status=$?
printf '%s\n' "${TIMES[@]}" "total: $((SECONDS - start)) s" | tee "$WORK/timing.txt"
[ "$status" = 0 ] && echo "test-aarch64: PASS" || echo "test-aarch64: FAIL"
exit $status
