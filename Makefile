# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-aarch64 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a plain `torch` would pull a multi-GB CUDA build on a CPU box).
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,serve]"
	# tritonserver for the serving tests; --no-deps: the wheel pins numpy<2 (see pyproject's serve extra)
	$(PY) -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hamedge demo --out out/demo

# Two processes: training (torch with DataLoader workers) crashed the interpreter (SIGSEGV) when it
# ran in the same process after the bench tests had run OpenVINO, ONNX Runtime and torch together;
# the cause is not yet known, and real training always runs in a process of its own.
test: setup
	$(PY) -m pytest -q tests --ignore-glob='tests/test_training_*.py'
	$(PY) -m pytest -q tests/test_training_*.py

# Not part of `make test`: the slim runtime on an emulated arm64 CPU (QEMU), compared with this host
# (a few minutes; needs root for apt-get/debootstrap and network to Debian and PyPI).
test-aarch64: setup
	tests/aarch64/run.sh

clean:
	rm -rf $(VENV) out .cache
