"""hamedge.compare, export parity: the numbers and the verdict, without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hamedge.compare import (PROB_TOL, RAW_MAP_RTOL, REFINED_MAP_TOL, compare_outputs,
                             describe_parity)


def outputs(scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"class_probs": rng.uniform(size=(2, 3)).astype(np.float32),
            "anomaly_prob": rng.uniform(size=(2, 1)).astype(np.float32),
            "attention_maps": (scale * rng.uniform(size=(2, 4, 4, 4))).astype(np.float32)}


def shifted(out, name, delta):
    got = {k: v.copy() for k, v in out.items()}
    got[name][0, 0] += delta  # one value differs
    return got


def test_identical_outputs_pass():
    ref = outputs()
    report = compare_outputs(ref, outputs(), refined=False)
    assert report["ok"] and report["max_prob_diff"] == 0 and report["max_map_diff"] == 0


def test_probability_tolerance_is_absolute():
    ref = outputs()
    assert compare_outputs(ref, shifted(ref, "anomaly_prob", PROB_TOL / 2), False)["ok"]
    report = compare_outputs(ref, shifted(ref, "class_probs", PROB_TOL * 3), False)
    assert not report["ok"] and report["max_prob_diff"] == pytest.approx(PROB_TOL * 3, rel=1e-2)


def test_raw_map_tolerance_scales_with_the_largest_map_value():
    ref = outputs(scale=50.0)  # raw CAMs: unbounded ReLU outputs
    peak = float(np.abs(ref["attention_maps"]).max())
    report = compare_outputs(ref, shifted(ref, "attention_maps", RAW_MAP_RTOL * peak / 2), False)
    assert report["ok"] and report["map_tol"] == pytest.approx(RAW_MAP_RTOL * peak)
    assert not compare_outputs(ref, shifted(ref, "attention_maps", RAW_MAP_RTOL * peak * 2),
                               False)["ok"]


def test_refined_maps_use_the_fixed_tolerance():
    ref = outputs()
    assert compare_outputs(ref, shifted(ref, "attention_maps", REFINED_MAP_TOL / 2), True)["ok"]
    assert not compare_outputs(ref, shifted(ref, "attention_maps", REFINED_MAP_TOL * 2),
                               True)["ok"]


def test_nan_never_passes_and_shapes_must_match():
    ref = outputs()
    assert not compare_outputs(ref, shifted(ref, "attention_maps", np.nan), False)["ok"]
    assert not compare_outputs(ref, shifted(ref, "class_probs", np.nan), False)["ok"]
    # the anomaly probability is compared after the class probabilities: a NaN there must
    # not be hidden by the finite difference before it
    assert not compare_outputs(ref, shifted(ref, "anomaly_prob", np.nan), False)["ok"]
    got = dict(ref, attention_maps=ref["attention_maps"][:, :1])  # would broadcast silently
    with pytest.raises(ValueError, match="attention_maps"):
        compare_outputs(ref, got, False)


def test_description_names_both_numbers_and_tolerances():
    ref = outputs()
    line = describe_parity(compare_outputs(ref, shifted(ref, "class_probs", 0.5), False))
    assert line.startswith("max prob diff 0.5 (tol 0.0001), max map diff 0 (tol ")


def test_module_is_torch_free():
    code = ("import sys, hamedge.compare\n"
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
